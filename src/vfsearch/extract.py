"""Feature extraction: hooks on a model, batched forward, decoding overlapped with compute, and
:func:`run_rows`, which pushes rows of a cache through them chunk by chunk (what to index is
decided by :mod:`vfsearch.indexing`)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cache import CacheWriter, RowRecord
from .errors import (
    BadImage,
    VfsError,
)
from .images import DEFAULT_MAX_PIXELS, load_image, make_thumbnail
from .models import LoadedModel
from .transforms import Transform

__all__ = ["FeatureExtractor", "extract_image", "prepare_image", "run_rows"]


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


def run_rows(writer: CacheWriter, lm: LoadedModel, transform: Transform, layers: list[str],
             pending, status: np.ndarray, paths: list[str], img_root: Path, *, batch_size: int,
             workers: int | None, device: str, thumb_size: int, max_pixels: int,
             progress, max_batches: int | None = None, add_layers: bool = False) -> tuple[int, float]:
    """Decode, run the model on and write rows ``pending`` of the cache, chunk by chunk (each
    chunk is written when its last row is done; its status last). With ``add_layers``, the rows
    are already indexed and only ``layers`` (new ones) are written. Returns (images indexed,
    seconds)."""
    chunk = writer.chunk
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
    total = sum(len(b) for b in batches)
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True, file=sys.stderr)
    done = indexed = 0
    buf: dict[int, dict[int, RowRecord]] = {}
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
                    rec = RowRecord(d.size, d.stat, d.error, d.thumb)
                    if d.x is not None:
                        rec.features = {name: feats[name][k] for name in layers}
                        k += 1
                    buf.setdefault(c, {})[d.row] = rec
                    need[c].discard(d.row)
                    if not need[c]:
                        writer.write_chunk(c, buf.pop(c), status,
                                           layers=layers if add_layers else None)
                        if add_layers:
                            writer.layer_chunk_done(layers, c)
                        del need[c]
                done += len(decoded)
                indexed += len(good)
                if bar is not None:
                    bar.update(len(decoded))
                elif callable(progress):
                    progress(done, total)
    finally:
        if bar is not None:
            bar.close()
        module.to("cpu")
    return indexed, time.perf_counter() - t_start


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
