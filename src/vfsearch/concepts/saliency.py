"""Saliency-based attribute discovery (Plummer et al., §4 of its supplement), on the cached
features.

For each of ``n_queries`` query images:

1. its ``k`` nearest neighbours (``search="global"``: pooled-feature cosine; ``"whole"``: the
   paper's rigid whole-image region query);
2. a saliency map over the query for each neighbour — by default the exact decomposition of
   the score into per-cell shares (no forward pass, milliseconds: the pooled-cosine shares of
   :func:`vfsearch.engine.global_search.cell_shares`, or the region-cosine shares of
   :func:`vfsearch.explain.cell_shares`), of the score *minus an average image's score*
   (``baseline``: the cells that make this neighbour more similar than a typical image, rather
   than the background every image matches); ``saliency="rise"`` runs fixed-reference RISE
   through the model instead (slow: a RISE run per neighbour over the query, and one over each
   kept neighbour);
3. the neighbours whose query-side peak falls in the most common location (the peaks binned on
   a grid of at most 7 × 7, as the seed's "unit square in a 7 × 7 grid") are kept, the ``keep``
   most similar of them;
4. a crop of ``crop`` × ``crop`` cells around each kept neighbour's own saliency peak;
5. each crop embedded as the mean of its cached (exact) cells — a vector in the layer's
   feature space, so a cluster's centre is a direction the search can query;
6. all crops of all queries clustered (spherical k-means): each cluster is an attribute; an
   image whose crops fall in several clusters carries several attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import BadParameter
from .cluster import kmeans, unit
from .dictionary import top_per_concept
from .store import ConceptSet

__all__ = ["SALIENCY", "SEARCHES", "discover_saliency", "peak_bins", "saliency_maps"]

SEARCHES = ("global", "whole")
SALIENCY = ("exact", "rise")
#: the peaks are binned on a grid of at most this many cells per side (Plummer et al.: 7 × 7)
PEAK_GRID = 7


def peak_bins(maps: np.ndarray, bins: int = PEAK_GRID) -> np.ndarray:
    """Bin index of each map's peak cell on a grid of at most ``bins`` × ``bins``."""
    m, H, W = maps.shape
    flat = maps.reshape(m, -1).argmax(axis=1)
    r, c = np.divmod(flat, W)
    bh, bw = min(bins, H), min(bins, W)
    return (r * bh // H) * bw + (c * bw // W)


def _pool_to_grid(sal: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """An input-resolution saliency map (S, S) averaged over the cells of ``grid``."""
    from PIL import Image

    H, W = grid
    return np.asarray(Image.fromarray(np.asarray(sal, np.float32), mode="F").resize(
        (W, H), Image.Resampling.BOX), np.float64)


def saliency_maps(cache, layer: str, qid: int, qfeat: np.ndarray, rids: Sequence[int],
                  rfeat: np.ndarray, *, search: str = "global", saliency: str = "exact",
                  baseline: np.ndarray | None = None, rise: dict | None = None,
                  model=None, query_side: bool = True,
                  result_side: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(query-side maps (k, H, W), neighbour-side maps (k, H, W)) of query ``qid`` against each
    neighbour: how much each cell of one image contributes to its similarity with the other.
    With RISE, where every map is a run of the model, ``query_side=False`` skips the
    query-side maps and ``result_side`` (indices into ``rids``) limits the neighbour-side maps
    to those neighbours (the others stay zero).

    ``exact``: the score's exact per-cell shares. With a ``baseline`` (what an average image
    contributes: the mean unit pooled vector for ``global``, the mean normalised feature map
    for ``whole``), the shares are those of the score minus the average image's score — the
    cells that make this neighbour *more* similar than a typical image, instead of the cells
    every image matches (backgrounds)."""
    k = len(rids)
    H, W = qfeat.shape[:2]
    if saliency == "rise":
        from ..engine.query import query_from_features
        from ..explain import RISEExplainer

        params = {"mode": "fixed", "n_masks": 64, **(rise or {})}
        ex = RISEExplainer(cache, model, **params)
        qq = query_from_features(cache, qfeat, cache.image_size(qid), layer, source_id=qid)
        qmaps, rmaps = np.zeros((k, H, W)), np.zeros((k, H, W))
        for j, r in enumerate(rids):
            if query_side:  # the query perturbed, the neighbour fixed
                rq = query_from_features(cache, rfeat[j], cache.image_size(int(r)), layer,
                                         source_id=int(r))
                qmaps[j] = _pool_to_grid(ex.explain(rq, qid).saliency, (H, W))
        for j in range(k) if result_side is None else result_side:  # the neighbour perturbed
            rmaps[int(j)] = _pool_to_grid(ex.explain(qq, int(rids[int(j)])).saliency, (H, W))
        return qmaps, rmaps
    q64 = qfeat.astype(np.float64)
    r64 = rfeat.astype(np.float64)
    if search == "global":
        # the pooled cosine <p_q, p_r> / (|p_q| |p_r|) is a sum over the cells of either image:
        # cell i of q contributes <x_i, u_r> / (HW |p_q|), u = unit pooled vector (the shares of
        # vfsearch.engine.global_search.cell_shares)
        pq = q64.mean(axis=(0, 1))
        pr = r64.mean(axis=(1, 2))
        uq = pq / max(np.linalg.norm(pq), 1e-30)
        ur = pr / np.maximum(np.linalg.norm(pr, axis=1, keepdims=True), 1e-30)
        b = np.zeros_like(uq) if baseline is None else np.asarray(baseline, np.float64)
        qmaps = np.einsum("hwc,kc->khw", q64, ur - b) / (H * W * max(np.linalg.norm(pq), 1e-30))
        rmaps = np.einsum("khwc,c->khw", r64, uq - b) / (
            H * W * np.maximum(np.linalg.norm(pr, axis=1), 1e-30))[:, None, None]
        return qmaps, rmaps
    # whole: the rigid all-ones query; cell (i, j) is matched with cell (i, j)
    qn = np.sqrt((q64 ** 2).sum())
    rn = np.sqrt((r64 ** 2).sum(axis=(1, 2, 3)))
    rnorm = r64 / np.maximum(rn, 1e-30)[:, None, None, None]
    if baseline is not None:
        rnorm = rnorm - np.asarray(baseline, np.float64)[None]
    qmaps = np.einsum("hwc,khwc->khw", q64 / max(qn, 1e-30), rnorm)
    qunit = q64 / max(qn, 1e-30)
    if baseline is not None:
        qunit = qunit - np.asarray(baseline, np.float64)
    rmaps = np.einsum("hwc,khwc->khw", qunit, r64 / np.maximum(rn, 1e-30)[:, None, None, None])
    return qmaps, rmaps


def dataset_baseline(cache, layer: str, search: str, rows, n: int = 2000,
                     seed: int = 0) -> np.ndarray:
    """What an average image contributes (from up to ``n`` random images): the mean unit
    pooled vector (``global``) or the mean whole-map-normalised feature map (``whole``)."""
    valid = np.flatnonzero(cache.valid)
    ids = np.sort(np.random.default_rng(seed).choice(valid, min(n, len(valid)), replace=False))
    if search == "global":
        p = np.asarray(cache.pooled(layer, ids), np.float64)
        u = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-30)
        return u.mean(axis=0)
    acc = None
    for s in range(0, len(ids), 256):
        f = rows(ids[s:s + 256]).astype(np.float64)
        f /= np.maximum(np.sqrt((f ** 2).sum(axis=(1, 2, 3))), 1e-30)[:, None, None, None]
        acc = f.sum(0) if acc is None else acc + f.sum(0)
    return acc / len(ids)


def _row_reader(cache, layer: str):
    """Float32 feature maps of some rows: dequantised from RAM when the layer fits in memory
    (the neighbours of many queries are scattered rows; reading each from the compressed refine
    copy costs a chunk decompression per row), else as exact as the cache allows."""
    if cache.dtype == "int8" and cache.fits_in_memory(layer):
        data = cache.load(layer)
        return lambda ids: data.dequantised(np.asarray(ids, np.int64))
    return lambda ids: cache.rows_features(layer, ids)


def _windows(rmaps: np.ndarray, crop: int) -> np.ndarray:
    """(row0, col0) of a crop × crop window centred on each map's peak, inside the grid."""
    m, H, W = rmaps.shape
    r, c = np.divmod(rmaps.reshape(m, -1).argmax(axis=1), W)
    r0 = np.clip(r - (crop - 1) // 2, 0, H - crop)
    c0 = np.clip(c - (crop - 1) // 2, 0, W - crop)
    return np.stack([r0, c0], axis=1)


def discover_saliency(cache, layer: str | None = None, *, n_concepts: int = 32,
                      n_queries: int = 200, k: int = 20, keep: int = 8, crop: int = 3,
                      search: str = "global", saliency: str = "exact", baseline: bool = True,
                      rise: dict | None = None,
                      queries: Sequence[int] | None = None, per_image: int = 2,
                      n_patches: int = 32, seed: int = 0, model=None,
                      log: Callable[[str], None] | None = None) -> ConceptSet:
    """Discover attributes from the saliency of nearest-neighbour matches (see the module)."""
    from ..engine import make_query, search_many

    t0 = time.perf_counter()
    layer = layer or cache.default_layer
    cache.layer_info(layer)
    if search not in SEARCHES:
        raise BadParameter(f"search must be {' or '.join(SEARCHES)}", param="search")
    if saliency not in SALIENCY:
        raise BadParameter(f"saliency must be {' or '.join(SALIENCY)}", param="saliency")
    if min(n_concepts, n_queries, k, keep, crop, per_image, n_patches) < 1:
        raise BadParameter("counts must be at least 1", param="n_concepts")
    H, W = cache.grid(layer)
    crop = min(crop, H, W)
    valid = np.flatnonzero(cache.valid)
    if len(valid) < 2:
        raise BadParameter(f"{cache.path} needs at least two indexed images", param="cache")
    rng = np.random.default_rng(seed)
    if queries is None:
        qids = np.sort(rng.choice(valid, size=min(n_queries, len(valid)), replace=False))
    else:
        qids = np.array([cache.check_id(int(i)) for i in queries], np.int64)
    k = min(k, len(valid) - 1)
    mode = {"global": {"mode": "global"}, "whole": {"whole": True}}[search]
    qs = [make_query(cache, int(i), layer=layer, **mode) for i in qids]
    results = search_many(cache, qs, k=k)
    t_knn = time.perf_counter() - t0
    rows = _row_reader(cache, layer)
    base = dataset_baseline(cache, layer, search, rows, seed=seed) if baseline else None
    crops: dict[str, list] = {n: [] for n in ("image", "r0", "c0", "query", "score", "peak")}
    emb: list[np.ndarray] = []
    kept_per_query = []
    for qi, q, res in zip(qids, qs, results, strict=True):
        rids = res.ids
        if not len(rids):
            kept_per_query.append(0)
            continue
        rfeat = rows(rids)
        kw = dict(search=search, saliency=saliency, baseline=base, rise=rise, model=model)
        lazy = saliency == "rise"  # model runs: the neighbour side only for the kept ones
        qmaps, rmaps = saliency_maps(cache, layer, int(qi), q.features, rids, rfeat,
                                     result_side=() if lazy else None, **kw)
        bins = peak_bins(qmaps)
        modal = np.bincount(bins).argmax()
        sel = np.flatnonzero(bins == modal)[:keep]  # results are best first
        if lazy:
            _, rmaps = saliency_maps(cache, layer, int(qi), q.features, rids, rfeat,
                                     query_side=False, result_side=sel, **kw)
        kept_per_query.append(len(sel))
        win = _windows(rmaps[sel], crop)
        for j, (r0, c0) in zip(sel, win, strict=True):
            crops["image"].append(int(rids[j]))
            crops["r0"].append(int(r0))
            crops["c0"].append(int(c0))
            crops["query"].append(int(qi))
            crops["score"].append(float(res[int(j)].score))
            crops["peak"].append(float(rmaps[j].max()))
            emb.append(rfeat[j, r0:r0 + crop, c0:c0 + crop].reshape(-1, rfeat.shape[-1])
                       .mean(axis=0))
    t_sal = time.perf_counter() - t0 - t_knn
    if not emb:
        raise BadParameter("no salient crops were found", param="n_queries")
    arr = {n: np.asarray(v) for n, v in crops.items()}
    E = np.stack(emb).astype(np.float32)
    # one crop per (image, window): a window several queries agree on is one patch
    key = (arr["image"] * H + arr["r0"]) * W + arr["c0"]
    _, first, votes = np.unique(key, return_index=True, return_counts=True)
    u = np.sort(first)
    votes = votes[np.argsort(first)]
    if log:
        log(f"  {layer}: {len(qids)} queries → {len(E)} salient crops ({len(u)} distinct) in "
            f"{time.perf_counter() - t0:.1f} s")
    centres, lab, _ = kmeans(E[u], n_concepts, seed=seed)
    K = len(centres)
    cos = np.einsum("mc,mc->m", unit(E[u]), centres[np.maximum(lab, 0)])
    img = arr["image"][u]
    cells4 = np.stack([arr["r0"][u], arr["c0"][u], np.full(len(u), crop), np.full(len(u), crop)],
                      axis=1).astype(np.int32)
    keep_idx = top_per_concept(lab, img, np.arange(len(u)), cos, per_image, n_patches)
    keep_idx = keep_idx[lab[keep_idx] >= 0]
    sizes = np.zeros(K, np.int64)
    for c in range(K):
        cells = set()
        for j in np.flatnonzero(lab == c):
            r0, c0 = cells4[j, :2]
            cells.update((int(img[j]), r, cc) for r in range(r0, r0 + crop)
                         for cc in range(c0, c0 + crop))
        sizes[c] = len(cells)
    from . import patch_boxes

    pk = lab[keep_idx]
    cs = ConceptSet(
        layer=layer, method="saliency", directions=centres.astype(np.float32), sizes=sizes,
        offsets=np.searchsorted(pk, np.arange(K + 1)).astype(np.int64),
        patch_image=img[keep_idx], patch_cells=cells4[keep_idx],
        patch_box=patch_boxes(cache, layer, img[keep_idx], cells4[keep_idx]),
        patch_score=cos[keep_idx].astype(np.float32),
        attrs={"grid": [H, W], "n_images": int(len(np.unique(img))), "n_cells": int(sizes.sum()),
               "fingerprint": cache.fingerprint(),
               "params": {"n_concepts": n_concepts, "n_queries": int(len(qids)), "k": k,
                          "keep": keep, "crop": crop, "search": search, "saliency": saliency,
                          "baseline": bool(baseline),
                          "per_image": per_image, "n_patches": n_patches, "seed": seed,
                          **({"rise": rise} if rise else {})},
               "algorithm": "kmeans", "crops": int(len(E)), "distinct_crops": int(len(u)),
               "kept_per_query": float(np.mean(kept_per_query)),
               "seconds": round(time.perf_counter() - t0, 3), "seconds_knn": round(t_knn, 3),
               "seconds_saliency": round(t_sal, 3)},
        extra={"crop_image": img, "crop_cells": cells4, "crop_concept": lab.astype(np.int32),
               "crop_query": arr["query"][u], "crop_votes": votes.astype(np.int32),
               "crop_score": arr["score"][u].astype(np.float32), "query_image": qids})
    return cs
