"""Why are two regions similar?

* :class:`ExactExplainer` — the region cosine is a sum over cells and over channels: each query
  cell (and its matched cell) and each channel gets its signed share of the score; the shares sum
  to the score. Plus the top-contributing channels with their top-activating dataset patches.
* :class:`FeatureOcclusionExplainer` — occlude one cell of the result's cached feature map at a
  time and re-score (no forward pass; milliseconds).
* :class:`OcclusionExplainer` — sliding-window occlusion of the result image (and, in ``"both"``
  mode, of the query image), scored through the model (SANE-style black-box saliency).
* :class:`RISEExplainer` — randomised input sampling: random low-resolution masks, saliency =
  score-weighted average of the masks.

Every explainer has one signature, ``explain(query, result_id) -> Explanation``; model hooks are
removed in ``finally``. Insertion / deletion AUCs measure any saliency map: deletion blurs the
most salient cells first and tracks the score, insertion restores them first into a blurred image.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from .cache import FeatureCache
from .engine.query import Query
from .engine.searcher import exact_scores
from .errors import BadQuery, VfsError
from .extract import FeatureExtractor
from .images import load_image

__all__ = [
    "Explanation",
    "Explainer",
    "ExactExplainer",
    "FeatureOcclusionExplainer",
    "OcclusionExplainer",
    "RISEExplainer",
    "METHODS",
    "explain",
    "insertion_deletion",
    "render_on_thumbnail",
    "render_overlay",
]


@dataclass
class Explanation:
    method: str
    result_id: int
    score: float  # region score of the query against the (unperturbed) result
    offset: tuple[int, int]
    saliency: np.ndarray  # result image saliency: (H, W) grid for exact/feature, (S, S) input px otherwise
    query_saliency: np.ndarray | None = None
    space: str = "grid"  # "grid" (feature cells) or "input" (model-input pixels)
    insertion_auc: float | None = None
    deletion_auc: float | None = None
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "method": self.method, "result_id": self.result_id, "score": self.score,
            "offset": list(self.offset), "space": self.space, "seconds": round(self.seconds, 4),
            "insertion_auc": self.insertion_auc, "deletion_auc": self.deletion_auc,
            "params": self.params, "saliency": np.round(self.saliency, 6).tolist(),
        }
        if self.query_saliency is not None:
            d["query_saliency"] = np.round(self.query_saliency, 6).tolist()
        d.update({k: v for k, v in self.extra.items() if k != "cell_shares_matrix"})
        return d


class Explainer:
    """Base class: ``explain(query, result_id)`` with the method's parameters set at init."""

    name = "base"
    needs_model = False

    def __init__(self, cache: FeatureCache, model=None, **params):
        self.cache = cache
        self.params = params
        self._model = model

    # -- shared helpers ----------------------------------------------------------------------
    def model(self):
        if self._model is None:
            from .engine.query import _EXTRA_MODELS, _model_for

            self._model = _EXTRA_MODELS.get((self.cache.model, self.cache.weights_hash)) or _model_for(
                self.cache.model, self.cache.meta.get("weights_path"))
            if self._model.weights_hash != self.cache.weights_hash:
                raise VfsError("the installed model weights differ from the cache's")
        return self._model

    def _result_features(self, q: Query, result_id: int) -> np.ndarray:
        return self.cache.features(result_id, q.layer)

    def explain(self, query: Query, result_id: int, progress: Callable[[float], None] | None = None) -> Explanation:
        t0 = time.perf_counter()
        if not self.cache.valid[self.cache._check_id(result_id)]:
            raise BadQuery(f"image {result_id} was not indexed")
        ex = self._explain(query, int(result_id), progress or (lambda f: None))
        ex.seconds = time.perf_counter() - t0
        ex.params = dict(self.params)
        return ex

    def _explain(self, q: Query, rid: int, progress) -> Explanation:  # pragma: no cover
        raise NotImplementedError


# -- exact decomposition -----------------------------------------------------------------------------


def cell_shares(q: Query, feats: np.ndarray):
    """Per-cell and per-channel shares of the best-offset score (each sums to the score)."""
    best, off, maps = exact_scores(feats[None], q.weights, q.features)
    ys, xs = np.nonzero(q.weights > 0)
    r0, c0 = ys.min(), xs.min()
    B = maps.shape[2]
    a, b = divmod(int(off[0]), B)
    m2 = q.weights[ys, xs].astype(np.float64) ** 2
    qv = q.features[ys, xs].astype(np.float64)
    xv = feats[ys - r0 + a, xs - c0 + b].astype(np.float64)
    qnorm = np.sqrt((m2 * (qv * qv).sum(1)).sum())
    xnorm = np.sqrt((m2 * (xv * xv).sum(1)).sum())
    denom = qnorm * xnorm if qnorm * xnorm > 0 else 1.0
    per = m2[:, None] * qv * xv / denom  # (K, C)
    return float(best[0]), (a, b), ys, xs, per


class ExactExplainer(Explainer):
    """Signed share of each query cell / matched cell / channel in the score (they sum to it)."""

    name = "exact"

    def __init__(self, cache, model=None, top_channels: int = 8, patches: int = 6):
        super().__init__(cache, model, top_channels=top_channels, patches=patches)

    def _explain(self, q, rid, progress):
        feats = self._result_features(q, rid)
        score, (a, b), ys, xs, per = cell_shares(q, feats)
        H, W = q.weights.shape
        r0, c0 = ys.min(), xs.min()
        qmap = np.zeros((H, W))
        rmap = np.zeros((H, W))
        cell = per.sum(1)
        qmap[ys, xs] = cell
        rmap[ys - r0 + a, xs - c0 + b] = cell
        chan = per.sum(0)
        top = np.argsort(-chan)[: self.params["top_channels"]]
        channels = [{"channel": int(c), "share": float(chan[c]),
                     "patches": top_patches(self.cache, q.layer, int(c), self.params["patches"])}
                    for c in top]
        return Explanation("exact", rid, score, (a, b), rmap, qmap, "grid", extra={
            "cell_shares": [{"query_cell": [int(y), int(x)], "result_cell": [int(y - r0 + a), int(x - c0 + b)],
                             "share": float(s)} for y, x, s in zip(ys, xs, cell)],
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
        box = cache.transform.frame(*cache.image_size(i), (H, W)).cell_image_box(y, x)
        out.append({"id": i, "cell": [y, x], "activation": float(flat[j]),
                    "box": [round(v, 1) for v in box], "label": str(cache.labels[i])})
    return out


# -- feature-space occlusion (no forward passes) -------------------------------------------------------


class FeatureOcclusionExplainer(Explainer):
    """Drop in score when one cell of the result's feature map is zeroed (re-scored over all
    offsets, so the match may move)."""

    name = "feature"

    def _explain(self, q, rid, progress):
        feats = self._result_features(q, rid)
        best, off, maps = exact_scores(feats[None], q.weights, q.features)
        H, W, _ = feats.shape
        occluded = np.repeat(feats[None], H * W, axis=0)
        for k in range(H * W):
            occluded[k, k // W, k % W] = 0
        s, _, _ = exact_scores(occluded, q.weights, q.features)
        sal = (best[0] - s).reshape(H, W)
        B = maps.shape[2]
        return Explanation("feature", rid, float(best[0]), divmod(int(off[0]), B), sal, None, "grid")


# -- model-running saliency ------------------------------------------------------------------------


class _ModelScorer:
    """Scores batches of perturbed model inputs against a query region (hooks removed after)."""

    def __init__(self, model, layer: str, batch: int = 16):
        self.model, self.layer, self.batch = model, layer, batch

    def features(self, xs: np.ndarray) -> np.ndarray:
        out = []
        with FeatureExtractor(self.model.module, [self.layer]) as fx:
            for s in range(0, len(xs), self.batch):
                out.append(fx(torch.from_numpy(np.ascontiguousarray(xs[s:s + self.batch])))[self.layer])
        return np.concatenate(out)

    def score_results(self, q: Query, xs: np.ndarray) -> np.ndarray:
        return exact_scores(self.features(xs), q.weights, q.features)[0]

    def score_queries(self, q: Query, xs: np.ndarray, ref_feats: np.ndarray) -> np.ndarray:
        """Perturbed query images (same mask) against a fixed result feature map."""
        f = self.features(xs)
        return np.array([exact_scores(ref_feats[None], q.weights, fi)[0][0] for fi in f])


def _input_arrays(img: Image.Image, transform) -> tuple[np.ndarray, np.ndarray]:
    """(normalised input, normalised blurred input), both (3, S, S) float32."""
    crop = transform.resize_crop(img)
    blurred = crop.filter(ImageFilter.GaussianBlur(radius=max(2, transform.size // 20)))
    mean = np.asarray(transform.mean, np.float32)[:, None, None]
    std = np.asarray(transform.std, np.float32)[:, None, None]

    def norm(im):
        return (np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std

    return norm(crop), norm(blurred)


def _image_for(cache: FeatureCache, i: int) -> Image.Image:
    try:
        return load_image(cache.abspath(i))
    except Exception:  # noqa: BLE001 - fall back to the cached thumbnail
        th = load_image(cache.thumbnail(i))
        return th.resize(cache.image_size(i), Image.Resampling.BICUBIC)


class _BlackBox(Explainer):
    needs_model = True

    def __init__(self, cache, model=None, mode: str = "fixed", batch_size: int = 16,
                 auc_steps: int = 16, query_image: Image.Image | None = None, **params):
        if mode not in ("fixed", "both"):
            raise VfsError("mode is 'fixed' (saliency of the result) or 'both' (also of the query)")
        super().__init__(cache, model, mode=mode, batch_size=batch_size, auc_steps=auc_steps, **params)
        self.query_image = query_image

    def _masks(self, S: int, rng) -> np.ndarray:  # (M, S, S) in [0, 1]; 1 = keep
        raise NotImplementedError

    def _saliency(self, masks: np.ndarray, scores: np.ndarray, base: float) -> np.ndarray:
        raise NotImplementedError

    def _run(self, scorer, x, xb, score_fn, progress, lo, hi):
        S = x.shape[-1]
        rng = np.random.default_rng(self.params.get("seed", 0))
        masks = self._masks(S, rng)
        scores = []
        bs = self.params["batch_size"]
        for s in range(0, len(masks), bs):
            mk = masks[s:s + bs, None]
            scores.append(score_fn(x[None] * mk + xb[None] * (1 - mk)))
            progress(lo + (hi - lo) * min(1.0, (s + bs) / len(masks)))
        return self._saliency(masks, np.concatenate(scores), None)

    def _explain(self, q, rid, progress):
        lm = self.model()
        tf = self.cache.transform
        scorer = _ModelScorer(lm, q.layer, self.params["batch_size"])
        rimg = _image_for(self.cache, rid)
        x, xb = _input_arrays(rimg, tf)
        ref = self._result_features(q, rid)
        best, off, maps = exact_scores(ref[None], q.weights, q.features)
        both = self.params["mode"] == "both"
        sal = self._run(scorer, x, xb, lambda b: scorer.score_results(q, b), progress, 0.0,
                        0.5 if both else 0.8)
        qsal = None
        if both:
            qimg = self.query_image
            if qimg is None:
                if q.source_id is None:
                    raise BadQuery("mode 'both' needs the query image (pass query_image=)")
                qimg = _image_for(self.cache, q.source_id)
            qx, qxb = _input_arrays(qimg, tf)
            qsal = self._run(scorer, qx, qxb, lambda b: scorer.score_queries(q, b, ref), progress, 0.5, 0.8)
        ins, dele = insertion_deletion(sal, x, xb, lambda b: scorer.score_results(q, b),
                                       steps=self.params["auc_steps"])
        progress(1.0)
        B = maps.shape[2]
        return Explanation(self.name, rid, float(best[0]), divmod(int(off[0]), B), sal, qsal, "input",
                           insertion_auc=ins, deletion_auc=dele)


class OcclusionExplainer(_BlackBox):
    """Sliding-window occlusion (window and stride in model-input pixels; occluder = blur)."""

    name = "occlusion"

    def __init__(self, cache, model=None, window: int = 56, stride: int = 28, **kw):
        super().__init__(cache, model, window=window, stride=stride, **kw)

    def _masks(self, S, rng):
        w, st = self.params["window"], self.params["stride"]
        pos = list(range(0, max(1, S - w) + 1, st))
        if pos[-1] != S - w and S > w:
            pos.append(S - w)
        masks = np.ones((len(pos) ** 2, S, S), np.float32)
        for k, (y, x) in enumerate((y, x) for y in pos for x in pos):
            masks[k, y:y + w, x:x + w] = 0
        return masks

    def _saliency(self, masks, scores, base):
        occ = 1 - masks
        drop = -scores  # higher when occluding lowers the score (base is a constant offset)
        cover = occ.sum(0)
        sal = np.tensordot(drop, occ, axes=1) / np.maximum(cover, 1)
        return sal - sal.min()


class RISEExplainer(_BlackBox):
    """RISE: ``n_masks`` random ``cells``×``cells`` binary grids (keep probability ``p``),
    bilinearly upsampled with random shifts; saliency = Σ score·mask / (n·p)."""

    name = "rise"

    def __init__(self, cache, model=None, n_masks: int = 256, p: float = 0.5, cells: int = 7,
                 seed: int = 0, **kw):
        super().__init__(cache, model, n_masks=n_masks, p=p, cells=cells, seed=seed, **kw)

    def _masks(self, S, rng):
        n, p, s = self.params["n_masks"], self.params["p"], self.params["cells"]
        cell = int(np.ceil(S / s))
        up = (s + 1) * cell
        grid = (rng.random((n, s, s)) < p).astype(np.float32)
        out = np.empty((n, S, S), np.float32)
        for i in range(n):
            big = np.asarray(Image.fromarray(grid[i]).resize((up, up), Image.Resampling.BILINEAR))
            dx, dy = rng.integers(0, cell, 2)
            out[i] = big[dy:dy + S, dx:dx + S]
        return out

    def _saliency(self, masks, scores, base):
        return np.tensordot(scores, masks, axes=1) / (len(masks) * self.params["p"])


def insertion_deletion(saliency: np.ndarray, x: np.ndarray, xb: np.ndarray,
                       score_fn: Callable[[np.ndarray], np.ndarray], steps: int = 16) -> tuple[float, float]:
    """Insertion and deletion AUC of a saliency map (normalised to [0, 1] on the x axis).

    The map is averaged onto ``steps``×``steps``-ish blocks; deletion replaces the most salient
    blocks of ``x`` with ``xb`` (blurred) first, insertion restores them into ``xb`` first.
    """
    S = x.shape[-1]
    sal = np.asarray(saliency, np.float64)
    if sal.shape != (S, S):
        sal = np.asarray(Image.fromarray(sal.astype(np.float32)).resize((S, S), Image.Resampling.NEAREST))
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


def render_overlay(img: Image.Image, saliency: np.ndarray, geometry, alpha: float = 0.6) -> Image.Image:
    """Draw a saliency map (feature grid or model-input pixels) over the region of ``img`` that
    the model sees: red = raises the score, blue = lowers it."""
    sal = np.asarray(saliency, np.float32)
    x0, y0 = geometry.to_image(0, 0)
    x1, y1 = geometry.to_image(*geometry.input)
    box = tuple(int(round(v)) for v in (x0, y0, x1, y1))
    w, h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    resample = Image.Resampling.NEAREST if sal.shape[0] < 32 else Image.Resampling.BILINEAR
    heat = np.asarray(Image.fromarray(sal).resize((w, h), resample))
    top = float(np.abs(heat).max()) or 1.0
    pos, neg = np.clip(heat / top, 0, 1), np.clip(-heat / top, 0, 1)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 255 * (pos > 0)
    rgba[..., 2] = 255 * (neg > 0)
    rgba[..., 3] = (255 * alpha * np.maximum(pos, neg)).astype(np.uint8)
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    layer.paste(Image.fromarray(rgba, "RGBA"), box[:2])
    return Image.alpha_composite(out, layer).convert("RGB")


def render_on_thumbnail(cache: FeatureCache, i: int, saliency: np.ndarray, geometry=None,
                        alpha: float = 0.6) -> Image.Image:
    """:func:`render_overlay` on image ``i``'s cached thumbnail (no image file needed)."""
    th = load_image(cache.thumbnail(int(i)))
    g = geometry or cache.transform.geometry(*cache.image_size(int(i)))
    return render_overlay(th, saliency, g.scaled(th.width, th.height), alpha)


METHODS: dict[str, type[Explainer]] = {
    "exact": ExactExplainer,
    "feature": FeatureOcclusionExplainer,
    "occlusion": OcclusionExplainer,
    "rise": RISEExplainer,
}

_RESULTS: OrderedDict[tuple, Explanation] = OrderedDict()


def explain(cache: FeatureCache, query: Query, result_id: int, method: str = "exact",
            model=None, progress=None, use_cache: bool = True, **params) -> Explanation:
    """Explain why ``result_id`` matches ``query`` with ``method`` (results are memoised)."""
    if method not in METHODS:
        raise VfsError(f"unknown explain method {method!r}; use one of {', '.join(METHODS)}")
    key = (str(cache.path), query.layer, query.source_id, query.weights.tobytes(),
           hash(query.features.tobytes()), int(result_id), method, tuple(sorted(params.items())))
    if use_cache and key in _RESULTS:
        _RESULTS.move_to_end(key)
        return _RESULTS[key]
    ex = METHODS[method](cache, model, **params).explain(query, result_id, progress)
    _RESULTS[key] = ex
    while len(_RESULTS) > 64:
        _RESULTS.popitem(last=False)
    return ex
