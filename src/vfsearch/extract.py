"""Feature extraction: hooks on a model, batched forward, decoding overlapped with compute, and the
resumable indexing pipeline that fills a :class:`~vfsearch.cache.FeatureCache`."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import cache as cache_mod
from .cache import INDEXED, PENDING, SKIPPED, FeatureCache
from .errors import (
    BackendUnavailable,
    BadImage,
    BadParameter,
    CacheError,
    DiskSpaceError,
    OutputError,
    VfsError,
)
from .images import DEFAULT_MAX_PIXELS, ImageSet, discover, load_image, make_thumbnail
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .transforms import Transform

__all__ = ["FeatureExtractor", "IndexReport", "index", "extract_image", "prepare_image"]


class _StopForward(Exception):
    pass


class FeatureExtractor:
    """Capture the outputs of named layers during a forward pass.

    Use as a context manager; hooks are registered on entry and always removed on exit. The
    forward pass stops right after the last requested layer (the rest of the network is skipped).
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], stop_early: bool = True):
        self.module = module
        self.layers = list(layers)
        mods = dict(module.named_modules())
        missing = [name for name in self.layers if name not in mods]
        if missing:
            from .errors import UnknownLayer

            raise UnknownLayer(f"model has no layer(s) {', '.join(missing)}")
        self._mods = {name: mods[name] for name in self.layers}
        self.stop_early = stop_early
        self._handles: list = []
        self._out: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "FeatureExtractor":
        try:
            for name, m in self._mods.items():
                self._handles.append(m.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def fn(_m, _inp, out):
            self._out[name] = out
            if self.stop_early and len(self._out) == len(self.layers):
                raise _StopForward

        return fn

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """NCHW input batch → {layer: NHWC float32 numpy array}."""
        self._out = {}
        try:
            self.module(batch)
        except _StopForward:
            pass
        missing = [n for n in self.layers if n not in self._out]
        if missing:
            raise VfsError(f"layer(s) {', '.join(missing)} produced no output in the forward pass")
        res = {}
        for name in self.layers:
            t = self._out[name]
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise VfsError(f"layer {name!r} does not output a 4-D feature map")
            res[name] = t.permute(0, 2, 3, 1).float().contiguous().cpu().numpy()
        self._out = {}
        return res


# -- decoding ---------------------------------------------------------------------------------------


def prepare_image(path, transform: Transform, max_pixels: int = DEFAULT_MAX_PIXELS,
                  thumb_size: int = 256):
    """Decode one file → (CHW float32 input, JPEG thumbnail, (width, height))."""
    img = load_image(path, max_pixels=max_pixels)
    return transform.to_array(img), make_thumbnail(img, thumb_size), img.size


@dataclass
class _Decoded:
    row: int
    x: np.ndarray | None
    thumb: bytes
    size: tuple[int, int]
    stat: tuple[int, int]
    error: str = ""


class _BatchDataset(torch.utils.data.Dataset):
    """Each item is one batch (a list of rows); decoding happens in DataLoader workers."""

    def __init__(self, batches, paths, transform, max_pixels, thumb_size):
        self.batches, self.paths = batches, paths
        self.transform, self.max_pixels, self.thumb_size = transform, max_pixels, thumb_size

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        out = []
        for row in self.batches[k]:
            p = self.paths[row]
            try:
                st = os.stat(p)
                stat = (int(st.st_size), int(st.st_mtime_ns))
            except OSError:
                stat = (-1, -1)
            try:
                x, thumb, size = prepare_image(p, self.transform, self.max_pixels, self.thumb_size)
                out.append(_Decoded(row, x, thumb, size, stat))
            except BadImage as e:
                out.append(_Decoded(row, None, b"", (0, 0), stat, e.message))
            except Exception as e:  # noqa: BLE001 - one bad file never aborts the run
                out.append(_Decoded(row, None, b"", (0, 0), stat, f"{p}: {type(e).__name__}: {e}"))
        return out


def _worker_init(_):
    torch.set_num_threads(1)


# -- indexing ----------------------------------------------------------------------------------------


@dataclass
class IndexReport:
    cache: FeatureCache
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reindexed: int = 0
    added: int = 0
    seconds: float = 0.0
    estimated_bytes: int = 0

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0


def _layer_meta(model: LoadedModel, layers: list[str], transform: Transform) -> dict[str, dict]:
    from .models import list_layers

    infos = {i.name: i for i in list_layers(model.module, transform, model.default_layer, None)}
    out = {}
    for name in layers:
        if name not in infos:
            model.layer(name)  # raises UnknownLayer with suggestions
        i = infos[name]
        out[name] = {
            "channels": i.channels,
            "grid": list(i.grid),
            "stride": i.stride,
            "nonnegative": i.nonnegative,
            "kind": i.kind,
        }
    return out


def _check_writable(out: Path) -> None:
    """Fail early, with the reason, when ``out`` cannot be created or written (works as root too)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".vfsearch-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write the cache to {out}: {e.strerror or e}") from None


def index(
    images: str | os.PathLike | ImageSet,
    out: str | os.PathLike,
    *,
    model: str | LoadedModel = DEFAULT_MODEL,
    layers: Sequence[str] | None = None,
    dtype: str = "int8",
    refine: str = "f32",
    mode: str = "crop",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "cpu",
    image_root: str | os.PathLike | None = None,
    label_from: str | None = "parent",
    label_pattern: str | None = None,
    chunk: int = 256,
    compression: str = "zstd",
    thumb_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights: str | None = None,
    progress: bool | Callable[[int, int], None] = True,
    log: Callable[[str], None] | None = None,
    check_disk: bool = True,
    max_batches: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
) -> IndexReport:
    """Index images into a feature cache at ``out`` (created, resumed or extended).

    Running the same call again resumes an interrupted run; new images in the source are
    appended; images whose file changed (size or mtime) are re-indexed. A cache built with another
    model, weights, layer set, transform or dtype is refused. ``progress`` shows a bar (or is
    called with (done, total)); ``log`` receives one line saying what will be indexed.
    """
    t0 = time.perf_counter()
    if dtype not in cache_mod.DTYPES:
        raise VfsError(f"unknown dtype {dtype!r}; use one of {', '.join(cache_mod.DTYPES)}")
    if refine not in cache_mod.REFINE:
        raise VfsError(f"unknown refine {refine!r}; use one of {', '.join(cache_mod.REFINE)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("cuda requested but no CUDA device is available", param="device")
    out = Path(out).expanduser().resolve()
    _check_writable(out)

    imageset = images if isinstance(images, ImageSet) else discover(
        images, image_root=image_root, label_from=label_from, label_pattern=label_pattern
    )
    lm = model if isinstance(model, LoadedModel) else load_model(model, weights)
    transform = lm.transform.with_mode(mode)
    layers = list(layers) if layers else [lm.default_layer]
    if not layers or not all(layers):
        raise BadParameter("no layer given and the model has no default layer", param="layers")
    layer_info = _layer_meta(lm, layers, transform)

    # -- open / create / extend --------------------------------------------------------------
    existing = (out / "zarr.json").exists()
    if existing:
        fc = FeatureCache(out, mode="r+")
        fc.check_compatible(lm.name, lm.weights_hash, layers, transform, dtype)
        root = fc.root
        meta = dict(fc.meta)
        if str(imageset.root) != meta["image_root"]:
            imageset = _rebase(imageset, Path(meta["image_root"]))
    else:
        meta = None
    known = {}
    n_old = 0
    if existing:
        n_old = len(fc)
        known = {str(p): i for i, p in enumerate(fc.paths)}
    new_items = [it for it in imageset.items if it.path not in known]
    n_total = n_old + len(new_items)

    if not existing:
        root = cache_mod.create_cache(
            out, model=lm.name, weights_hash=lm.weights_hash, weights_path=lm.weights_path,
            transform=transform,
            image_root=imageset.root, layer_info=layer_info, dtype=dtype, refine=refine,
            chunk=chunk, compression=compression, meta_columns=imageset.meta_columns,
        )
        meta = dict(root.attrs["vfsearch"])
    elif new_items:
        extra = [c for c in imageset.meta_columns if c not in meta["meta_columns"]]
        if extra:
            cache_mod.update_attrs(root, meta_columns=meta["meta_columns"] + extra)
            meta = dict(root.attrs["vfsearch"])

    # -- what needs work ------------------------------------------------------------------------
    cache_mod.ensure_arrays(root, n_total, meta)
    if new_items:
        cache_mod.write_manifest(root, n_old, new_items, meta["meta_columns"])
    status = root["images/status"][:]
    paths = [str(p) for p in root["images/path"][:]]
    img_root = Path(meta["image_root"])
    reindex = []
    if existing and n_old:
        stats = root["images/stat"][:n_old]
        for i in np.flatnonzero(status[:n_old] != PENDING):
            try:
                st = os.stat(img_root / paths[i])
                cur = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # file gone: keep what was indexed
            if tuple(stats[i]) != cur:
                reindex.append(int(i))
    if reindex:
        status[reindex] = PENDING
        _write_status(root, status, reindex)
    pending = np.flatnonzero(status == PENDING)

    est = cache_mod.estimate_bytes(len(pending), layer_info, dtype, meta["refine"])
    if check_disk and len(pending):
        free = shutil.disk_usage(out).free
        if est > free:
            raise DiskSpaceError(
                f"the cache needs about {est / 1e9:.2f} GB for {len(pending)} images but only "
                f"{free / 1e9:.2f} GB are free at {out}"
            )
    report = IndexReport(cache=None, estimated_bytes=est, reindexed=len(reindex),
                         added=len(new_items))
    if log is not None:
        log(f"{len(pending)} of {n_total} images to index with {lm.name} [{', '.join(layers)}] as "
            f"{dtype}; estimated size ≤ {est / 1e6:.1f} MB")

    if len(pending) and scheduler:
        from .distributed import get_client, index_distributed

        t1 = time.perf_counter()
        report.indexed = index_distributed(get_client(scheduler), out, pending, int(meta["chunk"]), lm,
                                           batch_size=batch_size, max_pixels=max_pixels,
                                           thumb_size=thumb_size, progress=progress)
        report.seconds = time.perf_counter() - t1
    elif len(pending):
        # float results of a forward pass depend on torch's thread count: pin it when asked (the
        # Dask workers use 1), so runs with the same threads write identical bytes
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            _run(root, meta, lm, transform, layers, layer_info, pending, status, paths, img_root,
                 batch_size=batch_size, workers=workers, device=device, thumb_size=thumb_size,
                 max_pixels=max_pixels, progress=progress, report=report, max_batches=max_batches)
        finally:
            torch.set_num_threads(before)

    cache_mod.update_attrs(root, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.cache = FeatureCache(out)
    report.skipped = report.cache.skipped()
    report.seconds = time.perf_counter() - t0
    return report


def _rebase(imageset: ImageSet, root: Path) -> ImageSet:
    from .images import ImageItem

    items = []
    for it in imageset.items:
        absolute = (imageset.root / it.path).resolve()
        try:
            rel = absolute.relative_to(root).as_posix()
        except ValueError:
            raise CacheError(
                f"{absolute} is outside the cache's image root {root}; index it into another cache"
            ) from None
        items.append(ImageItem(rel, it.label, it.meta))
    return ImageSet(root, items, imageset.meta_columns)


def _write_status(root, status: np.ndarray, rows) -> None:
    chunk = root["images/status"].chunks[0]
    for c in sorted({r // chunk for r in rows}):
        s, e = c * chunk, min(len(status), (c + 1) * chunk)
        root["images/status"][s:e] = status[s:e]


def _run(root, meta, lm, transform, layers, layer_info, pending, status, paths, img_root, *,
         batch_size, workers, device, thumb_size, max_pixels, progress, report, max_batches):
    chunk = int(meta["chunk"])
    n = len(status)
    # batches never straddle a chunk, so a resumed run sees exactly the same batches
    by_chunk: dict[int, list[int]] = {}
    for r in pending:
        by_chunk.setdefault(int(r) // chunk, []).append(int(r))
    batches: list[list[int]] = []
    for c in sorted(by_chunk):
        rows = by_chunk[c]
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    if max_batches is not None:
        batches = batches[:max_batches]
    if workers is None:
        workers = min(2, len(os.sched_getaffinity(0)))
    abs_paths = [str(img_root / p) for p in paths]
    ds = _BatchDataset(batches, abs_paths, transform, max_pixels, thumb_size)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None, persistent_workers=False,
    )
    module = lm.module.to(device)
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b) for b in batches), unit="img", desc="indexing",
                   dynamic_ncols=True, file=sys.stderr)
    done = 0
    total = sum(len(b) for b in batches)
    buf: dict[int, dict[int, tuple]] = {}
    need = {c: set(rows) for c, rows in by_chunk.items()}
    t_start = time.perf_counter()
    try:
        with FeatureExtractor(module, layers) as fx:
            for decoded in loader:
                good = [d for d in decoded if d.x is not None]
                feats = {}
                if good:
                    x = torch.from_numpy(np.stack([d.x for d in good])).to(device)
                    feats = fx(x)
                k = 0
                for d in decoded:
                    c = d.row // chunk
                    if d.x is None:
                        buf.setdefault(c, {})[d.row] = (d, None)
                    else:
                        buf.setdefault(c, {})[d.row] = (d, {name: feats[name][k] for name in layers})
                        k += 1
                    need[c].discard(d.row)
                    if not need[c]:
                        _flush_chunk(root, meta, layers, layer_info, c, chunk, n, buf.pop(c), status)
                        del need[c]
                done += len(decoded)
                report.indexed += len(good)
                if bar is not None:
                    bar.update(len(decoded))
                elif callable(progress):
                    progress(done, total)
    finally:
        if bar is not None:
            bar.close()
        module.to("cpu")
    report.seconds = time.perf_counter() - t_start


def _flush_chunk(root, meta, layers, layer_info, c, chunk, n, rows: dict, status) -> None:
    """Write every array of one chunk, then its status (the commit point)."""
    s, e = c * chunk, min(n, (c + 1) * chunk)
    full = len(rows) == e - s
    sl = slice(s, e)
    idx = np.array(sorted(rows)) - s

    # images/*
    sizes = root["images/size"][sl] if not full else np.zeros((e - s, 2), np.int32)
    stats = root["images/stat"][sl] if not full else np.zeros((e - s, 2), np.int64)
    errs = root["images/error"][sl] if not full else np.array([""] * (e - s), dtype=object)
    thumbs = root["images/thumb"][sl] if not full else np.array([b""] * (e - s), dtype=object)
    for r, (d, _f) in rows.items():
        j = r - s
        sizes[j] = d.size
        stats[j] = d.stat
        errs[j] = d.error
        thumbs[j] = d.thumb
    for name in layers:
        info = layer_info[name]
        h, w = info["grid"]
        cch = info["channels"]
        g = f"layers/{name}"
        good = [(r - s, f[name]) for r, (d, f) in sorted(rows.items()) if f is not None]
        x = np.zeros((len(good), h, w, cch), np.float32)
        for k, (_j, v) in enumerate(good):
            x[k] = v
        q, scale, sqn, qerr2 = cache_mod.quantize(x, meta["dtype"], info["nonnegative"])
        gj = np.array([j for j, _ in good], dtype=np.int64)
        targets = [("features", q), ("sqnorm", sqn)]
        if meta["dtype"] == "int8":
            targets += [("scale", scale), ("qerr2", qerr2)]
            if meta["refine"] != "none":
                targets.append(("refine", x.astype(np.float16 if meta["refine"] == "f16" else np.float32)))
        for key, vals in targets:
            arr = root[f"{g}/{key}"]
            data = np.zeros((e - s,) + arr.shape[1:], arr.dtype) if full else arr[sl]
            if not full:
                data[idx] = 0
            if len(gj):
                data[gj] = vals
            arr[sl] = data
    root["images/size"][sl] = sizes
    root["images/stat"][sl] = stats
    root["images/error"][sl] = errs
    root["images/thumb"][sl] = thumbs
    for r, (d, f) in rows.items():
        status[r] = INDEXED if f is not None else SKIPPED
    root["images/status"][sl] = status[s:e]


def extract_image(img, model: LoadedModel, layer: str, transform: Transform | None = None,
                  device: str = "cpu") -> np.ndarray:
    """Feature map (H, W, C) float32 of one PIL image at ``layer``."""
    transform = transform or model.transform
    x = transform(img)[None].to(device)
    module = model.module.to(device)
    try:
        with FeatureExtractor(module, [layer]) as fx:
            return fx(x)[layer][0]
    finally:
        module.to("cpu")
