"""Insertion and deletion AUCs: how well a saliency map ranks the pixels that matter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["insertion_deletion"]


def insertion_deletion(saliency: np.ndarray, x: np.ndarray, xb: np.ndarray,
                       score_fn: Callable[[np.ndarray], np.ndarray],
                       steps: int = 16) -> tuple[float, float]:
    """Insertion and deletion AUC of a saliency map (normalised to [0, 1] on the x axis).

    The map is averaged onto ``steps``×``steps``-ish blocks; deletion replaces the most salient
    blocks of ``x`` with ``xb`` (blurred) first, insertion restores them into ``xb`` first.
    """
    S = x.shape[-1]
    sal = np.asarray(saliency, np.float64)
    if sal.shape != (S, S):
        sal = np.asarray(Image.fromarray(sal.astype(np.float32)).resize(
            (S, S), Image.Resampling.NEAREST))
    g = 8 if S % 8 == 0 else 7
    bs = S // g
    blocks = sal[: g * bs, : g * bs].reshape(g, bs, g, bs).mean(axis=(1, 3)).reshape(-1)
    order = np.argsort(-blocks, kind="stable")
    fracs = np.linspace(0, 1, steps + 1)
    dels, ins = [], []
    for f in fracs:
        keep = np.zeros(g * g, np.float32)
        keep[order[: int(round(f * g * g))]] = 1
        m = np.kron(keep.reshape(g, g), np.ones((bs, bs), np.float32))
        full = np.ones((S, S), np.float32)
        full[: g * bs, : g * bs] = m
        if g * bs < S:
            full[g * bs:, :] = 0
            full[:, g * bs:] = 0
        dels.append(x * (1 - full) + xb * full)
        ins.append(xb * (1 - full) + x * full)
    sd = score_fn(np.stack(dels))
    si = score_fn(np.stack(ins))
    auc = lambda v: float(np.trapezoid(v, fracs))  # noqa: E731
    return auc(si), auc(sd)
