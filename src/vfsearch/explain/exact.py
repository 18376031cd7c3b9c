"""Explainers that need no forward pass: the exact decomposition of the score into per-cell
and per-channel shares, and occlusion of the cached feature map."""

from __future__ import annotations

import numpy as np

from ..cache import FeatureCache
from ..engine.query import Query
from ..engine.searcher import exact_scores
from ..geometry import offset_rc
from .base import Explainer, Explanation, Param, register

__all__ = ["ExactExplainer", "FeatureOcclusionExplainer", "cell_shares", "pooled_shares",
           "top_patches"]


def cell_shares(q: Query, feats: np.ndarray):
    """Per-cell and per-channel shares of the best-offset score (each sums to the score)."""
    best, off, maps = exact_scores(feats[None], q.weights, q.features)
    ys, xs = np.nonzero(q.weights > 0)
    r0, c0 = ys.min(), xs.min()
    a, b = offset_rc(off[0], feats.shape[:2], int(xs.max() - c0 + 1))  # the result's own grid
    m2 = q.weights[ys, xs].astype(np.float64) ** 2
    qv = q.features[ys, xs].astype(np.float64)
    xv = feats[ys - r0 + a, xs - c0 + b].astype(np.float64)
    qnorm = np.sqrt((m2 * (qv * qv).sum(1)).sum())
    xnorm = np.sqrt((m2 * (xv * xv).sum(1)).sum())
    denom = qnorm * xnorm if qnorm * xnorm > 0 else 1.0
    per = m2[:, None] * qv * xv / denom  # (K, C)
    return float(best[0]), (a, b), ys, xs, per


def pooled_shares(qvec: np.ndarray, feats: np.ndarray, pooled: np.ndarray | None = None,
                  view: np.ndarray | None = None):
    """The exact split of a global score, the cosine of ``pooled`` (the image's stored
    mean-pooled vector; default: the mean of ``feats``) with ``qvec``, over the image's cells
    and channels: (cells (H, W), channels (C,), residual); each sums to the cosine.

    cos = q̂·p/|p| = Σᵢ q̂·(fᵢ + e)/(HW·|p|) with e = p − mean(f): each cell's share is its
    features' dot product with the unit query vector, the cells' common residual ``e`` (zero
    when ``feats`` are the exact features; the 8-bit rounding of a cache without a float copy
    otherwise) spread evenly; ``residual`` = q̂·e/|p|, its part of the score. ``view`` (H, W):
    1 on the image's own cells, 0 on padding (a full-mode grid; the mean is over its cells and
    padding gets no share)."""
    f = np.asarray(feats, np.float64)
    H, W = f.shape[:2]
    view = np.ones((H, W)) if view is None else np.asarray(view, np.float64)
    cnt = max(1.0, float(view.sum()))
    mean = (f * view[..., None]).sum(axis=(0, 1)) / cnt
    p = mean if pooled is None else np.asarray(pooled, np.float64).reshape(-1)
    n = float(np.linalg.norm(p))
    qn = float(np.linalg.norm(np.asarray(qvec, np.float64)))
    if n == 0 or qn == 0:
        return np.zeros((H, W)), np.zeros(f.shape[-1]), 0.0
    qh = np.asarray(qvec, np.float64).reshape(-1) / qn
    e = p - mean
    cells = ((f + e) @ qh) * view / (cnt * n)
    return cells, qh * p / n, float(e @ qh / n)


@register
class ExactExplainer(Explainer):
    """Signed share of each query cell / matched cell / channel in the score (they sum to it).

    For a global query (the cosine of mean-pooled vectors) the score splits over the result's
    cells, over the query's cells and over the channels (:func:`pooled_shares`); each sums to
    the match's global score."""

    name = "exact"
    title = "exact shares"
    params_spec = (
        Param("top_channels", int, 8, "channels listed with their top patches", 0, 64),
        Param("patches", int, 6, "most-activating dataset patches per channel", 0, 32),
    )

    def _channels(self, q, chan: np.ndarray) -> list[dict]:
        top = np.argsort(-chan)[: self.params["top_channels"]]
        return [{"channel": int(c), "share": float(chan[c]),
                 "patches": top_patches(self.cache, q.layer, int(c), self.params["patches"])}
                for c in top]

    def _explain_global(self, q, rid):
        from ..engine.global_search import pooled_cosine

        feats = self._result_features(q, rid)
        rvec = np.asarray(self.cache.pooled(q.layer, [rid])[0], np.float64)
        score = float(pooled_cosine(rvec[None], q.pooled)[0])  # the match's global score
        rview = self.cache.frame(rid, q.layer).valid_cells()
        rmap, chan, resid = pooled_shares(q.pooled, feats, rvec, rview)
        qmap, _, qresid = pooled_shares(rvec, q.features, q.pooled, q.frame.valid_cells())
        H, W = rmap.shape
        return Explanation("exact", rid, score, (0, 0), rmap, qmap, "grid", extra={
            "cell_shares": [{"result_cell": [int(y), int(x)], "share": float(rmap[y, x])}
                            for y in range(H) for x in range(W)],
            "query_cell_shares": [{"query_cell": [int(y), int(x)], "share": float(qmap[y, x])}
                                  for y in range(qmap.shape[0]) for x in range(qmap.shape[1])],
            "channel_share_sum": float(chan.sum()), "top_channels": self._channels(q, chan),
            "global": True, "pooled_residual": resid, "query_pooled_residual": qresid,
        })

    def _explain(self, q, rid, progress):
        if q.mode == "global":
            return self._explain_global(q, rid)
        feats = self._result_features(q, rid)
        score, (a, b), ys, xs, per = cell_shares(q, feats)
        H, W = q.weights.shape
        r0, c0 = ys.min(), xs.min()
        qmap = np.zeros((H, W))
        rmap = np.zeros(feats.shape[:2])  # the result's own grid
        cell = per.sum(1)
        qmap[ys, xs] = cell
        rmap[ys - r0 + a, xs - c0 + b] = cell
        chan = per.sum(0)
        channels = self._channels(q, chan)
        return Explanation("exact", rid, score, (a, b), rmap, qmap, "grid", extra={
            "cell_shares": [{"query_cell": [int(y), int(x)],
                             "result_cell": [int(y - r0 + a), int(x - c0 + b)],
                             "share": float(s)} for y, x, s in zip(ys, xs, cell, strict=True)],
            "channel_share_sum": float(chan.sum()), "top_channels": channels,
        })


def top_patches(cache: FeatureCache, layer: str, channel: int, n: int = 6) -> list[dict]:
    """The dataset cells where ``channel`` is most active (from the cache, no forward pass)."""
    d = cache.load(layer)
    act = d.features[..., channel].astype(np.float32)
    if d.scale is not None:
        act = act * d.scale
    act[~cache.valid] = -np.inf
    flat = act.reshape(-1)
    n = min(n, int(np.isfinite(flat).sum()))
    idx = np.argpartition(-flat, n - 1)[:n] if n < flat.size else np.arange(flat.size)
    idx = idx[np.argsort(-flat[idx])]
    H, W = act.shape[1:]
    out = []
    for j in idx:
        i, rem = divmod(int(j), H * W)
        y, x = divmod(rem, W)
        frame = cache.transform.frame(*cache.image_size(i), (H, W))
        if frame.transposed:  # stored transposed (a portrait of a full-mode cache)
            y, x = x, y
        box = frame.cell_image_box(y, x)
        out.append({"id": i, "cell": [y, x], "activation": float(flat[j]),
                    "box": [round(v, 1) for v in box], "label": str(cache.labels[i])})
    return out


@register
class FeatureOcclusionExplainer(Explainer):
    """Drop in score when one cell of the result's feature map is zeroed (re-scored over all
    offsets, so the match may move; for a global query, the pooled cosine with that cell's
    features taken out of the mean)."""

    name = "feature"
    title = "feature-map occlusion"

    def _explain(self, q, rid, progress):
        feats = self._result_features(q, rid)
        if q.mode == "global":
            from ..engine.global_search import pooled_cosine

            H, W, _ = feats.shape
            p = np.asarray(self.cache.pooled(q.layer, [rid])[0], np.float64)
            base = float(pooled_cosine(p[None], q.pooled)[0])
            occluded = p[None] - feats.reshape(H * W, -1).astype(np.float64) / (H * W)
            sal = (base - pooled_cosine(occluded, q.pooled)).reshape(H, W)
            return Explanation("feature", rid, base, (0, 0), sal, None, "grid",
                               extra={"global": True})
        best, off, maps = exact_scores(feats[None], q.weights, q.features)
        H, W, _ = feats.shape
        occluded = np.repeat(feats[None], H * W, axis=0)
        for k in range(H * W):
            occluded[k, k // W, k % W] = 0
        s, _, _ = exact_scores(occluded, q.weights, q.features)
        sal = (best[0] - s).reshape(H, W)
        return Explanation("feature", rid, float(best[0]),
                           offset_rc(off[0], (H, W), q.cell_box[3]), sal, None,
                           "grid")
