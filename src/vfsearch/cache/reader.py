"""Reading a feature cache: :class:`FeatureCache` (metadata, per-image records, feature rows,
thumbnails, stored results). The only reader of the layout in :mod:`.layout`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..errors import CacheError, CacheMismatch, CacheNotFound, NotFound, UnknownLayer
from ..geometry import Frame
from ..transforms import Transform
from . import versions
from .layout import INDEXED, PENDING, SKIPPED, derived_key, image_key, layer_key, meta_key
from .rows import read_ids, read_rows, take_rows

__all__ = ["FeatureCache", "LayerData", "Stored", "disk_usage", "open_cache"]


@dataclass
class LayerData:
    """One layer's arrays, loaded (or memory-resident) as numpy."""

    name: str
    features: np.ndarray  # (n, H, W, C)
    sqnorm: np.ndarray  # (n, H, W)
    scale: np.ndarray | None
    qerr2: np.ndarray | None
    start: int = 0  # index of the first row
    #: the 8-bit features' cell-interleaved copy (vfsearch.engine.kernel.Interleaved), kept by
    #: FeatureCache.interleave for the offsets path; None when not kept
    inter: object | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.features.shape[0]

    def dequantised(self, ids) -> np.ndarray:
        """Float32 feature maps of rows ``ids`` (relative to ``start``)."""
        f = self.features[ids].astype(np.float32)
        if self.scale is not None:
            f *= self.scale[ids][..., None]
        return f


@dataclass
class Stored:
    """A stored result (a dataset map, its atlas, concepts…): arrays, byte blobs, attributes."""

    group: object
    attrs: dict

    def array(self, name: str) -> np.ndarray | None:
        return np.asarray(self.group[name][:]) if name in self.group else None

    def has(self, name: str) -> bool:
        return name in self.group and dict(self.group[name].attrs).get("complete", True)

    def blob_attrs(self, name: str) -> dict:
        return dict(self.group[name].attrs) if name in self.group else {}

    def blobs(self, name: str) -> list[bytes]:
        return [bytes(b) for b in self.group[name][:]]

    def blob(self, name: str, i: int) -> bytes:
        a = self.group[name]
        if not 0 <= int(i) < a.shape[0]:
            raise NotFound(f"no {name} item {i} (there are {a.shape[0]})")
        return bytes(a[int(i):int(i) + 1][0])

    def count(self, name: str) -> int:
        return int(self.group[name].shape[0]) if name in self.group else 0


class FeatureCache:
    """A feature cache opened for reading (written through :class:`~vfsearch.cache.CacheWriter`)."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 mode: str = "r"):
        self.path = Path(path).expanduser()
        if not (self.path / "zarr.json").exists():
            raise CacheNotFound(f"no vfsearch cache at {self.path}", param="cache")
        try:
            self.root = zarr.open_group(str(self.path), mode=mode)
            attrs = dict(self.root.attrs).get("vfsearch")
        except Exception as e:  # noqa: BLE001 - any zarr failure is a broken cache
            raise CacheError(f"cannot read cache at {self.path}: {e}") from None
        if not attrs:
            raise CacheNotFound(f"{self.path} is a Zarr store but not a vfsearch cache",
                                param="cache")
        versions.check_readable(self.path, attrs)
        self.meta = attrs
        self.image_root = (Path(image_root).expanduser().resolve() if image_root
                           else Path(attrs["image_root"]))
        self._cols: dict[str, np.ndarray] = {}
        self._has: dict[str, bool] = {}
        self._arrays: dict[str, object] = {}
        self._loaded: dict[str, LayerData] = {}
        self._n: int | None = None

    # -- metadata ------------------------------------------------------------------------------
    @property
    def format_version(self) -> int:
        return int(self.meta["format_version"])

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def weights_hash(self) -> str:
        return self.meta["weights_hash"]

    @property
    def weights_path(self) -> str | None:
        return self.meta.get("weights_path")

    @property
    def transform(self) -> Transform:
        t = self.__dict__.get("_transform")
        if t is None:
            t = self.__dict__["_transform"] = Transform.from_dict(self.meta["transform"])
        return t

    @property
    def layers(self) -> list[str]:
        """Complete layers (a layer being added appears once every chunk has it)."""
        pending = self.meta.get("layers_pending") or {}
        return [k for k in self.meta["layers"] if k not in pending]

    @property
    def default_layer(self) -> str:
        return self.layers[0]

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def refine(self) -> str:
        """Precision of the refine copy ("f32", "f16" or "none")."""
        return self.meta.get("refine", "none")

    @property
    def compression(self) -> str:
        return self.meta.get("compression", "zstd")

    def layer_info(self, layer: str | None = None) -> dict:
        layer = layer or self.default_layer
        if layer not in self.layers:
            if layer in (self.meta.get("layers_pending") or {}):
                raise UnknownLayer(f"layer {layer!r} is still being added to {self.path}; run "
                                   "the same index command again to finish it", param="layer")
            raise UnknownLayer(f"cache has no layer {layer!r}; it has: {', '.join(self.layers)}",
                               param="layer")
        return self.meta["layer_info"][layer]

    def grid(self, layer: str | None = None) -> tuple[int, int]:
        return tuple(self.layer_info(layer)["grid"])

    def __len__(self) -> int:
        if self._n is None:
            self._n = int(self.root[image_key("status")].shape[0])
        return self._n

    def _col(self, key: str) -> np.ndarray:
        if key not in self._cols:
            self._cols[key] = self.root[key][:]
        return self._cols[key]

    def refresh(self) -> None:
        self._n = None
        self._cols.clear()
        self._has.clear()
        self._arrays.clear()
        self._loaded.clear()
        self.__dict__.pop("_unit_pooled", None)

    @property
    def status(self) -> np.ndarray:
        return self._col(image_key("status"))

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of rows that were indexed (not pending, not skipped)."""
        return self.status == INDEXED

    @property
    def paths(self) -> np.ndarray:
        return self._col(image_key("path"))

    @property
    def labels(self) -> np.ndarray:
        return self._col(image_key("label"))

    @property
    def sizes(self) -> np.ndarray:
        return self._col(image_key("size"))

    @property
    def file_stats(self) -> np.ndarray:
        """(N, 2) int64: file size and mtime_ns of each image when it was indexed."""
        return self._col(image_key("stat"))

    @property
    def meta_columns(self) -> list[str]:
        return list(self.meta.get("meta_columns", []))

    def column(self, name: str) -> np.ndarray:
        if name == "label":
            return self.labels
        if name not in self.meta_columns:
            raise NotFound(f"no metadata column {name!r}; columns: label, "
                           f"{', '.join(self.meta_columns)}", param="column")
        return self._col(meta_key(name))

    def skipped(self) -> list[tuple[str, str]]:
        idx = np.flatnonzero(self.status == SKIPPED)
        errs = self._col(image_key("error"))
        return [(str(self.paths[i]), str(errs[i])) for i in idx]

    def fingerprint(self) -> str:
        """Changes when rows are added, skipped or re-indexed."""
        h = hashlib.sha1(np.ascontiguousarray(self.root[image_key("status")][:]).tobytes())
        h.update(np.ascontiguousarray(self.root[image_key("stat")][:]).tobytes())
        return h.hexdigest()[:16]

    def to_pandas(self):
        """The images as a pandas DataFrame: id, path, label, metadata columns, status
        ("pending" / "indexed" / "skipped"), width, height, error (pandas is optional)."""
        from .._tables import frame

        names = {PENDING: "pending", INDEXED: "indexed", SKIPPED: "skipped"}
        sizes = self.sizes
        text = lambda a: [str(v) for v in a]  # noqa: E731
        cols = {"id": np.arange(len(self)), "path": text(self.paths), "label": text(self.labels)}
        cols.update({c: text(self.column(c)) for c in self.meta_columns})
        cols.update({"status": np.array([names.get(int(s), "?") for s in self.status]),
                     "width": sizes[:, 0], "height": sizes[:, 1],
                     "error": text(self._col(image_key("error")))})
        return frame(cols, ints=("id", "width", "height"),
                     strings=("path", "label", *self.meta_columns, "error"),
                     categories=("status",))

    def abspath(self, i: int) -> Path:
        """Absolute path of image ``i`` under the (possibly re-pointed) image root."""
        return self.image_root / str(self.paths[self._check_id(i)])

    def _check_id(self, i) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise NotFound(f"image id must be an integer, got {i!r}", param="image") from None
        if not 0 <= i < len(self):
            raise NotFound(f"no image with id {i} (cache has ids 0–{len(self) - 1})",
                           param="image")
        return i

    check_id = _check_id

    # -- thumbnails ------------------------------------------------------------------------------
    def thumbnail(self, i: int) -> bytes:
        i = self._check_id(i)
        return bytes(self.root[image_key("thumb")][i:i + 1][0])

    @property
    def thumbnail_chunk(self) -> int:
        return int(self.root[image_key("thumb")].chunks[0])

    def thumbnail_range(self, start: int, stop: int) -> list[bytes]:
        """Thumbnails of rows [start, stop) (b"" for rows without one)."""
        return [bytes(b) for b in self.root[image_key("thumb")][int(start):int(stop)]]

    def thumbnails(self, ids) -> list[bytes]:
        """Thumbnails of rows ``ids`` in one concurrent read."""
        return [bytes(b) for b in take_rows(self.root[image_key("thumb")], np.asarray(ids))]

    def image_size(self, i: int) -> tuple[int, int]:
        w, h = self.sizes[self._check_id(i)]
        return int(w), int(h)

    # -- per-image grids (the ``full`` mode pads and turns them) ---------------------------------
    @property
    def padded(self) -> bool:
        """Whether the layers' grids hold padding and portrait images transposed (index mode
        ``full``): each image then has its own :meth:`frame`."""
        return self.transform.mode == "full"

    def frame(self, i: int, layer: str | None = None) -> Frame:
        """Image ``i``'s geometry with ``layer``'s grid, in the image's own orientation."""
        return self.transform.frame(*self.image_size(i), self.grid(layer))

    def image_grid(self, i: int, layer: str | None = None) -> tuple[int, int]:
        """(rows, cols) of image ``i``'s feature map as :meth:`features` returns it."""
        return self.frame(i, layer).grid if self.padded else self.grid(layer)

    def transposed(self, layer: str | None = None) -> np.ndarray:
        """(N,) bool: the rows whose grid the layer stores transposed (portrait images of a
        ``full`` cache; the scan matches them with the transposed query)."""
        r, c = self.grid(layer)
        if not self.padded or r == c:
            return np.zeros(len(self), bool)
        w, h = self.sizes[:, 0], self.sizes[:, 1]
        return (h > w) & self.valid

    def info(self) -> dict:
        """A summary for ``vfsearch info`` (JSON-serialisable)."""
        st = self.status
        return {
            "path": str(self.path),
            "format_version": self.format_version,
            "model": self.model,
            "weights_hash": self.weights_hash,
            "transform": self.meta["transform"],
            "image_root": str(self.image_root),
            "images": len(self),
            "indexed": int((st == INDEXED).sum()),
            "skipped": int((st == SKIPPED).sum()),
            "pending": int((st == PENDING).sum()),
            "dtype": self.dtype,
            "refine": self.refine,
            "compression": self.meta.get("compression"),
            "layers": {k: self.meta["layer_info"][k] for k in self.layers},
            "meta_columns": self.meta_columns,
            "bytes_on_disk": disk_usage(self.path),
        }

    # -- features ------------------------------------------------------------------------------
    def _arr(self, layer: str, name: str):
        """The layer's Zarr array ``name`` (None if absent), memoised: each lookup of Zarr
        metadata costs milliseconds, more than a refine step's reads."""
        key = layer_key(layer, name)
        if key not in self._arrays:
            self._arrays[key] = self.root[key] if self.has(layer, name) else None
        return self._arrays[key]

    def has(self, layer: str, name: str) -> bool:
        """Whether ``layer`` stores the array ``name`` (e.g. "refine", "pooled")."""
        key = layer_key(layer, name)
        if key not in self._has:
            self._has[key] = key in self.root
        return self._has[key]

    def chunk_len(self) -> int:
        return int(self.meta["chunk"])

    def feature_nbytes(self, layer: str | None = None) -> int:
        """Bytes of a layer's scanned arrays in RAM (features + per-cell floats)."""
        info = self.layer_info(layer)
        a = self._arr(layer or self.default_layer, "features")
        h, w = info["grid"]
        per_cell = 4 * (3 if self.dtype == "int8" else 1)
        return int(a.nbytes) + len(self) * h * w * per_cell

    def fits_in_memory(self, layer: str | None = None) -> bool:
        """Whether a layer's scanned arrays fit comfortably (in half the available RAM; a layer
        already loaded fits)."""
        if (layer or self.default_layer) in self._loaded:
            return True
        return self.feature_nbytes(layer) < available_memory() // 2

    def load(self, layer: str | None = None) -> LayerData:
        """All rows of a layer in memory (kept for later calls)."""
        layer = layer or self.default_layer
        self.layer_info(layer)
        if layer not in self._loaded:
            self._loaded[layer] = self.read(layer, 0, len(self))
        return self._loaded[layer]

    def interleave(self, layer: str | None = None) -> bool:
        """Load ``layer`` and keep the cell-interleaved copy of its 8-bit features beside it
        (:func:`vfsearch.engine.kernel.interleave`): the offsets path then scans the copy
        instead of transposing every image, so repeated region queries on grids such as
        14 × 14 and 28 × 28 run faster, for a second copy of the features in RAM. Only for an
        8-bit layer whose copy fits in a quarter of the available RAM; returns whether the copy
        is kept (the web app keeps it for each layer it loads)."""
        from ..engine import kernel

        layer = layer or self.default_layer
        if not self.fits_in_memory(layer):
            return False
        data = self.load(layer)
        if data.inter is not None:
            return True
        if data.features.dtype.itemsize != 1 or data.n == 0:
            return False
        if kernel.interleaved_nbytes(data.features.shape) > available_memory() // 4:
            return False
        data.inter = kernel.interleave(data.features)
        return True

    def is_loaded(self, layer: str) -> bool:
        return layer in self._loaded

    def read(self, layer: str, start: int, stop: int) -> LayerData:
        """Rows [start, stop) of a layer's scanned arrays."""
        self.layer_info(layer)
        scale, qerr2 = self._arr(layer, "scale"), self._arr(layer, "qerr2")
        rows = lambda a: None if a is None else read_rows(a, start, stop)  # noqa: E731
        return LayerData(
            name=layer,
            features=rows(self._arr(layer, "features")),
            sqnorm=rows(self._arr(layer, "sqnorm")),
            scale=rows(scale),
            qerr2=rows(qerr2),
            start=start,
        )

    def iter_chunks(self, layer: str, rows: int | None = None) -> Iterator[LayerData]:
        """Stream a layer in blocks of ``rows`` (a multiple of the chunk length)."""
        c = self.chunk_len()
        rows = max(c, (rows or c) // c * c)
        for s in range(0, len(self), rows):
            yield self.read(layer, s, min(len(self), s + rows))

    def features(self, i: int, layer: str | None = None, exact: bool = True) -> np.ndarray:
        """One image's feature map (H, W, C) as float32 (from the refine copy when ``exact``),
        in the image's own orientation (:meth:`image_grid`; padding cells of a ``full`` cache
        are zero)."""
        layer = layer or self.default_layer
        self.layer_info(layer)
        i = self._check_id(i)
        f = self._stored_features(i, layer, exact)
        return self.frame(i, layer).from_stored(f) if self.padded else f

    def _stored_features(self, i: int, layer: str, exact: bool) -> np.ndarray:
        ref = self._arr(layer, "refine")
        if exact and ref is not None:
            return self._refine_rows(ref, [i])[0]
        if layer in self._loaded:
            return self._loaded[layer].dequantised(np.array([i]))[0]
        f = np.asarray(self._arr(layer, "features")[i], dtype=np.float32)
        sc = self._arr(layer, "scale")
        if sc is not None:
            f = f * np.asarray(sc[i], dtype=np.float32)[..., None]
        return f

    def rows_features(self, layer: str, ids) -> np.ndarray:
        """Float32 feature maps (m, H, W, C) of rows ``ids``, as exact as the cache allows
        (the refine copy, else the dequantised features, from RAM when the layer is loaded), as
        the layer stores them (a ``full`` cache's portraits transposed: :meth:`transposed`)."""
        ids = np.asarray(ids, dtype=np.int64)
        ex = self.exact_rows(layer, ids)
        if ex is not None:
            return ex[0]
        if layer in self._loaded:
            return self._loaded[layer].dequantised(ids)
        f = take_rows(self._arr(layer, "features"), ids).astype(np.float32)
        sc = self._arr(layer, "scale")
        if sc is not None:
            f *= take_rows(sc, ids)[..., None]
        return f

    def exact_rows(self, layer: str, ids: np.ndarray, norms: bool = True
                   ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Higher-precision features + squared norms (None unless ``norms``) for a few rows (the
        refine step), or None when the cache has no refine copy."""
        ref = self._arr(layer, "refine")
        if ref is None:
            return None
        f = self._refine_rows(ref, ids)
        return f, (np.einsum("nhwc,nhwc->nhw", f, f) if norms else None)

    def distinct_rows(self, layer: str, ids) -> tuple[np.ndarray, np.ndarray] | None:
        """(first, inverse) over rows ``ids`` by their refine digests: ``ids[first]`` are the
        distinct refine rows and row j equals ``ids[first][inverse[j]]`` byte for byte, so the
        refine step reads each distinct row once; None when the layer stores no digests (a
        cache written before format 4 that was not upgraded)."""
        if not self.has(layer, "digest"):
            return None
        ids = np.asarray(ids, dtype=np.int64)
        d = np.ascontiguousarray(self._col(layer_key(layer, "digest"))[ids])
        keys = d.view(np.dtype((np.void, d.shape[1]))).reshape(-1)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)

    @staticmethod
    def _refine_rows(ref, ids) -> np.ndarray:
        """Rows of a refine copy as float32: one read per row where it is stored uncompressed
        (format 3), else through Zarr (whole chunks decompressed)."""
        ids = np.asarray(ids, dtype=np.int64)
        f = read_ids(ref, ids)
        if f is None:
            f = take_rows(ref, ids)
        return f.astype(np.float32, copy=False)

    def pooled(self, layer: str | None = None, ids=None) -> np.ndarray:
        """Mean-pooled float features (N, C) — or rows ``ids`` — of a layer (global search)."""
        layer = layer or self.default_layer
        self.layer_info(layer)
        versions.require(self, layer, "pooled")
        key = layer_key(layer, "pooled")
        if ids is None or key in self._cols:
            col = self._col(key)
            return col if ids is None else col[np.asarray(ids, dtype=np.int64)]
        return take_rows(self._arr(layer, "pooled"), np.asarray(ids, dtype=np.int64))

    # -- stored results ---------------------------------------------------------------------------
    def stored(self, kind: str, layer: str, name: str) -> Stored | None:
        """A complete stored result (e.g. kind "map", name "tsne"), or None."""
        key = derived_key(kind, layer, name)
        if self.format_version < 2 and kind == "map":
            key = f"map/{layer}/{name}"  # where format 1 kept maps
        try:
            if key not in self.root:
                return None
            g = self.root[key]
        except Exception:  # noqa: BLE001 - a half-written group reads as absent
            return None
        attrs = dict(g.attrs)
        return Stored(g, attrs) if attrs.get("complete") else None

    def check_compatible(self, model: str, weights_hash: str, transform: Transform,
                         dtype: str | None = None) -> None:
        """Refuse to extend this cache with another model, weights, transform or dtype (layers
        may be added)."""
        problems = []
        if model != self.model:
            problems.append(f"model {model!r} ≠ cache model {self.model!r}")
        elif weights_hash != self.weights_hash:
            problems.append(f"weights {weights_hash} ≠ cache weights {self.weights_hash}")
        if transform.to_dict() != self.transform.to_dict():
            problems.append(f"transform {transform.to_dict()} ≠ cache transform "
                            f"{self.meta['transform']}")
        if dtype is not None and dtype != self.dtype:
            problems.append(f"dtype {dtype!r} ≠ cache dtype {self.dtype!r}")
        if problems:
            raise CacheMismatch(
                f"cache {self.path} was built differently: " + "; ".join(problems)
                + " (use another cache directory)", param="out"
            )

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, model={self.model!r}, layers={self.layers}, "
                f"images={len(self)}, dtype={self.dtype!r})")


def available_memory() -> int:
    """Bytes of RAM available to a new allocation: Linux's ``MemAvailable`` (free memory plus
    the page cache it can reclaim — right after writing a large cache most RAM is page cache,
    which ``SC_AVPHYS_PAGES`` counts as used), else the free pages, else 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def open_cache(path: str | os.PathLike,
               image_root: str | os.PathLike | None = None) -> FeatureCache:
    """Open a feature cache for reading. ``image_root`` re-points where the images live."""
    return FeatureCache(path, image_root=image_root)


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total
