"""Feature extraction: decoding in worker processes overlapped with the forward, and
:func:`run_rows`, which pushes rows of a cache through them chunk by chunk (what to index is
decided by :mod:`vfsearch.indexing`; how the model runs up to the layers is
:mod:`vfsearch.forward`). :class:`FeatureExtractor` is the eager reference forward."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cache import CacheWriter, RowRecord
from .errors import BadImage
from .forward import Forward, StopEarly, cuda_batch_size
from .images import DEFAULT_MAX_PIXELS, load_image, make_thumbnail
from .models import LoadedModel
from .transforms import Transform

__all__ = ["FeatureExtractor", "RunStats", "extract_image", "prepare_image", "run_rows"]


class FeatureExtractor:
    """Capture the outputs of named layers during a forward pass (the eager reference; the
    faster engines are :class:`vfsearch.forward.Forward`'s).

    Use as a context manager (kept for the callers that do; hooks exist only during a call and
    are always removed). The forward pass stops right after the deepest requested layer (the
    rest of the network is skipped) unless ``stop_early=False``.
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], stop_early: bool = True):
        self.module = module
        self.layers = list(layers)
        self.stop_early = stop_early
        self._net = StopEarly(module, self.layers, stop=stop_early, nhwc=True)

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Nothing to remove between calls (kept for compatibility)."""

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """NCHW input batch → {layer: NHWC float32 numpy array}."""
        outs = self._net(batch)
        return {name: t.float().contiguous().cpu().numpy()
                for name, t in zip(self.layers, outs, strict=True)}


# -- decoding ------------------------------------------------------------------------------------


def _draft_open(path, transform: Transform, thumb_size: int, max_pixels: int):
    """A JPEG much larger than needed, decoded at 1/2, 1/4 or 1/8 scale by libjpeg (never below
    what the transform's resize and the thumbnail need) → (RGB image, original (w, h)); None
    when drafting does not apply (then the file is decoded in full)."""
    from PIL import Image, ImageOps

    from .images import _to_rgb

    with Image.open(path) as im:
        if im.format != "JPEG":
            return None
        w, h = im.size
        if w * h > max_pixels or w < 1 or h < 1:
            return None
        if transform.mode in ("crop", "full"):  # the shorter side goes to `resize`
            k = max(transform.resize / min(w, h), thumb_size / max(w, h))
        else:
            k = max(transform.size / w, transform.size / h, thumb_size / max(w, h))
        if k > 0.5:
            return None
        orient = im.getexif().get(0x0112, 1)
        im.draft("RGB", (int(np.ceil(w * k)), int(np.ceil(h * k))))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        size = (h, w) if orient in (5, 6, 7, 8) else (w, h)
        return _to_rgb(im), size


def prepare_image(path, transform: Transform, max_pixels: int = DEFAULT_MAX_PIXELS,
                  thumb_size: int = 256, draft: bool = False):
    """Decode one file → (CHW float32 input, JPEG thumbnail, original (width, height)).
    ``draft``: decode large JPEGs at a reduced scale (:func:`_draft_open`)."""
    if draft:
        try:
            got = _draft_open(path, transform, thumb_size, max_pixels)
        except Exception:  # noqa: BLE001 - the full decode below reports what is wrong
            got = None
        if got is not None:
            img, size = got
            return transform.to_array(img), make_thumbnail(img, thumb_size), size
    img = load_image(path, max_pixels=max_pixels)
    return transform.to_array(img), make_thumbnail(img, thumb_size), img.size


class _Batch:
    """One decoded batch: the inputs of its good rows stacked, and every row's record."""

    def __init__(self, rows, x, thumbs, sizes, stats, errors, seconds):
        self.rows, self.x, self.thumbs, self.sizes = rows, x, thumbs, sizes
        self.stats, self.errors, self.seconds = stats, errors, seconds

    def pin_memory(self):  # called by the DataLoader when pin_memory=True (CUDA)
        if isinstance(self.x, list):
            self.x = [a.pin_memory() for a in self.x]
        elif self.x is not None:
            self.x = self.x.pin_memory()
        return self


def _forward_batch(fwd: Forward, x) -> dict:
    """{layer: per-row features} of a stacked batch, or of a list of inputs of mixed shapes
    (one forward per shape)."""
    if x is None:
        return {}
    if isinstance(x, torch.Tensor):
        return fwd(x)
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(x):
        groups.setdefault(tuple(a.shape), []).append(i)
    out: dict[str, list] = {name: [None] * len(x) for name in fwd.layers}
    for idx in groups.values():
        f = fwd(torch.stack([x[i] for i in idx]))
        for name, v in f.items():
            for j, i in enumerate(idx):
                out[name][i] = v[j]
    return out


class _BatchDataset(torch.utils.data.Dataset):
    """Each item is one batch (a list of rows); decoding happens in DataLoader workers."""

    def __init__(self, batches, paths, transform, max_pixels, thumb_size, draft=False):
        self.batches, self.paths = batches, paths
        self.transform, self.max_pixels, self.thumb_size = transform, max_pixels, thumb_size
        self.draft = draft

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        t0 = time.perf_counter()
        rows, xs, thumbs, sizes, stats, errors = [], [], [], [], [], []
        for row in self.batches[k]:
            p = self.paths[row]
            try:
                st = os.stat(p)
                stat = (int(st.st_size), int(st.st_mtime_ns))
            except OSError:
                stat = (-1, -1)
            x, thumb, size, error = None, b"", (0, 0), ""
            try:
                x, thumb, size = prepare_image(p, self.transform, self.max_pixels,
                                               self.thumb_size, self.draft)
            except BadImage as e:
                error = e.message
            except Exception as e:  # noqa: BLE001 - one bad file never aborts the run
                error = f"{p}: {type(e).__name__}: {e}"
            rows.append(row)
            if x is not None:
                xs.append(x)
            thumbs.append(thumb)
            sizes.append(size)
            stats.append(stat)
            errors.append(error)
        if xs and all(a.shape == xs[0].shape for a in xs):
            x = torch.from_numpy(np.stack(xs))
        else:  # inputs of different shapes (e.g. portrait and landscape): run per shape
            x = [torch.from_numpy(a) for a in xs] or None
        return _Batch(rows, x, thumbs, sizes, stats, errors, time.perf_counter() - t0)


def _worker_init(_):
    torch.set_num_threads(1)


@dataclass
class RunStats:
    """Where a :func:`run_rows` call spent its time: ``decode_s`` summed over the decoding
    processes (decode, resize, thumbnail), ``forward_s`` and ``write_s`` in this process,
    ``wait_s`` waiting for decoded batches; ``engine`` that ran the forward, ``export_s`` of a
    first export, ``notes`` about fallbacks."""

    images: int = 0
    seconds: float = 0.0
    decode_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    wait_s: float = 0.0
    setup_s: float = 0.0
    export_s: float = 0.0
    engine: str = ""
    batch_size: int = 0
    notes: list[str] = field(default_factory=list)


def run_rows(writer: CacheWriter, lm: LoadedModel, transform: Transform, layers: list[str],
             pending, status: np.ndarray, paths: list[str], img_root: Path, *,
             batch_size: int | None, workers: int | None, device: str, thumb_size: int,
             max_pixels: int, progress, max_batches: int | None = None, add_layers: bool = False,
             engine: str = "auto", draft: bool = False, log=None,
             stats: RunStats | None = None) -> tuple[int, float]:
    """Decode, run the model on and write rows ``pending`` of the cache, chunk by chunk (each
    chunk is written when its last row is done; its status last). With ``add_layers``, the rows
    are already indexed and only ``layers`` (new ones) are written. ``engine``: see
    :class:`vfsearch.forward.Forward`; ``batch_size=None``: 32, or sized to the card on CUDA.
    Returns (images indexed, seconds); ``stats`` (if given) is filled in."""
    t_start = time.perf_counter()
    stats = stats if stats is not None else RunStats()
    cuda = device.startswith("cuda")
    chunk = writer.chunk
    module = lm.module.to(device)
    n_pending = len(pending)
    in_size = getattr(transform, "input_shape", (transform.size, transform.size))
    try:
        fwd = None
        if batch_size is None:
            if cuda:
                fwd = Forward(module, layers, size=in_size, engine=engine, device=device,
                              expected_images=n_pending, log=log)
                batch_size = cuda_batch_size(fwd, device)
            else:
                batch_size = 32
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
        ds = _BatchDataset(batches, abs_paths, transform, max_pixels, thumb_size, draft)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None, persistent_workers=False,
            pin_memory=cuda,
        )
        total = sum(len(b) for b in batches)
        it = iter(loader)  # workers start decoding while the engine is built
        if fwd is None:
            fwd = Forward(module, layers, size=in_size, engine=engine, device=device,
                          expected_images=total, log=log)
        stats.engine, stats.batch_size = fwd.engine_name, batch_size
        stats.export_s, stats.notes = fwd.export_seconds, list(fwd.notes)
        stats.setup_s = time.perf_counter() - t_start
        bar = None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True,
                       file=sys.stderr)
        done = indexed = 0
        buf: dict[int, dict[int, RowRecord]] = {}
        need = {c: set(rows) for c, rows in by_chunk.items()}
        try:
            while True:
                t = time.perf_counter()
                try:
                    b = next(it)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                stats.wait_s += t1 - t
                stats.decode_s += b.seconds
                feats = _forward_batch(fwd, b.x)
                t2 = time.perf_counter()
                stats.forward_s += t2 - t1
                k = 0
                for j, row in enumerate(b.rows):
                    c = row // chunk
                    rec = RowRecord(b.sizes[j], b.stats[j], b.errors[j], b.thumbs[j])
                    if not b.errors[j]:
                        rec.features = {name: feats[name][k] for name in layers}
                        k += 1
                    buf.setdefault(c, {})[row] = rec
                    need[c].discard(row)
                    if not need[c]:
                        writer.write_chunk(c, buf.pop(c), status,
                                           layers=layers if add_layers else None)
                        if add_layers:
                            writer.layer_chunk_done(layers, c)
                        del need[c]
                stats.write_s += time.perf_counter() - t2
                done += len(b.rows)
                indexed += k
                if bar is not None:
                    bar.update(len(b.rows))
                elif callable(progress):
                    progress(done, total)
        finally:
            if bar is not None:
                bar.close()
            del it
            stats.engine, stats.notes = fwd.engine_name, list(fwd.notes)
            stats.export_s = fwd.export_seconds
    finally:
        module.to("cpu")
    stats.images = indexed
    stats.seconds = time.perf_counter() - t_start
    return indexed, stats.seconds


def extract_image(img, model: LoadedModel, layer: str, transform: Transform | None = None,
                  device: str = "cpu") -> np.ndarray:
    """Feature map (H, W, C) float32 of one PIL image at ``layer`` (the eager forward)."""
    transform = transform or model.transform
    x = transform(img)[None].to(device)
    module = model.module.to(device)
    try:
        with FeatureExtractor(module, [layer]) as fx:
            return fx(x)[layer][0]
    finally:
        module.to("cpu")
