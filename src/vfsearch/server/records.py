"""The JSON records the server sends for images, queries and matches, and the score curve.

Geometry comes from :mod:`vfsearch.geometry` (``Geometry.to_dict()``, the per-match
``carry``): the browser never recomputes it.
"""

from __future__ import annotations

import numpy as np

from ..engine import Query
from ..geometry import Frame, carry_affine, carry_box, offset_rc
from .entry import CacheEntry

__all__ = ["MAX_CURVE_POINTS", "curve", "geometry_record", "image_record", "match_boxes",
           "match_record", "query_record"]

MAX_CURVE_POINTS = 2000


def image_record(e: CacheEntry, i: int, brief: bool = False) -> dict:
    """Image ``i``: id, path, label, size (+ valid, meta, geometry unless ``brief``)."""
    i = e.check_id(i)
    size = e.size(i)
    rec = {"id": i, "path": e.path(i), "label": e.label(i), "size": list(size)}
    if brief:
        return rec
    rec["valid"] = bool(e.cache.valid[i])
    rec["meta"] = meta(e, i)
    rec["geometry"] = geometry_record(e, size)
    return rec


def geometry_record(e: CacheEntry, size, layers=None) -> dict:
    """An image's geometry under ``e``'s transform, with ``cells``: each layer's grid as drawn
    over the image (:meth:`~vfsearch.geometry.Frame.drawn`)."""
    g = e.transform.geometry(*size)
    rec = g.to_dict()
    rec["cells"] = {layer: Frame.of(g, e.cache.grid(layer)).drawn()
                    for layer in (layers or e.cache.layers)}
    return rec


def meta(e: CacheEntry, i: int) -> dict[str, str]:
    return {col: str(e.column(col)[i]) for col in e.columns if col != "label"}


def query_record(q: Query, echo: dict) -> dict:
    """The query as the page draws it: its cells, weights, box and geometry."""
    r0, c0, h, w = q.cell_box
    rec = {
        "image": echo, "layer": q.layer, "grid": list(q.grid), "cell_box": [r0, c0, h, w],
        "weights": np.round(q.weights[r0:r0 + h, c0:c0 + w].astype(np.float64), 4).tolist(),
        "n_cells": q.n_cells, "box": [round(v, 2) for v in q.box],
        "image_size": list(q.image_size),
        "geometry": {**q.geometry.to_dict(), "cells": {q.layer: q.frame.drawn()}},
        "label": q.label, "mode": q.mode, "notes": list(q.notes),
    }
    if "concept" in echo:  # a concept search: the query image is virtual (the model input)
        rec["concept"] = echo["concept"]
    return rec


def match_record(e: CacheEntry, q: Query, i: int, rank: int, score: float, offset, box) -> dict:
    """One match: where it matched (offset, box in its own pixels) and the query's carry."""
    size = e.size(i)
    frame = e.cache.frame(int(i), q.layer)
    r0, c0, _h, _w = q.cell_box
    return {
        "id": int(i), "rank": int(rank), "score": round(float(score), 6),
        "path": e.path(i), "label": e.label(i),
        "offset": [int(offset[0]), int(offset[1])], "box": [round(float(v), 2) for v in box],
        "image_size": list(size),
        "geometry": frame.geometry.to_dict(),
        "carry": carry_affine(q.frame, (r0, c0), frame, (int(offset[0]), int(offset[1]))),
        "meta": meta(e, i),
    }


def match_boxes(e: CacheEntry, q: Query, ids, offsets) -> list[tuple]:
    """((row, col), box in the result image's pixels) for offset indices, as the engine does."""
    r0, c0, _h, w = q.cell_box
    qframe = q.frame
    out = []
    for i, o in zip(ids, offsets, strict=True):
        a, b = offset_rc(o, e.cache.image_grid(int(i), q.layer), w)
        frame = e.cache.frame(int(i), q.layer)
        out.append(((a, b), carry_box(qframe, q.box, (r0, c0), frame, (a, b))))
    return out


def curve(scores: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> dict:
    """The sorted score curve (best first), downsampled to at most ``max_points``."""
    s = scores[np.isfinite(scores)]
    s = -np.sort(-s)
    n = len(s)
    if n <= max_points:
        idx = np.arange(n)
    else:
        idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
    return {"n": int(n), "ranks": idx.tolist(),
            "scores": np.round(s[idx].astype(np.float64), 5).tolist()}
