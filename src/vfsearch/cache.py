"""The feature cache: one Zarr v3 directory per (image set, model), one group per layer.

Layout::

    CACHE/zarr.json                 root attributes ``vfsearch``: format version, model, weights
                                    hash, transform, image root, layers, dtype, compression
    CACHE/images/path|label|error   (N,) UTF-8          relative path, label, skip reason
    CACHE/images/meta/<column>      (N,) UTF-8          extra CSV columns
    CACHE/images/size               (N, 2) int32        original (upright) width, height
    CACHE/images/stat               (N, 2) int64        file size, mtime_ns when indexed
    CACHE/images/status             (N,) uint8          0 pending, 1 indexed, 2 skipped
    CACHE/images/thumb              (N,) bytes          JPEG thumbnail (longest side 256)
    CACHE/layers/<layer>/features   (N, H, W, C)        uint8 | int8 | float16 | float32 (NHWC)
    CACHE/layers/<layer>/scale      (N, H, W) float32   per-cell scale (8-bit only)
    CACHE/layers/<layer>/sqnorm     (N, H, W) float32   squared norm of each (dequantised) cell
    CACHE/layers/<layer>/qerr2      (N, H, W) float32   squared quantisation error (8-bit only)
    CACHE/layers/<layer>/refine     (N, H, W, C)        higher-precision copy for exact re-ranking

All arrays are chunked along N with the same chunk length, and ``images/status`` is written last
for a chunk: Zarr's local store replaces each chunk file atomically, so a chunk whose status is
written is complete. An interrupted run resumes from the first pending chunk.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.dtype import VariableLengthBytes, VariableLengthUTF8

from .errors import CacheError, CacheMismatch, CacheNotFound, NotFound
from .transforms import Transform

__all__ = ["FORMAT_VERSION", "FeatureCache", "LayerData", "open_cache", "quantize"]

FORMAT_VERSION = 1
PENDING, INDEXED, SKIPPED = 0, 1, 2
DTYPES = ("int8", "f16", "f32")
REFINE = ("f32", "f16", "none")

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")


def compressor(kind: str = "zstd") -> list:
    if kind == "none":
        return []
    if kind == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def quantize(x: np.ndarray, dtype: str, nonnegative: bool):
    """NHWC float32 features → (stored array, scale | None, sqnorm, qerr2 | None).

    8-bit: per-cell scale, ``uint8`` (max/255) for non-negative layers, symmetric ``int8``
    (max|x|/127) for signed ones. ``sqnorm`` is the squared norm of the dequantised cell and
    ``qerr2`` the squared norm of the quantisation error (used to bound 8-bit scores).
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x, None, _sqsum(x), None
    if dtype == "f16":
        h = x.astype(np.float16)
        return h, None, _sqsum(h.astype(np.float32)), None
    if nonnegative:
        if (x < 0).any():
            raise CacheError("layer marked non-negative produced negative values; use --dtype f16")
        top, qmax, lo, npdt = x.max(axis=-1), 255.0, 0.0, np.uint8
    else:
        top, qmax, lo, npdt = np.abs(x).max(axis=-1), 127.0, -127.0, np.int8
    scale = (top / qmax).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(x / safe), lo, qmax).astype(npdt)
    deq = q.astype(np.float32) * scale[..., None]
    err = x - deq
    return q, scale, _sqsum(deq), _sqsum(err)


def _sqsum(a: np.ndarray) -> np.ndarray:
    """Per-cell squared norm, summed in float64 so the float32 result does not depend on memory
    alignment or thread count (a resumed or distributed run writes identical bytes)."""
    return np.einsum("nhwc,nhwc->nhw", a, a, dtype=np.float64).astype(np.float32)


def stored_dtype(dtype: str, nonnegative: bool) -> np.dtype:
    if dtype == "int8":
        return np.dtype(np.uint8 if nonnegative else np.int8)
    return np.dtype(np.float16 if dtype == "f16" else np.float32)


@dataclass
class LayerData:
    """One layer's arrays, loaded (or memory-resident) as numpy."""

    name: str
    features: np.ndarray  # (n, H, W, C)
    sqnorm: np.ndarray  # (n, H, W)
    scale: np.ndarray | None
    qerr2: np.ndarray | None
    start: int = 0  # index of the first row

    @property
    def n(self) -> int:
        return self.features.shape[0]


class FeatureCache:
    """A feature cache opened for reading (and, through :mod:`vfsearch.extract`, writing)."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 mode: str = "r"):
        self.path = Path(path).expanduser()
        if not (self.path / "zarr.json").exists():
            raise CacheNotFound(f"no vfsearch cache at {self.path}")
        try:
            self.root = zarr.open_group(str(self.path), mode=mode)
            attrs = dict(self.root.attrs).get("vfsearch")
        except Exception as e:  # noqa: BLE001 - any zarr failure is a broken cache
            raise CacheError(f"cannot read cache at {self.path}: {e}") from None
        if not attrs:
            raise CacheNotFound(f"{self.path} is a Zarr store but not a vfsearch cache")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise CacheMismatch(
                f"cache format version {attrs.get('format_version')} is not supported "
                f"(this vfsearch reads version {FORMAT_VERSION})"
            )
        self.meta = attrs
        self.image_root = Path(image_root).expanduser().resolve() if image_root else Path(attrs["image_root"])
        self._cols: dict[str, np.ndarray] = {}
        self._loaded: dict[str, LayerData] = {}
        self._n: int | None = None

    # -- metadata ------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def weights_hash(self) -> str:
        return self.meta["weights_hash"]

    @property
    def transform(self) -> Transform:
        return Transform.from_dict(self.meta["transform"])

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def default_layer(self) -> str:
        return self.layers[0]

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    def layer_info(self, layer: str | None = None) -> dict:
        layer = layer or self.default_layer
        if layer not in self.layers:
            raise NotFound(f"cache has no layer {layer!r}; it has: {', '.join(self.layers)}")
        return self.meta["layer_info"][layer]

    def grid(self, layer: str | None = None) -> tuple[int, int]:
        return tuple(self.layer_info(layer)["grid"])

    def __len__(self) -> int:
        if self._n is None:
            self._n = int(self.root["images/status"].shape[0])
        return self._n

    def _col(self, name: str) -> np.ndarray:
        if name not in self._cols:
            self._cols[name] = self.root[f"images/{name}"][:]
        return self._cols[name]

    def refresh(self) -> None:
        self._n = None
        self._cols.clear()
        self._loaded.clear()

    @property
    def status(self) -> np.ndarray:
        return self._col("status")

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of rows that were indexed (not pending, not skipped)."""
        return self.status == INDEXED

    @property
    def paths(self) -> np.ndarray:
        return self._col("path")

    @property
    def labels(self) -> np.ndarray:
        return self._col("label")

    @property
    def sizes(self) -> np.ndarray:
        return self._col("size")

    @property
    def meta_columns(self) -> list[str]:
        return list(self.meta.get("meta_columns", []))

    def column(self, name: str) -> np.ndarray:
        if name == "label":
            return self.labels
        if name not in self.meta_columns:
            raise NotFound(f"no metadata column {name!r}; columns: label, {', '.join(self.meta_columns)}")
        return self._col(f"meta/{name}")

    def skipped(self) -> list[tuple[str, str]]:
        idx = np.flatnonzero(self.status == SKIPPED)
        errs = self._col("error")
        return [(str(self.paths[i]), str(errs[i])) for i in idx]

    def abspath(self, i: int) -> Path:
        """Absolute path of image ``i`` under the (possibly re-pointed) image root."""
        return self.image_root / str(self.paths[self._check_id(i)])

    def _check_id(self, i) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise NotFound(f"image id must be an integer, got {i!r}") from None
        if not 0 <= i < len(self):
            raise NotFound(f"no image with id {i} (cache has ids 0–{len(self) - 1})")
        return i

    def thumbnail(self, i: int) -> bytes:
        i = self._check_id(i)
        return bytes(self.root["images/thumb"][i:i + 1][0])

    def image_size(self, i: int) -> tuple[int, int]:
        w, h = self.sizes[self._check_id(i)]
        return int(w), int(h)

    def info(self) -> dict:
        """A summary for ``vfsearch info`` (JSON-serialisable)."""
        st = self.status
        d = {
            "path": str(self.path),
            "format_version": self.meta["format_version"],
            "model": self.model,
            "weights_hash": self.weights_hash,
            "transform": self.meta["transform"],
            "image_root": str(self.image_root),
            "images": len(self),
            "indexed": int((st == INDEXED).sum()),
            "skipped": int((st == SKIPPED).sum()),
            "pending": int((st == PENDING).sum()),
            "dtype": self.dtype,
            "refine": self.meta.get("refine", "none"),
            "compression": self.meta.get("compression"),
            "layers": {k: self.meta["layer_info"][k] for k in self.layers},
            "meta_columns": self.meta_columns,
            "bytes_on_disk": disk_usage(self.path),
        }
        return d

    # -- features ------------------------------------------------------------------------------
    def _arr(self, layer: str, name: str):
        key = f"layers/{layer}/{name}"
        return self.root[key] if key in self.root else None

    def chunk_len(self) -> int:
        return int(self.meta["chunk"])

    def load(self, layer: str | None = None) -> LayerData:
        """All rows of a layer in memory (kept for later calls)."""
        layer = layer or self.default_layer
        self.layer_info(layer)
        if layer not in self._loaded:
            self._loaded[layer] = self.read(layer, 0, len(self))
        return self._loaded[layer]

    def read(self, layer: str, start: int, stop: int) -> LayerData:
        """Rows [start, stop) of a layer's arrays (uncompressed local arrays are read straight
        from their chunk files, several times faster than through Zarr for big blocks)."""
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
        """One image's feature map (H, W, C) as float32 (from the refine copy when ``exact``)."""
        layer = layer or self.default_layer
        self.layer_info(layer)
        i = self._check_id(i)
        ref = self._arr(layer, "refine")
        if exact and ref is not None:
            return np.asarray(ref[i], dtype=np.float32)
        f = np.asarray(self._arr(layer, "features")[i], dtype=np.float32)
        sc = self._arr(layer, "scale")
        if sc is not None:
            f = f * np.asarray(sc[i], dtype=np.float32)[..., None]
        return f

    def exact_rows(self, layer: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Higher-precision features + squared norms for a few rows (the refine step)."""
        ref = self._arr(layer, "refine")
        if ref is None:
            return None
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            shape = (0,) + tuple(ref.shape[1:])
            return np.zeros(shape, np.float32), np.zeros(shape[:3], np.float32)
        order = np.argsort(ids)
        f = np.empty((len(ids),) + tuple(ref.shape[1:]), np.float32)
        f[order] = np.asarray(ref.get_orthogonal_selection((ids[order],)), dtype=np.float32)
        return f, np.einsum("nhwc,nhwc->nhw", f, f)

    def check_compatible(self, model: str, weights_hash: str, layers: list[str],
                         transform: Transform, dtype: str | None = None) -> None:
        """Refuse to extend this cache with another model, layers, transform or dtype."""
        problems = []
        if model != self.model:
            problems.append(f"model {model!r} ≠ cache model {self.model!r}")
        elif weights_hash != self.weights_hash:
            problems.append(f"weights {weights_hash} ≠ cache weights {self.weights_hash}")
        if sorted(layers) != sorted(self.layers):
            problems.append(f"layers {layers} ≠ cache layers {self.layers}")
        if transform.to_dict() != self.meta["transform"]:
            problems.append(f"transform {transform.to_dict()} ≠ cache transform {self.meta['transform']}")
        if dtype is not None and dtype != self.dtype:
            problems.append(f"dtype {dtype!r} ≠ cache dtype {self.dtype!r}")
        if problems:
            raise CacheMismatch(
                f"cache {self.path} was built differently: " + "; ".join(problems)
                + " (use another --out directory)"
            )

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, model={self.model!r}, layers={self.layers}, "
                f"images={len(self)}, dtype={self.dtype!r})")


def _raw_chunks(arr) -> Path | None:
    """The directory of an array whose chunk files are its raw C-order bytes in native byte
    order (local store, no compression, regular grid chunked along the first axis only), or
    None when the array must be read through Zarr."""
    try:
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore

        md = arr.metadata
        codecs = tuple(md.codecs)
        if not isinstance(arr.store, LocalStore) or len(codecs) != 1:
            return None
        if not isinstance(codecs[0], BytesCodec) or tuple(arr.chunks[1:]) != tuple(arr.shape[1:]):
            return None
        endian = getattr(codecs[0], "endian", None)
        if arr.dtype.itemsize > 1 and endian is not None and endian.value != sys.byteorder:
            return None
        if md.encode_chunk_key((0,) * arr.ndim) != "c/" + "/".join(["0"] * arr.ndim):
            return None
        return Path(arr.store.root) / arr.path
    except Exception:  # noqa: BLE001 - anything unexpected: the Zarr path
        return None


def read_rows(arr, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a Zarr array as a C-contiguous numpy array."""
    start, stop = max(0, int(start)), min(int(arr.shape[0]), int(stop))
    base = _raw_chunks(arr)
    if base is None:
        return np.ascontiguousarray(arr[start:stop])
    out = np.empty((max(0, stop - start),) + tuple(arr.shape[1:]), dtype=arr.dtype)
    if stop <= start:
        return out
    ch = int(arr.chunks[0])
    row = out.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    flat = out.reshape(-1).view(np.uint8)
    rest = "/0" * (arr.ndim - 1)
    for ci in range(start // ch, (stop + ch - 1) // ch):
        a, b = max(start, ci * ch), min(stop, (ci + 1) * ch)
        dst = memoryview(flat[(a - start) * row:(b - start) * row])
        try:
            with open(base / "c" / f"{ci}{rest}", "rb", buffering=0) as f:
                f.seek((a - ci * ch) * row)
                got = 0
                while got < len(dst):
                    k = f.readinto(dst[got:])
                    if not k:
                        break
                    got += k
        except FileNotFoundError:  # a chunk never written holds the fill value
            got = 0
        if got < len(dst):
            if got:
                raise CacheError(f"chunk {ci} of {arr.path} is truncated")
            out[a - start:b - start] = arr.fill_value
    return out


def open_cache(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> FeatureCache:
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


# -- writing --------------------------------------------------------------------------------------


def create_cache(path: Path, *, model: str, weights_hash: str, weights_path: str | None,
                 transform: Transform,
                 image_root: Path, layer_info: dict[str, dict], dtype: str, refine: str,
                 chunk: int, compression: str, meta_columns: list[str]) -> zarr.Group:
    if path.exists() and any(path.iterdir()):
        raise CacheError(f"{path} exists and is not a vfsearch cache; choose an empty --out")
    root = zarr.open_group(str(path), mode="w")
    root.attrs["vfsearch"] = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "weights_hash": weights_hash,
        "weights_path": weights_path,
        "transform": transform.to_dict(),
        "image_root": str(image_root),
        "layers": list(layer_info),
        "layer_info": layer_info,
        "dtype": dtype,
        "refine": refine if dtype == "int8" else "none",
        "chunk": chunk,
        "compression": compression,
        "meta_columns": meta_columns,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return root


def ensure_arrays(root: zarr.Group, n: int, meta: dict, thumb_chunk: int = 64) -> None:
    """Create (or grow to ``n`` rows) every array of the cache."""
    chunk = meta["chunk"]
    codecs = compressor(meta["compression"])

    def arr(key, shape, dtype, chunks, comp=True, fill=0):
        if key in root:
            a = root[key]
            if a.shape[0] != shape[0]:
                a.resize(shape)
            return
        kwargs = {"compressors": codecs if comp else None}
        root.create_array(key, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, **kwargs)

    arr("images/path", (n,), VariableLengthUTF8(), (chunk,), fill="")
    arr("images/label", (n,), VariableLengthUTF8(), (chunk,), fill="")
    arr("images/error", (n,), VariableLengthUTF8(), (chunk,), fill="")
    for col in meta["meta_columns"]:
        arr(f"images/meta/{col}", (n,), VariableLengthUTF8(), (chunk,), fill="")
    arr("images/size", (n, 2), np.int32, (chunk, 2))
    arr("images/stat", (n, 2), np.int64, (chunk, 2))
    arr("images/status", (n,), np.uint8, (chunk,))
    arr("images/thumb", (n,), VariableLengthBytes(), (thumb_chunk,), comp=False, fill=b"")
    for layer, info in meta["layer_info"].items():
        h, w = info["grid"]
        c = info["channels"]
        g = f"layers/{layer}"
        arr(f"{g}/features", (n, h, w, c), stored_dtype(meta["dtype"], info["nonnegative"]),
            (chunk, h, w, c))
        arr(f"{g}/sqnorm", (n, h, w), np.float32, (chunk, h, w))
        if meta["dtype"] == "int8":
            arr(f"{g}/scale", (n, h, w), np.float32, (chunk, h, w))
            arr(f"{g}/qerr2", (n, h, w), np.float32, (chunk, h, w))
            if meta["refine"] != "none":
                rdt = np.float16 if meta["refine"] == "f16" else np.float32
                # small chunks: the refine step reads a few scattered rows
                arr(f"{g}/refine", (n, h, w, c), rdt, (min(chunk, 16), h, w, c))


def estimate_bytes(n: int, layer_info: dict[str, dict], dtype: str, refine: str) -> int:
    """Uncompressed upper estimate of a cache's size (compression usually saves some)."""
    per = 16 * 1024  # thumbnail + per-image records
    for info in layer_info.values():
        h, w = info["grid"]
        cells = h * w
        c = info["channels"]
        item = {"int8": 1, "f16": 2, "f32": 4}[dtype]
        per += cells * c * item + cells * 4
        if dtype == "int8":
            per += cells * 8
            if refine != "none":
                per += cells * c * (2 if refine == "f16" else 4)
    return int(n * per)


def write_manifest(root: zarr.Group, start: int, items, meta_columns: list[str]) -> None:
    stop = start + len(items)
    root["images/path"][start:stop] = np.array([it.path for it in items], dtype=object)
    root["images/label"][start:stop] = np.array([it.label for it in items], dtype=object)
    for col in meta_columns:
        root[f"images/meta/{col}"][start:stop] = np.array([it.meta.get(col, "") for it in items],
                                                           dtype=object)


def update_attrs(root: zarr.Group, **changes) -> None:
    attrs = dict(root.attrs["vfsearch"])
    attrs.update(changes)
    root.attrs["vfsearch"] = json.loads(json.dumps(attrs))


def synthetic_cache(path: str | os.PathLike, n: int, *, layer: str = "conv5", channels: int = 512,
                    grid: tuple[int, int] = (7, 7), nonnegative: bool = True, dtype: str = "int8",
                    refine: str = "none", chunk: int = 1024, compression: str = "none",
                    model: str = "synthetic") -> zarr.Group:
    """An empty cache with the standard layout and ``n`` rows, for benchmarks that write the
    arrays directly (replaces whatever is at ``path``)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    info = {layer: {"channels": channels, "grid": list(grid), "stride": 224 / grid[1],
                    "nonnegative": nonnegative, "kind": "synthetic"}}
    root = create_cache(path, model=model, weights_hash="0", weights_path=None, transform=Transform(),
                        image_root=Path("/"), layer_info=info, dtype=dtype, refine=refine,
                        chunk=chunk, compression=compression, meta_columns=[])
    ensure_arrays(root, n, dict(root.attrs["vfsearch"]))
    return root


def remove_cache(path: Path) -> None:
    if (path / "zarr.json").exists():
        shutil.rmtree(path)
