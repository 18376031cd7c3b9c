"""The cell-interleaved copy of an 8-bit layer: every image already transposed the way the
offsets path reads it, so that a scan skips its per-image transposes.

The offsets path (16 / 8 consecutive offsets per vector) dots 4-byte channel groups of 16 cells
at a time, so it transposes each image into group-major order before its dots. Held once for a
loaded layer (:meth:`~vfsearch.cache.LayerData.interleave`), the transposed copy makes every
later scan of that layer cheaper by the transposes: what repeated queries (the web app, the
widget, batches) gain for the price of a second copy of the layer in RAM (the features'
bytes, rounded up to 4 channels and 16 cells per image). Layout (see ``vfs_scan``'s ``inter``
in ``_kernel.c``): row r, word ``g * HWs + p`` = channels 4g .. 4g + 3 of cell p, zero past
the channels and cells, signed features stored as x + 128; rows 64-byte aligned, 64 zero
words after the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interleaved", "interleave", "interleaved_nbytes"]

TAIL_WORDS = 64
ALIGN = 64


def _dims(shape) -> tuple[int, int, int]:
    """(G4, HWs, words per image) for features of ``shape`` (n, H, W, C)."""
    _, H, W, C = shape
    g4, hws = (C + 3) // 4, (H * W + 15) // 16 * 16
    return g4, hws, g4 * hws


def interleaved_nbytes(shape) -> int:
    """Bytes the interleaved copy of features of ``shape`` (n, H, W, C) takes."""
    return 4 * (int(shape[0]) * _dims(shape)[2] + TAIL_WORDS) + ALIGN


@dataclass(frozen=True, eq=False)
class Interleaved:
    """The interleaved copy of 8-bit features of ``shape`` / ``dtype``: ``words`` (n, G4 * HWs)
    uint32, C-contiguous, 64-byte aligned, inside a buffer with a zero tail."""

    words: np.ndarray
    shape: tuple[int, int, int, int]
    dtype: np.dtype

    def matches(self, feats: np.ndarray) -> bool:
        return tuple(feats.shape) == self.shape and feats.dtype == self.dtype

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)


def interleave(feats: np.ndarray, *, backend: str = "auto", threads: int | None = None,
               block: int = 1024) -> Interleaved:
    """The interleaved copy of 8-bit features (n, H, W, C) uint8 | int8: by the compiled kernel
    (the offsets path's own transposes on AVX-512), or by numpy ``block`` images at a time with
    the "numpy" backend (the same bytes)."""
    from . import build, resolve_backend
    from .dispatch import default_threads, interleave_c

    feats = np.asarray(feats)
    if feats.ndim != 4 or feats.dtype not in (np.uint8, np.int8):
        raise ValueError(f"interleave: 8-bit (n, H, W, C) features, got {feats.dtype} "
                         f"{feats.shape}")
    n, H, W, C = feats.shape
    g4, hws, per = _dims(feats.shape)
    raw = np.empty(interleaved_nbytes(feats.shape), np.uint8)
    a = (-raw.ctypes.data) % ALIGN
    words = raw[a:a + 4 * (n * per + TAIL_WORDS)].view(np.uint32)
    words[n * per:] = 0
    words = words[:n * per].reshape(n, per)
    b = resolve_backend(backend)
    if b != "numpy":
        feats = np.ascontiguousarray(feats)
        interleave_c(build.load().lib, b, feats, words,
                     threads=default_threads() if threads is None else max(1, int(threads)))
        return Interleaved(words, (n, H, W, C), feats.dtype)
    words[:] = 0
    cells = words.reshape(n, g4, hws)
    pad = np.zeros((min(block, max(n, 1)), H * W, 4 * g4), np.uint8)
    for s in range(0, n, block):
        e = min(n, s + block)
        x = feats[s:e].reshape(e - s, H * W, C).view(np.uint8)
        p = pad[:e - s]
        if feats.dtype == np.int8:
            np.bitwise_xor(x, 0x80, out=p[..., :C])  # x + 128 as uint8
        else:
            p[..., :C] = x
        cells[s:e, :, :H * W] = p.view(np.uint32).transpose(0, 2, 1)
    return Interleaved(words, (n, H, W, C), feats.dtype)
