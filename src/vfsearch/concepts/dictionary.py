"""Dictionary concepts: directions in a layer's feature space learned from every cached cell,
streamed over the cache in blocks (memory bounded by the block, not the cache).

1. One pass draws a uniform sample of the valid cells (at most ``sample`` cells and
   ``sample_bytes`` of float32), seeded with k-means++ and clustered in memory.
2. ``passes`` streamed Lloyd steps over every cell (k-means), or online NMF steps (non-negative
   layers, ``algorithm="nmf"``), refine the directions with all the data.
3. A last pass assigns every cell to its nearest direction (cosine), counts the cells of each
   concept (``size``) and of each image, and keeps each concept's best patches — at most
   ``per_image`` cells of one image — which are then re-scored from the exact (refine) copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import BadParameter
from .cluster import Accumulator, assign, kmeans, nmf_codes, nmf_update, unit
from .store import ConceptSet

__all__ = ["ALGORITHMS", "discover_dictionary", "iter_cells"]

ALGORITHMS = ("kmeans", "nmf")

#: float32 bytes of one streamed block of features
BLOCK_BYTES = 64 << 20


def block_rows(cache, layer: str, block_bytes: int = BLOCK_BYTES) -> int:
    h, w = cache.grid(layer)
    per_row = h * w * cache.layer_info(layer)["channels"] * 4
    c = cache.chunk_len()
    return max(c, (block_bytes // per_row) // c * c)


def iter_cells(cache, layer: str, rows: int | None = None):
    """Stream a layer as float32 cells: yields (first row, features (n, H, W, C), valid (n,))
    (the 8-bit features dequantised; rows not indexed have valid False)."""
    valid = cache.valid
    for d in cache.iter_chunks(layer, rows or block_rows(cache, layer)):
        x = d.features.astype(np.float32)
        if d.scale is not None:
            x *= d.scale[..., None]
        yield d.start, x, valid[d.start:d.start + d.n]


def _rank_in_groups(*keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (the arrays are sorted by them)."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.zeros(n, bool)
    start[0] = True
    for k in keys:
        start[1:] |= k[1:] != k[:-1]
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def top_per_concept(concept, image, cell, score, per_image: int, limit: int):
    """Indices of each concept's best ``limit`` entries with at most ``per_image`` from one
    image, ordered by concept then score (best first)."""
    o = np.lexsort((-score, image, concept))
    r = _rank_in_groups(concept[o], image[o])
    o = o[r < per_image]
    o2 = np.lexsort((-score[o], concept[o]))
    o = o[o2]
    r = _rank_in_groups(concept[o])
    return o[r < limit]


class _Patches:
    """Running pool of each concept's best cells over the blocks."""

    def __init__(self, per_image: int, limit: int):
        self.per_image, self.limit = per_image, limit
        self.pool = {k: np.zeros(0, dt) for k, dt in (("k", np.int64), ("img", np.int64),
                                                      ("cell", np.int64), ("score", np.float32))}

    def add(self, k, img, cell, score) -> None:
        ok = k >= 0
        new = {"k": k[ok], "img": img[ok], "cell": cell[ok], "score": score[ok]}
        keep = top_per_concept(new["k"], new["img"], new["cell"], new["score"], self.per_image,
                               self.limit)
        both = {n: np.concatenate([self.pool[n], new[n][keep]]) for n in new}
        keep = top_per_concept(both["k"], both["img"], both["cell"], both["score"], self.per_image,
                               self.limit)
        self.pool = {n: v[keep] for n, v in both.items()}


def _sample(cache, layer, rows, target: int, rng) -> tuple[np.ndarray, bool]:
    """A uniform sample of about ``target`` valid, non-zero cells (one streamed pass), and
    whether it holds every such cell."""
    h, w = cache.grid(layer)
    total = max(1, int(cache.valid.sum()) * h * w)
    p = min(1.0, target / total)
    parts = []
    for _s, x, ok in iter_cells(cache, layer, rows):
        cells = x[ok].reshape(-1, x.shape[-1])
        if p < 1.0:
            cells = cells[rng.random(len(cells)) < p]
        parts.append(cells[np.einsum("mc,mc->m", cells, cells) > 0])
    if not parts:
        return np.zeros((0, cache.layer_info(layer)["channels"]), np.float32), True
    return np.concatenate(parts), p >= 1.0


def discover_dictionary(cache, layer: str | None = None, *, n_concepts: int = 32,
                        algorithm: str = "kmeans", passes: int = 2, sample: int = 200_000,
                        sample_bytes: int = 256 << 20, per_image: int = 2, n_patches: int = 32,
                        rows: int | None = None, seed: int = 0,
                        log: Callable[[str], None] | None = None) -> ConceptSet:
    """Learn ``n_concepts`` directions from every valid cell of ``layer`` (see the module)."""
    t0 = time.perf_counter()
    layer = layer or cache.default_layer
    info = cache.layer_info(layer)
    if algorithm not in ALGORITHMS:
        raise BadParameter(f"unknown dictionary algorithm {algorithm!r}; use "
                           f"{' or '.join(ALGORITHMS)}", param="algorithm")
    if algorithm == "nmf" and not info.get("nonnegative"):
        raise BadParameter(f"NMF needs a non-negative layer; {layer!r} is signed (use kmeans)",
                           param="algorithm")
    if n_concepts < 1 or per_image < 1 or n_patches < 1:
        raise BadParameter("n_concepts, per_image and n_patches must be at least 1",
                           param="n_concepts")
    if not cache.valid.any():
        raise BadParameter(f"{cache.path} has no indexed images", param="cache")
    rows = rows or block_rows(cache, layer)
    rng = np.random.default_rng(seed)
    H, W = cache.grid(layer)
    C = int(info["channels"])
    target = int(min(sample, max(1000, sample_bytes // (4 * C))))
    x, sampled_all = _sample(cache, layer, rows, target, rng)
    if len(x) == 0:
        raise BadParameter(f"every cell of {layer!r} is zero", param="layer")
    t_sample = time.perf_counter() - t0
    centres, _, obj = kmeans(x, n_concepts, seed=seed)
    history = [{"step": "sample", "cells": int(len(x)), "objective_per_cell": obj / len(x)}]
    if log:
        log(f"  {layer}: k-means on a sample of {len(x)} cells ({time.perf_counter() - t0:.1f} s)")
    del x
    n_passes = 0 if (sampled_all and algorithm == "kmeans") else max(0, int(passes))
    if algorithm == "nmf":
        h = np.maximum(centres, 0)
        for p in range(max(1, n_passes)):
            a = np.zeros((len(h), len(h)))
            b = np.zeros((len(h), C))
            for _s, xb, ok in iter_cells(cache, layer, rows):
                cells = xb[ok].reshape(-1, C)
                wc = nmf_codes(cells, h)
                a += (wc.T @ wc).astype(np.float64)
                b += (wc.T @ cells).astype(np.float64)
                h = nmf_update(h, a, b)
            history.append({"step": f"nmf pass {p + 1}"})
        centres = unit(h)
    else:
        for p in range(n_passes):
            acc = Accumulator(len(centres), C)
            for _s, xb, ok in iter_cells(cache, layer, rows):
                cells = xb[ok].reshape(-1, C)
                norms = np.sqrt(np.einsum("mc,mc->m", cells, cells))
                lab, cos = assign(cells, centres, norms)
                acc.add(cells, lab, cos, norms)
            centres = acc.centres(centres)
            n_cells = max(1, int(acc.counts.sum()))
            history.append({"step": f"pass {p + 1}", "objective_per_cell": acc.objective / n_cells})
            if log:
                log(f"  {layer}: streamed pass {p + 1} ({time.perf_counter() - t0:.1f} s)")
    cs = _finish(cache, layer, centres, rows, per_image, n_patches)
    cs.attrs.update({
        "algorithm": algorithm, "history": history,
        "params": {"n_concepts": n_concepts, "passes": n_passes, "sample": target,
                   "per_image": per_image, "n_patches": n_patches, "seed": seed},
        "seconds": round(time.perf_counter() - t0, 3), "seconds_sample": round(t_sample, 3),
    })
    return cs


def _finish(cache, layer: str, centres: np.ndarray, rows: int, per_image: int,
            n_patches: int) -> ConceptSet:
    """The last pass: assignments, sizes, per-image counts and the best patches."""
    H, W = cache.grid(layer)
    C = centres.shape[1]
    K = len(centres)
    n = len(cache)
    counts = np.zeros((n, K), np.uint16)
    sizes = np.zeros(K, np.int64)
    objective = 0.0
    pool = _Patches(per_image, n_patches * 2)  # twice: re-scored exactly, then cut
    for s, xb, ok in iter_cells(cache, layer, rows):
        m = len(xb)
        cells = xb.reshape(-1, C)
        norms = np.sqrt(np.einsum("mc,mc->m", cells, cells))
        lab, cos = assign(cells, centres, norms)
        lab[~np.repeat(ok, H * W)] = -1
        img = np.repeat(np.arange(s, s + m), H * W)
        good = lab >= 0
        objective += float(np.dot(cos[good].astype(np.float64), norms[good]))
        per = np.bincount((img[good] - s) * K + lab[good], minlength=m * K).reshape(m, K)
        counts[s:s + m] = per
        sizes += per.sum(axis=0)
        pool.add(lab, img, np.tile(np.arange(H * W), m), cos)
    k, img, cell = pool.pool["k"], pool.pool["img"], pool.pool["cell"]
    score = _exact_cosines(cache, layer, centres, k, img, cell)
    keep = top_per_concept(k, img, cell, score, per_image, n_patches)
    k, img, cell, score = k[keep], img[keep], cell[keep], score[keep]
    r, c = np.divmod(cell, W)
    cells4 = np.stack([r, c, np.ones_like(r), np.ones_like(c)], axis=1).astype(np.int32)
    from . import patch_boxes

    return ConceptSet(
        layer=layer, method="dictionary", directions=centres.astype(np.float32), sizes=sizes,
        offsets=np.searchsorted(k, np.arange(K + 1)).astype(np.int64), patch_image=img,
        patch_cells=cells4, patch_box=patch_boxes(cache, layer, img, cells4),
        patch_score=score.astype(np.float32),
        attrs={"grid": [H, W], "n_images": int(cache.valid.sum()), "n_cells": int(sizes.sum()),
               "objective_per_cell": objective / max(1, int(sizes.sum())),
               "fingerprint": cache.fingerprint()},
        extra={"image_counts": counts})


def _exact_cosines(cache, layer, centres, k, img, cell, batch: int = 64) -> np.ndarray:
    """Cosine of each (image, cell) with its concept's direction, from the exact features."""
    out = np.zeros(len(k), np.float32)
    uniq = np.unique(img)
    H, W = cache.grid(layer)
    for s in range(0, len(uniq), batch):
        ids = uniq[s:s + batch]
        f = cache.rows_features(layer, ids).reshape(len(ids), H * W, -1)
        sel = np.flatnonzero(np.isin(img, ids))
        pos = np.searchsorted(ids, img[sel])
        v = f[pos, cell[sel]].astype(np.float64)
        d = np.einsum("mc,mc->m", v, centres[k[sel]].astype(np.float64))
        nv = np.linalg.norm(v, axis=1)
        out[sel] = np.where(nv > 0, d / np.where(nv > 0, nv, 1), 0)
    return out
