"""Metrics of the evaluation protocols: bootstrap confidence intervals, label and overlap counts,
precision, box IoU, the §4.4 area bins and the IoU ceilings the feature grid allows.

``match_box`` maps a match at a grid offset back to a box in the result image (what the search
engine reports); the ceilings are computed from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from ..geometry import Frame, Geometry, carry_box

__all__ = [
    "AREA_BINS",
    "area_bin",
    "bootstrap_ci",
    "cell_ceiling",
    "distinct_labels",
    "iou",
    "match_box",
    "overlap_fraction",
    "precision_at_k",
    "same_value_fraction",
    "shift_ceiling",
]

# §4.4 of the paper: query area bins in original pixels (px²)
AREA_BINS: tuple[tuple[str, float, float], ...] = (
    ("<1k", 0.0, 1000.0),
    ("1k-5k", 1000.0, 5000.0),
    ("5k-20k", 5000.0, 20000.0),
    (">20k", 20000.0, math.inf),
)


def bootstrap_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``values`` with a percentile bootstrap confidence interval.

    Resamples the values (queries) with replacement ``n_boot`` times; deterministic for a seed.
    Returns ``{"mean", "lo", "hi", "sem", "n"}`` (NaNs when there are no values).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "sem": math.nan, "n": 0}
    mean = float(v.mean())
    sem = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if n == 1 or n_boot < 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sem": sem, "n": n}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # bound memory for large n
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        means[s:s + m] = v[rng.integers(0, n, (m, n))].mean(axis=1)
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    # the percentile interval always brackets the sample mean for a symmetric statistic, but keep
    # the guarantee exact (rounding, tiny n)
    return {"mean": mean, "lo": float(min(lo, mean)), "hi": float(max(hi, mean)), "sem": sem,
            "n": n}


def distinct_labels(results: Iterable[Sequence[int]], labels) -> np.ndarray:
    """Number of distinct labels among each result list (ids index into ``labels``)."""
    labels = np.asarray(labels, dtype=object)
    return np.array([len({labels[int(i)] for i in ids}) for ids in results], dtype=np.float64)


def overlap_fraction(a: Iterable[Sequence], b: Iterable[Sequence], k: int) -> np.ndarray:
    """``|A ∩ B| / k`` per query for two lists of result keys (ids or paths)."""
    out = [len(set(map(_key, x)) & set(map(_key, y))) / float(k) for x, y in zip(a, b, strict=True)]
    return np.array(out, dtype=np.float64)


def _key(v):
    return int(v) if isinstance(v, (int, np.integer)) else str(v)


def precision_at_k(results: Iterable[Sequence[int]], labels, query_labels: Sequence,
                   k: int | None = None) -> np.ndarray:
    """Fraction of each result list whose label equals the query's label (over ``k``, default the
    list length)."""
    return same_value_fraction(results, labels, query_labels, k)


def same_value_fraction(results: Iterable[Sequence[int]], values, query_values: Sequence,
                        k: int | None = None) -> np.ndarray:
    """Fraction of each result list whose ``values[id]`` equals the query's value."""
    values = np.asarray(values, dtype=object)
    out = []
    for ids, qv in zip(results, query_values, strict=True):
        denom = k if k else max(1, len(ids))
        out.append(sum(values[int(i)] == qv for i in ids) / float(denom))
    return np.array(out, dtype=np.float64)


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _iou_many(boxes: np.ndarray, b) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (b[2] - b[0]) * (b[3] - b[1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(union > 0, inter / union, 0.0)
    return r


def area_bin(area: float) -> str:
    """The §4.4 size bin of a box area in px² (original pixels)."""
    for name, lo, hi in AREA_BINS:
        if lo <= area < hi:
            return name
    return AREA_BINS[-1][0]


def cell_ceiling(box, geometry, grid: tuple[int, int], image_size: tuple[int, int]) -> float:
    """The best IoU with ``box`` that any box aligned to feature-cell boundaries can reach.

    Cells are the layer's grid over the model input, mapped back to original pixels through the
    transform's ``geometry`` (and clipped to the image). 1.0 for a cell-aligned box.
    """
    gh, gw = grid
    frame = Frame.of(_sized(geometry, image_size), grid)
    xe, ye = frame.cell_edges(0), frame.cell_edges(1)
    xi, xj = np.triu_indices(gw + 1, k=1)
    yi, yj = np.triu_indices(gh + 1, k=1)
    x0, x1 = xe[xi], xe[xj]
    y0, y1 = ye[yi], ye[yj]
    boxes = np.stack([
        np.repeat(x0, len(y0)), np.tile(y0, len(x0)), np.repeat(x1, len(y1)), np.tile(y1, len(x1)),
    ], axis=1)
    return float(_iou_many(boxes, box).max())


def _sized(geometry: Geometry, image_size) -> Geometry:
    w, h = image_size
    return geometry if tuple(geometry.image) == (w, h) else geometry.scaled(w, h)


def match_box(query, offset: tuple[int, int], geometry, grid: tuple[int, int],
              image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box a match at grid ``offset`` (row, col) stands for in a result image: the query's
    box moved by whole cells (:func:`vfsearch.geometry.carry_box`, what the engine reports)."""
    r0, c0, _, _ = query.cell_box
    return carry_box(query.frame, query.box, (r0, c0), Frame.of(_sized(geometry, image_size), grid),
                     offset)


def shift_ceiling(query, box, geometry, grid: tuple[int, int],
                  image_size: tuple[int, int]) -> float:
    """The best IoU with ``box`` that the engine's matched box can reach in a result image: the
    maximum over every offset of the query's box moved by whole cells."""
    gh, gw = grid
    _, _, h, w = query.cell_box
    best = 0.0
    for a in range(gh - h + 1):
        for b in range(gw - w + 1):
            best = max(best, iou(match_box(query, (a, b), geometry, grid, image_size), box))
    return best
