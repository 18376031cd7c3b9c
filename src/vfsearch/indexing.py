"""``index``: build, resume, extend or add layers to a feature cache.

The orchestration only: what needs work (new images, changed files, interrupted chunks, layers
being added), then the rows go through :func:`vfsearch.extract.run_rows` on this machine or
through :mod:`vfsearch.distributed` on Dask workers. Writing is the cache's
(:class:`~vfsearch.cache.CacheWriter`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import (
    COMPRESSIONS,
    DTYPES,
    INDEXED,
    PENDING,
    REFINE,
    CacheWriter,
    FeatureCache,
    estimate_bytes,
)
from .errors import BackendUnavailable, BadParameter, CacheError, DiskSpaceError, OutputError
from .extract import RunStats, run_rows
from .images import DEFAULT_MAX_PIXELS, ImageItem, ImageSet, discover
from .models import DEFAULT_MODEL, LoadedModel, list_layers, load_model
from .transforms import Transform

__all__ = ["IndexReport", "index", "layer_meta"]


@dataclass
class IndexReport:
    cache: FeatureCache | None
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reindexed: int = 0
    added: int = 0
    layers_added: list[str] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""
    # where the time went (see extract.RunStats): decode summed over the decoding processes
    engine: str = ""
    decode_seconds: float = 0.0
    forward_seconds: float = 0.0
    write_seconds: float = 0.0
    wait_seconds: float = 0.0
    export_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def stage_images_per_second(self) -> dict[str, float]:
        """Images/s of decode (per decoding process), forward and write, each on its own."""
        return {k: self.indexed / s if s > 0 else 0.0 for k, s in (
            ("decode", self.decode_seconds), ("forward", self.forward_seconds),
            ("write", self.write_seconds))}


def layer_meta(model: LoadedModel, layers: Sequence[str], transform: Transform) -> dict[str, dict]:
    """The cache's record of each layer: channels, grid, stride, sign, module kind."""
    infos = {i.name: i for i in list_layers(model.module, transform, model.default_layer, None)}
    out = {}
    for name in layers:
        if name not in infos:
            model.layer(name)  # raises UnknownLayer with suggestions
        i = infos[name]
        out[name] = {"channels": i.channels, "grid": list(i.grid), "stride": i.stride,
                     "nonnegative": i.nonnegative, "kind": i.kind}
        if getattr(i, "layout", "nchw") != "nchw":  # tokens or channels-last, read as a grid
            out[name]["layout"] = i.layout
        if getattr(i, "dropped", ""):
            out[name]["dropped"] = i.dropped
    return out


def _check_writable(out: Path) -> bool:
    """Fail early, with the reason, when ``out`` cannot be created or written (works as root
    too). Returns whether the directory was created here."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".vfsearch-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write the cache to {out}: {e.strerror or e}",
                          param="out") from None
    return created


def _rebase(imageset: ImageSet, root: Path) -> ImageSet:
    items = []
    for it in imageset.items:
        absolute = (imageset.root / it.path).resolve()
        try:
            rel = absolute.relative_to(root).as_posix()
        except ValueError:
            raise CacheError(f"{absolute} is outside the cache's image root {root}; index it "
                             "into another cache", param="images") from None
        items.append(ImageItem(rel, it.label, it.meta))
    return ImageSet(root, items, imageset.meta_columns)


def index(
    images: str | os.PathLike | ImageSet,
    out: str | os.PathLike,
    *,
    model: str | LoadedModel = DEFAULT_MODEL,
    layers: Sequence[str] | None = None,
    dtype: str = "int8",
    refine: str = "f32",
    mode: str = "crop",
    batch_size: int | None = None,
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
    engine: str = "auto",
    draft: bool = False,
    input_size: int | None = None,
) -> IndexReport:
    """Index images into a feature cache at ``out`` (created, resumed or extended).

    Running the same call again resumes an interrupted run; new images in the source are
    appended; images whose file changed (size or mtime) are re-indexed; ``layers`` not yet in
    the cache are added (extracted for its images in one pass; the existing layers are kept
    whether listed or not). A cache built with another model, weights, transform or dtype is
    refused. ``progress`` shows a bar (or is called with (done, total)); ``log`` receives one
    line saying what will be done (and any engine fallback). ``engine``: how the model runs
    (:data:`vfsearch.forward.ENGINES`; ``auto`` picks the fastest that matches the eager
    forward); ``batch_size=None``: 32 on the CPU, sized to the card on CUDA; ``draft``: decode
    large JPEGs at a reduced scale (faster, features change slightly); ``input_size``: the
    model input's side in pixels (default: the model's own; stored in the cache's transform).
    """
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise BadParameter(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}",
                           param="dtype")
    if refine not in REFINE:
        raise BadParameter(f"unknown refine {refine!r}; use one of {', '.join(REFINE)}",
                           param="refine")
    if compression not in COMPRESSIONS:
        raise BadParameter(f"unknown compression {compression!r}; use one of "
                           f"{', '.join(COMPRESSIONS)}", param="compression")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("cuda requested but no CUDA device is available", param="device")
    out = Path(out).expanduser().resolve()
    existing = (out / "zarr.json").exists()
    created = _check_writable(out)
    try:
        return _index(images, out, existing, model=model, layers=layers, dtype=dtype,
                      refine=refine, mode=mode, batch_size=batch_size, workers=workers,
                      device=device, image_root=image_root, label_from=label_from,
                      label_pattern=label_pattern, chunk=chunk, compression=compression,
                      thumb_size=thumb_size, max_pixels=max_pixels, weights=weights,
                      progress=progress, log=log, check_disk=check_disk,
                      max_batches=max_batches, scheduler=scheduler, threads=threads,
                      engine=engine, draft=draft, input_size=input_size, t0=t0)
    except BaseException as e:
        # a command that failed before writing anything leaves nothing behind; an interrupted
        # one keeps its chunks for the resume
        if created and not existing and not isinstance(e, KeyboardInterrupt) and \
                not (out / "zarr.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _index(images, out: Path, existing: bool, *, model, layers, dtype, refine, mode, batch_size,
           workers, device, image_root, label_from, label_pattern, chunk, compression,
           thumb_size, max_pixels, weights, progress, log, check_disk, max_batches, scheduler,
           threads, engine, draft, input_size, t0) -> IndexReport:
    imageset = images if isinstance(images, ImageSet) else discover(
        images, image_root=image_root, label_from=label_from, label_pattern=label_pattern)
    lm = model if isinstance(model, LoadedModel) else load_model(model, weights, input_size)
    if input_size and lm.transform.size != int(input_size):
        lm = lm.at_size(int(input_size))
    transform = lm.transform_for(mode)
    layers = list(layers) if layers else []

    # -- open / create / extend ------------------------------------------------------------------
    if existing:
        fc = FeatureCache(out)
        fc.check_compatible(lm.name, lm.weights_hash, transform, dtype)
        w = CacheWriter.open(out)
        w.upgrade()
        if str(imageset.root) != w.meta["image_root"]:
            imageset = _rebase(imageset, Path(w.meta["image_root"]))
        known = {p: i for i, p in enumerate(w.paths())}
        n_old = len(w)
        new_layers = [name for name in layers if name not in w.meta["layers"]]
        if new_layers:
            w.add_layers(layer_meta(lm, new_layers, transform))
    else:
        layers = layers or [lm.default_layer]
        if not all(layers):
            raise BadParameter("no layer given and the model has no default layer",
                               param="layers")
        info = layer_meta(lm, layers, transform)
        w = CacheWriter.create(out, model=lm.name, weights_hash=lm.weights_hash,
                               weights_path=lm.weights_path, transform=transform,
                               image_root=imageset.root, layer_info=info, dtype=dtype,
                               refine=refine, chunk=chunk, compression=compression,
                               meta_columns=imageset.meta_columns)
        known, n_old, new_layers = {}, 0, []
    new_items = [it for it in imageset.items if it.path not in known]
    n_total = n_old + len(new_items)
    if new_items:
        w.add_meta_columns(imageset.meta_columns)
    w.grow(n_total)
    if new_items:
        w.append_manifest(n_old, new_items)

    # -- what needs work -------------------------------------------------------------------------
    status = w.status()
    paths = w.paths()
    img_root = Path(w.meta["image_root"])
    reindex = []
    if existing and n_old:
        stats = w.file_stats(n_old)
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
        w.set_status(status, reindex)
    pending = np.flatnonzero(status == PENDING)
    adding = w.pending_layers  # layers being added → chunks already done
    add_rows = _rows_to_add(adding, status, w.chunk)

    all_info = w.meta["layer_info"]
    est = estimate_bytes(len(pending), all_info, w.meta["dtype"], w.meta["refine"]) + \
        estimate_bytes(len(add_rows), {k: all_info[k] for k in adding}, w.meta["dtype"],
                       w.meta["refine"])
    if check_disk and (len(pending) or len(add_rows)):
        free = shutil.disk_usage(out).free
        if est > free:
            raise DiskSpaceError(f"the cache needs about {est / 1e9:.2f} GB for {len(pending)} "
                                 f"images but only {free / 1e9:.2f} GB are free at {out}",
                                 param="out")
    report = IndexReport(cache=None, reindexed=len(reindex), added=len(new_items),
                         layers_added=list(new_layers))
    parts = []
    if len(pending):
        parts.append(f"{len(pending)} of {n_total} images to index with {lm.name} "
                     f"[{', '.join(w.meta['layers'])}] as {w.meta['dtype']}")
    if adding:
        parts.append(f"layer(s) {', '.join(adding)} to add for {len(add_rows)} indexed images")
    if not parts:
        parts.append(f"nothing to do: the cache's {n_total} images and layers "
                     f"[{', '.join(w.meta['layers'])}] are up to date")
    report.message = "; ".join(parts) + (f"; estimated size ≤ {est / 1e6:.1f} MB" if est else "")
    if log is not None:
        log(report.message)

    before = torch.get_num_threads()
    if threads:
        # float results of a forward pass depend on torch's thread count: pin it when asked (the
        # Dask workers use 1), so runs with the same threads write identical bytes
        torch.set_num_threads(threads)
    stats = RunStats()
    try:
        common = dict(batch_size=batch_size, workers=workers, device=device,
                      thumb_size=thumb_size, max_pixels=max_pixels, progress=progress,
                      max_batches=max_batches, engine=engine, draft=draft, log=log)
        if len(add_rows):
            run_rows(w, lm, transform, list(adding), add_rows, status, paths, img_root,
                     add_layers=True, stats=stats, **common)
        if adding and (max_batches is None):
            w.finish_layers(list(adding))
        if len(pending) and scheduler:
            from .distributed import index_distributed

            t1 = time.perf_counter()
            report.indexed = index_distributed(scheduler, out, pending, w.chunk, lm,
                                               batch_size=batch_size, max_pixels=max_pixels,
                                               thumb_size=thumb_size, progress=progress)
            report.seconds = time.perf_counter() - t1
        elif len(pending):
            stats = RunStats()
            report.indexed, _ = run_rows(w, lm, transform, list(w.meta["layers"]), pending,
                                         status, paths, img_root, stats=stats, **common)
    finally:
        torch.set_num_threads(before)

    report.engine, report.notes = stats.engine, stats.notes
    report.decode_seconds, report.forward_seconds = stats.decode_s, stats.forward_s
    report.write_seconds, report.wait_seconds = stats.write_s, stats.wait_s
    report.export_seconds = stats.export_s
    w.update_attrs(updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report.cache = FeatureCache(out)
    report.skipped = report.cache.skipped()
    report.seconds = time.perf_counter() - t0
    return report


def _rows_to_add(adding: dict[str, list[int]], status: np.ndarray, chunk: int) -> np.ndarray:
    """Indexed rows in the chunks some layer being added has not got yet."""
    if not adding:
        return np.zeros(0, np.int64)
    done = set.intersection(*(set(v) for v in adding.values()))
    rows = np.flatnonzero(status == INDEXED)
    return rows[~np.isin(rows // chunk, list(done))] if done else rows
