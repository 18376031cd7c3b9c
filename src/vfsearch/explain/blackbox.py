"""Explainers that run the model on perturbed images (black boxes): sliding-window occlusion and
RISE, in "fixed" (the result only) or "both" (also the query) mode."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..cache import FeatureCache
from ..engine.query import Query
from ..engine.searcher import exact_scores
from ..errors import BadQuery
from ..extract import FeatureExtractor
from ..geometry import offset_rc
from ..images import load_image
from .auc import insertion_deletion
from .base import Explainer, Explanation, Param, register

__all__ = ["OcclusionExplainer", "RISEExplainer"]

_COMMON = (
    Param("mode", str, "fixed", "fixed: saliency of the result; both: also of the query",
          choices=("fixed", "both")),
    Param("batch_size", int, 16, "perturbed images per forward pass", 1, 256),
    Param("auc_steps", int, 16, "insertion/deletion curve steps", 2, 64),
)


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
    runs_model = True

    def __init__(self, cache, model=None, query_image: Image.Image | None = None, **params):
        super().__init__(cache, model, **params)
        self.query_image = query_image

    def _masks(self, S: int, rng) -> np.ndarray:  # (M, S, S) in [0, 1]; 1 = keep
        raise NotImplementedError

    def _saliency(self, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
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
        return self._saliency(masks, np.concatenate(scores))

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
                    raise BadQuery("mode 'both' needs the query image (pass query_image=)",
                                   param="query_image")
                qimg = _image_for(self.cache, q.source_id)
            qx, qxb = _input_arrays(qimg, tf)
            qsal = self._run(scorer, qx, qxb, lambda b: scorer.score_queries(q, b, ref), progress, 0.5, 0.8)
        ins, dele = insertion_deletion(sal, x, xb, lambda b: scorer.score_results(q, b),
                                       steps=self.params["auc_steps"])
        progress(1.0)
        return Explanation(self.name, rid, float(best[0]), offset_rc(off[0], q.grid, q.cell_box[3]),
                           sal, qsal, "input", insertion_auc=ins, deletion_auc=dele)


@register
class OcclusionExplainer(_BlackBox):
    """Sliding-window occlusion (window and stride in model-input pixels; occluder = blur)."""

    name = "occlusion"
    title = "sliding-window occlusion"
    params_spec = (
        Param("window", int, 56, "occluder side (model-input pixels)", 4, 4096),
        Param("stride", int, 28, "occluder step (model-input pixels)", 4, 4096),
    ) + _COMMON

    def _masks(self, S, rng):
        w, st = self.params["window"], self.params["stride"]
        pos = list(range(0, max(1, S - w) + 1, st))
        if pos[-1] != S - w and S > w:
            pos.append(S - w)
        masks = np.ones((len(pos) ** 2, S, S), np.float32)
        for k, (y, x) in enumerate((y, x) for y in pos for x in pos):
            masks[k, y:y + w, x:x + w] = 0
        return masks

    def _saliency(self, masks, scores):
        occ = 1 - masks
        drop = -scores  # higher when occluding lowers the score (the base score is a constant)
        cover = occ.sum(0)
        sal = np.tensordot(drop, occ, axes=1) / np.maximum(cover, 1)
        return sal - sal.min()


@register
class RISEExplainer(_BlackBox):
    """RISE: ``n_masks`` random ``cells``×``cells`` binary grids (keep probability ``p``),
    bilinearly upsampled with random shifts; saliency = Σ score·mask / (n·p)."""

    name = "rise"
    title = "RISE"
    params_spec = (
        Param("n_masks", int, 256, "random masks", 1, 4000),
        Param("p", float, 0.5, "probability a mask cell is kept", 0.01, 0.99),
        Param("cells", int, 7, "mask grid cells per side", 2, 64),
        Param("seed", int, 0, "random seed", 0),
    ) + _COMMON

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

    def _saliency(self, masks, scores):
        return np.tensordot(scores, masks, axes=1) / (len(masks) * self.params["p"])
