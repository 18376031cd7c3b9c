"""Writing a feature cache: :class:`CacheWriter` creates a cache, grows it, writes whole chunks
(status last: the commit point), adds layers, stores results and upgrades older formats. The
only writer of the layout in :mod:`.layout`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.core.dtype import VariableLengthBytes

from ..errors import CacheError, CacheNotFound, OutputError
from ..transforms import Transform
from . import versions
from .layout import (
    FORMAT_VERSION,
    INDEXED,
    SKIPPED,
    ArraySpec,
    compressor,
    derived_key,
    encode_features,
    image_key,
    image_specs,
    layer_key,
    layer_specs,
    meta_key,
    pooled,
    row_digests,
)
from .reader import FeatureCache
from .rows import raw_chunks, read_rows

__all__ = ["CacheWriter", "RowRecord", "synthetic_cache", "upgrade"]


@dataclass
class RowRecord:
    """What indexing produced for one image: its records, and features per layer (None when the
    image was skipped, with ``error`` saying why)."""

    size: tuple[int, int] = (0, 0)
    stat: tuple[int, int] = (0, 0)
    error: str = ""
    thumb: bytes = b""
    features: dict[str, np.ndarray] | None = field(default=None, repr=False)


class CacheWriter:
    """A cache opened for writing."""

    def __init__(self, path: Path, root: zarr.Group):
        self.path = Path(path)
        self.root = root
        self.meta = dict(root.attrs["vfsearch"])

    # -- create / open ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, model: str, weights_hash: str, weights_path: str | None,
               transform: Transform, image_root, layer_info: dict[str, dict], dtype: str,
               refine: str, chunk: int, compression: str, meta_columns: Sequence[str] = ()
               ) -> CacheWriter:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise CacheError(f"{path} exists and is not a vfsearch cache; choose an empty "
                             "directory", param="out")
        compressor(compression)  # refuse an unknown codec before writing anything
        root = zarr.open_group(str(path), mode="w")
        root.attrs["vfsearch"] = _jsonable({
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
            "chunk": int(chunk),
            "compression": compression,
            "meta_columns": list(meta_columns),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return cls(path, root)

    @classmethod
    def open(cls, path) -> CacheWriter:
        path = Path(path)
        FeatureCache(path)  # the same checks as reading (exists, is a cache, known version)
        try:
            return cls(path, zarr.open_group(str(path), mode="r+"))
        except Exception as e:  # noqa: BLE001
            raise OutputError(f"cannot open the cache at {path} for writing: {e}") from None

    def reader(self, image_root=None) -> FeatureCache:
        return FeatureCache(self.path, image_root=image_root)

    @property
    def chunk(self) -> int:
        return int(self.meta["chunk"])

    @property
    def transform(self) -> Transform:
        return Transform.from_dict(self.meta["transform"])

    def __len__(self) -> int:
        key = image_key("status")
        return int(self.root[key].shape[0]) if key in self.root else 0

    def update_attrs(self, **changes) -> None:
        attrs = dict(self.root.attrs["vfsearch"])
        attrs.update(changes)
        self.root.attrs["vfsearch"] = _jsonable(attrs)
        self.meta = dict(self.root.attrs["vfsearch"])

    # -- arrays ----------------------------------------------------------------------------------
    def _ensure(self, spec: ArraySpec, n: int) -> None:
        if spec.key in self.root:
            a = self.root[spec.key]
            if a.shape[0] != n:
                a.resize((n,) + spec.row_shape)
            return
        codecs = compressor(self.meta["compression"]) if spec.compressed else None
        self.root.create_array(spec.key, shape=(n,) + spec.row_shape,
                               chunks=(spec.chunk,) + spec.row_shape, dtype=spec.dtype,
                               fill_value=spec.fill, compressors=codecs or None)

    def grow(self, n: int) -> None:
        """Create (or grow to ``n`` rows) every array of the cache."""
        for spec in image_specs(self.meta):
            self._ensure(spec, n)
        for layer in self.meta["layers"]:
            for spec in layer_specs(self.meta, layer):
                self._ensure(spec, n)

    def add_meta_columns(self, columns: Sequence[str]) -> None:
        extra = [c for c in columns if c not in self.meta["meta_columns"]]
        if extra:
            self.update_attrs(meta_columns=self.meta["meta_columns"] + extra)
            self.grow(len(self))

    def append_manifest(self, start: int, items) -> None:
        """Paths, labels and metadata of new rows ``start…`` (items: ``.path .label .meta``)."""
        stop = start + len(items)
        self.root[image_key("path")][start:stop] = np.array([it.path for it in items], dtype=object)
        self.root[image_key("label")][start:stop] = np.array([it.label for it in items],
                                                             dtype=object)
        for col in self.meta["meta_columns"]:
            self.root[meta_key(col)][start:stop] = np.array([it.meta.get(col, "") for it in items],
                                                            dtype=object)

    # -- reading back what resuming needs --------------------------------------------------------
    def status(self) -> np.ndarray:
        return self.root[image_key("status")][:]

    def paths(self) -> list[str]:
        return [str(p) for p in self.root[image_key("path")][:]]

    def file_stats(self, stop: int) -> np.ndarray:
        return self.root[image_key("stat")][:stop]

    def set_status(self, status: np.ndarray, rows) -> None:
        """Write the status of the chunks holding ``rows`` (whole chunks, from ``status``)."""
        chunk = self.chunk
        arr = self.root[image_key("status")]
        for c in sorted({int(r) // chunk for r in rows}):
            s, e = c * chunk, min(len(status), (c + 1) * chunk)
            arr[s:e] = status[s:e]

    # -- writing rows ----------------------------------------------------------------------------
    def write_chunk(self, c: int, rows: dict[int, RowRecord], status: np.ndarray,
                    layers: Sequence[str] | None = None) -> None:
        """Write rows (a dict row → record) of chunk ``c`` into every array, then their status
        (the commit point). Rows of the chunk not in ``rows`` keep what they hold. ``status``
        (the whole column) is updated in place. ``layers`` (default: all) limits the layers
        written — for adding layers to rows that are already indexed."""
        n = len(status)
        chunk = self.chunk
        s, e = c * chunk, min(n, (c + 1) * chunk)
        full = len(rows) == e - s
        sl = slice(s, e)
        idx = np.array(sorted(rows)) - s
        layers = list(self.meta["layers"] if layers is None else layers)
        adding = layers != list(self.meta["layers"])
        transform = self.transform
        if not adding:
            sizes = self.root[image_key("size")][sl] if not full else np.zeros((e - s, 2), np.int32)
            stats = self.root[image_key("stat")][sl] if not full else np.zeros((e - s, 2), np.int64)
            errs = (self.root[image_key("error")][sl] if not full
                    else np.array([""] * (e - s), dtype=object))
            thumbs = (self.root[image_key("thumb")][sl] if not full
                      else np.array([b""] * (e - s), dtype=object))
            for r, rec in rows.items():
                j = r - s
                sizes[j], stats[j], errs[j], thumbs[j] = rec.size, rec.stat, rec.error, rec.thumb
        for layer in layers:
            info = self.meta["layer_info"][layer]
            h, w = info["grid"]
            good = [(r - s, rec.features[layer]) for r, rec in sorted(rows.items())
                    if rec.features is not None]
            x = np.zeros((len(good), h, w, info["channels"]), np.float32)
            cells = np.full(len(good), h * w, np.int64)
            for k, (j, v) in enumerate(good):
                if transform.mode == "full":  # portraits transposed, padding zeroed
                    frame = transform.frame(*rows[s + j].size, (h, w))
                    x[k] = frame.to_stored(v)
                    cells[k] = int(np.prod(frame.valid))
                else:
                    x[k] = v
            gj = np.array([j for j, _ in good], dtype=np.int64)
            for name, vals in encode_features(x, self.meta, layer, cells).items():
                arr = self.root[layer_key(layer, name)]
                data = np.zeros((e - s,) + arr.shape[1:], arr.dtype) if full else arr[sl]
                if not full:
                    data[idx] = 0
                if len(gj):
                    data[gj] = vals
                arr[sl] = data
        if adding:
            return
        self.root[image_key("size")][sl] = sizes
        self.root[image_key("stat")][sl] = stats
        self.root[image_key("error")][sl] = errs
        self.root[image_key("thumb")][sl] = thumbs
        for r, rec in rows.items():
            status[r] = INDEXED if rec.features is not None else SKIPPED
        self.root[image_key("status")][sl] = status[s:e]

    def write_block(self, start: int, *, features: dict[str, np.ndarray] | None = None,
                    encoded: dict[str, dict[str, np.ndarray]] | None = None,
                    path=None, label=None, size=None, stat=None, error=None, thumb=None,
                    meta: dict[str, Sequence[str]] | None = None, status=None) -> None:
        """Write consecutive rows from ``start`` directly (benchmarks, imports, synthetic
        caches): float ``features`` per layer (encoded as indexing does), or already
        ``encoded`` arrays per layer (by layout name), plus any per-image column. Write
        ``status`` last, as the commit point."""
        encoded = dict(encoded or {})
        for layer, x in (features or {}).items():
            encoded[layer] = encode_features(np.asarray(x, np.float32), self.meta, layer)
        m = None
        for layer, arrays in encoded.items():
            self.meta["layer_info"][layer]  # noqa: B018 - KeyError for an unknown layer
            if "refine" in arrays and "digest" not in arrays \
                    and layer_key(layer, "digest") in self.root:
                arrays = {**arrays, "digest": row_digests(np.asarray(arrays["refine"]))}
            for name, vals in arrays.items():
                vals = np.asarray(vals)
                m = len(vals)
                self.root[layer_key(layer, name)][start:start + m] = vals
        cols = {"path": path, "label": label, "size": size, "stat": stat, "error": error,
                "thumb": thumb}
        for name, vals in cols.items():
            if vals is not None:
                vals = np.asarray(vals, dtype=object if name in ("path", "label", "error", "thumb")
                                  else None)
                self.root[image_key(name)][start:start + len(vals)] = vals
        for col, vals in (meta or {}).items():
            self.root[meta_key(col)][start:start + len(vals)] = np.asarray(vals, dtype=object)
        if status is not None:
            st = np.asarray(status, np.uint8)
            if st.ndim == 0:
                if m is None:
                    raise ValueError("a scalar status needs rows to apply to")
                st = np.full(m, st, np.uint8)
            self.root[image_key("status")][start:start + len(st)] = st

    # -- layers ----------------------------------------------------------------------------------
    def add_layers(self, layer_info: dict[str, dict]) -> list[str]:
        """Declare new layers: their arrays are created empty and the layers stay hidden from
        readers (``layers_pending``) until :meth:`layer_chunk_done` has seen every chunk."""
        new = {k: v for k, v in layer_info.items() if k not in self.meta["layers"]}
        if new:
            self.update_attrs(layers=self.meta["layers"] + list(new),
                              layer_info={**self.meta["layer_info"], **new},
                              layers_pending={**self.meta.get("layers_pending", {}),
                                              **{k: [] for k in new}})
            self.grow(len(self))
        return list(new)

    @property
    def pending_layers(self) -> dict[str, list[int]]:
        """Layers being added → the chunks already extracted for them."""
        return {k: list(v) for k, v in self.meta.get("layers_pending", {}).items()}

    def layer_chunk_done(self, layers: Sequence[str], c: int) -> None:
        pend = self.pending_layers
        for layer in layers:
            if layer in pend and c not in pend[layer]:
                pend[layer].append(int(c))
        self.update_attrs(layers_pending=pend)

    def finish_layers(self, layers: Sequence[str]) -> None:
        """Every chunk of ``layers`` is written: readers may use them."""
        pend = {k: v for k, v in self.pending_layers.items() if k not in layers}
        self.update_attrs(layers_pending=pend)

    # -- stored results --------------------------------------------------------------------------
    def store(self, kind: str, layer: str, name: str, arrays: dict[str, np.ndarray],
              attrs: dict, fill: dict | None = None) -> None:
        """Store a result (replacing any before it); it reads as present once complete."""
        g = self.root.create_group(derived_key(kind, layer, name), overwrite=True)
        for key, a in arrays.items():
            a = np.asarray(a)
            ch = (max(1, min(a.shape[0], 1 << 16)),) + a.shape[1:] if a.ndim else ()
            g.create_array(key, shape=a.shape, chunks=ch, dtype=a.dtype,
                           fill_value=(fill or {}).get(key, 0))[...] = a
        g.attrs.update({**_jsonable(attrs), "complete": True})

    def store_blobs(self, kind: str, layer: str, name: str, key: str, blobs: Sequence[bytes],
                    attrs: dict) -> None:
        """Add byte blobs (e.g. atlas pages) to a stored result."""
        gk = derived_key(kind, layer, name)
        if gk not in self.root or not dict(self.root[gk].attrs).get("complete"):
            raise CacheError(f"store the {kind} result ({layer}, {name}) before its {key}")
        g = self.root[gk]
        a = g.create_array(key, shape=(len(blobs),), chunks=(1,), dtype=VariableLengthBytes(),
                           fill_value=b"", compressors=None, overwrite=True)
        a[:] = np.array(list(blobs), dtype=object)
        a.attrs.update({**_jsonable(attrs), "complete": True})

    # -- format upgrades -------------------------------------------------------------------------
    def upgrade(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Bring an older cache to this vfsearch's format in place (resumable); returns what
        was added."""
        v = int(self.meta["format_version"])
        if v >= FORMAT_VERSION:
            return []
        added = []
        todo = versions.missing(v)
        old_maps = self.path / "map"
        if v < 2 and old_maps.is_dir():  # format 1 kept maps at map/<layer>/<method>
            dest = self.path / "derived"
            dest.mkdir(exist_ok=True)
            if not (dest / "map").exists():
                old_maps.rename(dest / "map")
                added.append("derived/map (moved)")
        if "pooled" in todo:
            for layer in self.meta["layers"]:
                if layer_key(layer, "pooled") not in self.root or \
                        self.meta.get("upgrade", {}).get(layer) is not None:
                    self._upgrade_pooled(layer, progress)
                    added.append(f"{layer}/pooled")
        if "refine" in versions.restored(v):
            for layer in self.meta["layers"]:
                if self._upgrade_refine(layer, progress):
                    added.append(f"{layer}/refine (uncompressed)")
        if "digest" in todo:
            for layer in self.meta["layers"]:
                if self._upgrade_digest(layer, progress):
                    added.append(f"{layer}/digest")
        self.update_attrs(format_version=FORMAT_VERSION, upgrade={}, upgrade_refine={},
                          upgrade_digest={})
        return added

    def _upgrade_refine(self, layer: str, progress) -> bool:
        """Rewrite a layer's refine copy uncompressed (format 3): copied block by block into
        ``refine.v3`` (progress in the ``upgrade_refine`` attribute), then swapped in for the old
        array, which is removed. Resumes at any point. Returns whether anything was rewritten."""
        key = layer_key(layer, "refine")
        tmp, old = key + ".v3", key + ".v2"
        d_key, d_tmp, d_old = self.path / key, self.path / tmp, self.path / old
        state = dict(self.meta.get("upgrade_refine") or {})
        if state.get(layer) != "swap" and not d_old.exists():
            if key not in self.root:
                return False
            src = self.root[key]
            if raw_chunks(src) is not None and tmp not in self.root:
                return False  # already stored row by row
            spec = next(sp for sp in layer_specs(self.meta, layer) if sp.key == key)
            n = int(src.shape[0])
            self._ensure(ArraySpec(tmp, spec.row_shape, spec.dtype, spec.chunk,
                                   compressed=False, fill=spec.fill), n)
            dst = self.root[tmp]
            block = max(spec.chunk, self.chunk // spec.chunk * spec.chunk)
            self._copy_rows(src, dst, n, block, layer, state, "upgrade_refine", None, progress)
            state[layer] = "swap"
            self.update_attrs(upgrade_refine=state)
        # the copy is complete: swap it in (each step is a rename, so a resumed run finishes it)
        if d_key.exists() and d_tmp.exists():
            d_key.rename(d_old)
        if d_tmp.exists():
            d_tmp.rename(d_key)
        shutil.rmtree(d_old, ignore_errors=True)
        state[layer] = "done"
        self.update_attrs(upgrade_refine=state)
        return True

    def _copy_rows(self, src, dst, n: int, block: int, layer: str, state: dict, attr: str,
                   fn, progress) -> None:
        """Rows of ``src`` (through ``fn`` if given) into ``dst``, ``block`` rows at a time from
        the block ``state[layer]`` says comes next, recording each in the attribute ``attr``."""
        nblocks = (n + block - 1) // block
        for b in range(int(state.get(layer) or 0), nblocks):
            s, e = b * block, min(n, (b + 1) * block)
            rows = read_rows(src, s, e)
            dst[s:e] = rows if fn is None else fn(rows)
            state[layer] = b + 1
            self.update_attrs(**{attr: state})
            if progress:
                progress(b + 1, nblocks)

    def _upgrade_digest(self, layer: str, progress) -> bool:
        """Add a layer's refine-row digests (format 4), chunk by chunk (progress in the
        ``upgrade_digest`` attribute, so an interrupted upgrade resumes). Returns whether the
        layer has a refine copy to digest."""
        specs = [sp for sp in layer_specs(self.meta, layer) if sp.key.endswith("/digest")]
        if not specs or layer_key(layer, "refine") not in self.root:
            return False
        state = dict(self.meta.get("upgrade_digest") or {})
        if state.get(layer) == "done":
            return False
        n = len(self)
        self._ensure(specs[0], n)
        src, dst = self.root[layer_key(layer, "refine")], self.root[specs[0].key]
        self._copy_rows(src, dst, n, self.chunk, layer, state, "upgrade_digest", row_digests,
                        progress)
        state[layer] = "done"
        self.update_attrs(upgrade_digest=state)
        return True

    def _upgrade_pooled(self, layer: str, progress) -> None:
        spec = next(s for s in layer_specs(self.meta, layer) if s.key.endswith("/pooled"))
        n = len(self)
        self._ensure(spec, n)
        done = int(self.meta.get("upgrade", {}).get(layer) or 0)
        src = layer_key(layer, "refine") if layer_key(layer, "refine") in self.root else None
        chunk = self.chunk
        nchunks = (n + chunk - 1) // chunk
        for c in range(done, nchunks):
            s, e = c * chunk, min(n, (c + 1) * chunk)
            if src is not None:
                x = read_rows(self.root[src], s, e).astype(np.float32)
            else:
                x = read_rows(self.root[layer_key(layer, "features")], s, e).astype(np.float32)
                sc = layer_key(layer, "scale")
                if sc in self.root:
                    x *= read_rows(self.root[sc], s, e)[..., None]
            self.root[spec.key][s:e] = pooled(x)
            self.update_attrs(upgrade={**self.meta.get("upgrade", {}), layer: c + 1})
            if progress:
                progress(c + 1, nchunks)
        self.update_attrs(upgrade={**self.meta.get("upgrade", {}), layer: None})


def upgrade(path, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Upgrade the cache at ``path`` to this vfsearch's format in place (resumable)."""
    if not (Path(path) / "zarr.json").exists():
        raise CacheNotFound(f"no vfsearch cache at {path}", param="cache")
    return CacheWriter.open(path).upgrade(progress)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def synthetic_cache(path, n: int, *, layer: str = "conv5", channels: int = 512,
                    grid: tuple[int, int] = (7, 7), nonnegative: bool = True, dtype: str = "int8",
                    refine: str = "none", chunk: int = 1024, compression: str = "none",
                    model: str = "synthetic", transform: Transform | None = None,
                    meta_columns: Sequence[str] = ()) -> CacheWriter:
    """An empty cache with the standard layout and ``n`` rows, for benchmarks and tests that
    write rows directly with :meth:`CacheWriter.write_block` (replaces whatever is at
    ``path``)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    transform = transform or Transform()
    info = {layer: {"channels": channels, "grid": list(grid), "stride": transform.size / grid[1],
                    "nonnegative": nonnegative, "kind": "synthetic"}}
    w = CacheWriter.create(path, model=model, weights_hash="0", weights_path=None,
                           transform=transform, image_root=Path("/"), layer_info=info,
                           dtype=dtype, refine=refine, chunk=chunk, compression=compression,
                           meta_columns=meta_columns)
    w.grow(n)
    return w
