"""Explainers that run the model on perturbed images (black boxes): sliding-window occlusion and
RISE, in "fixed" (the result only) or "both" (also the query) mode.

What they share (also with LIME and the learned mask): the result image as the model sees it
and its blurred copy (:func:`input_arrays`, the "removed" look of every method), the scorer of
perturbed images against the query region (:class:`Scorer`), and the model passes of
:mod:`.forward` (stopped at the searched layer, batched, ``torch.inference_mode``, BatchNorm
folded). Sliding-window occlusion recomputes, where the network allows it, only the part of
each layer an occluder can reach (:mod:`.incremental`); ``incremental=False`` recomputes all.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..cache import FeatureCache
from ..engine.global_search import pooled_cosine
from ..engine.query import Query
from ..engine.searcher import exact_scores
from ..errors import BadQuery
from ..geometry import offset_rc
from ..images import load_image
from .auc import insertion_deletion
from .base import Control, Explainer, Explanation, Param, register
from .forward import DEFAULT_BATCH, LayerNet, compose, layer_net

__all__ = ["OcclusionExplainer", "RISEExplainer", "Scorer", "input_arrays"]

_MODE = Param("mode", str, "fixed", "fixed: saliency of the result; both: also of the query",
              choices=("fixed", "both"))
_BATCH = Param("batch_size", int, DEFAULT_BATCH, "perturbed images per forward pass", 1, 256)
_AUC = Param("auc_steps", int, 16, "insertion/deletion curve steps", 2, 64)
_COMMON = (_MODE, _BATCH, _AUC)


def input_arrays(img: Image.Image, transform) -> tuple[np.ndarray, np.ndarray]:
    """(normalised input, normalised blurred input), both (3, S, S) float32."""
    crop = transform.resize_crop(img)
    blurred = crop.filter(ImageFilter.GaussianBlur(radius=max(2, transform.size // 20)))
    mean = np.asarray(transform.mean, np.float32)[:, None, None]
    std = np.asarray(transform.std, np.float32)[:, None, None]

    def norm(im):
        return (np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std

    return norm(crop), norm(blurred)


def image_for(cache: FeatureCache, i: int) -> Image.Image:
    try:
        return load_image(cache.abspath(i))
    except Exception:  # noqa: BLE001 - fall back to the cached thumbnail
        th = load_image(cache.thumbnail(i))
        return th.resize(cache.image_size(i), Image.Resampling.BICUBIC)


class Scorer:
    """Scores of perturbed images through a :class:`~.forward.LayerNet`, as the search scores
    the match: perturbed results against the query, or perturbed query images against a fixed
    result (``ref``: its feature map, or for a global query its pooled vector). A region or
    whole-image query scores by the region cosine at the best offset, a global one by the
    cosine of mean-pooled vectors. ``ctl`` is checked between batches."""

    def __init__(self, net: LayerNet, q: Query, batch: int, ctl: Control | None = None):
        self.net, self.q, self.batch = net, q, batch
        self.ctl = ctl or Control()
        self.forwards = 0
        self.pooled = q.mode == "global"

    def _between(self, _done: int) -> None:
        self.ctl.check()

    def features(self, xs) -> np.ndarray:
        self.forwards += len(xs)
        return self.net.features(xs, self.batch, self._between)

    def results(self, xs) -> np.ndarray:
        return self.result_scores(self.features(xs))

    def result_scores(self, feats: np.ndarray) -> np.ndarray:
        if self.pooled:
            return pooled_cosine(_mean_pool(feats), self.q.pooled)
        return exact_scores(feats, self.q.weights, self.q.features)[0]

    def queries(self, xs, ref: np.ndarray) -> np.ndarray:
        return self.query_scores(self.features(xs), ref)

    def query_scores(self, feats: np.ndarray, ref: np.ndarray) -> np.ndarray:
        if self.pooled:
            ref = ref if ref.ndim == 1 else _mean_pool(ref[None])[0]
            return pooled_cosine(_mean_pool(feats), ref)
        return np.array([exact_scores(ref[None], self.q.weights, f)[0][0] for f in feats])


def _mean_pool(feats: np.ndarray) -> np.ndarray:
    return np.asarray(feats, np.float64).mean(axis=(1, 2))


class ModelExplainer(Explainer):
    """Base of the explainers that run the model: the result (and, in "both" mode, the query)
    as model inputs with their blurred copies, the scorer, the insertion/deletion AUCs."""

    runs_model = True

    def __init__(self, cache, model=None, query_image: Image.Image | None = None, **params):
        super().__init__(cache, model, **params)
        self.query_image = query_image

    def _setup(self, q: Query, rid: int, ctl: Control):
        lm = self.model()
        net = layer_net(lm, q.layer, self.cache.transform.size)
        scorer = Scorer(net, q, self.params.get("batch_size", DEFAULT_BATCH), ctl)
        self.result_image = image_for(self.cache, rid)
        x, xb = input_arrays(self.result_image, self.cache.transform)
        if q.mode == "global":  # the match's score: its stored pooled vector's cosine
            ref = np.asarray(self.cache.pooled(q.layer, [rid])[0], np.float64)
            return scorer, x, xb, ref, float(pooled_cosine(ref[None], q.pooled)[0]), (0, 0)
        ref = self._result_features(q, rid)
        best, off, _ = exact_scores(ref[None], q.weights, q.features)
        return scorer, x, xb, ref, float(best[0]), offset_rc(off[0], ref.shape[:2],
                                                             q.cell_box[3])

    def _query_inputs(self, q: Query) -> tuple[np.ndarray, np.ndarray]:
        qimg = self.query_image
        if qimg is None:
            if q.source_id is None:
                raise BadQuery("mode 'both' needs the query image (pass query_image=)",
                               param="query_image")
            qimg = image_for(self.cache, q.source_id)
        return input_arrays(qimg, self.cache.transform)

    def _aucs(self, sal, x, xb, scorer: Scorer) -> tuple[float, float]:
        return insertion_deletion(sal, x, xb, scorer.results, steps=self.params["auc_steps"])


class _BlackBox(ModelExplainer):
    """Perturbation masks in batches → scores → saliency (the mask sequence is deterministic)."""

    def _count(self, S: int) -> int:
        raise NotImplementedError

    def _batches(self, S: int, batch: int):  # yields (k, S, S) float32 keep-masks (1 = keep)
        raise NotImplementedError

    def _saliency(self, acc: dict) -> np.ndarray:
        raise NotImplementedError

    def _add(self, acc: dict, keep: np.ndarray, scores: np.ndarray) -> None:
        raise NotImplementedError

    def _run(self, score, x, xb, part, side: str = "result") -> np.ndarray:
        S = x.shape[-1]
        n, done, acc = self._count(S), 0, {}
        tx, txb = torch.from_numpy(x), torch.from_numpy(xb)
        for keep in self._batches(S, self.params["batch_size"]):
            scores = score(compose(tx, txb, torch.from_numpy(keep)))
            self._add(acc, keep, scores)
            done += len(keep)
            part(done / n)
        return self._saliency(acc)

    def _explain(self, q, rid, ctl):
        scorer, x, xb, ref, best, off = self._setup(q, rid, ctl)
        both = self.params["mode"] == "both"
        sal = self._run(scorer.results, x, xb, ctl.part(0.0, 0.45 if both else 0.85))
        qsal = None
        if both:
            qx, qxb = self._query_inputs(q)
            qsal = self._run(lambda b: scorer.queries(b, ref), qx, qxb, ctl.part(0.45, 0.85),
                             side="query")
        ins, dele = self._aucs(sal, x, xb, scorer)
        return Explanation(self.name, rid, best, off, sal, qsal, "input", insertion_auc=ins,
                           deletion_auc=dele, extra={"forwards": scorer.forwards})


def _window_positions(S: int, w: int, st: int) -> list[int]:
    pos = list(range(0, max(1, S - w) + 1, st))
    if pos[-1] != S - w and S > w:
        pos.append(S - w)
    return pos


@register
class OcclusionExplainer(_BlackBox):
    """Sliding-window occlusion (window and stride in model-input pixels; occluder = blur).

    Saliency of a pixel = mean drop of the score over the windows that cover it. With
    ``incremental`` (the default), each occluded image is computed from the unoccluded one by
    recomputing, layer by layer, only the region the occluder can reach (its receptive field),
    where the network's structure allows it (checked against the full forward once per model
    and layer); the saliency equals the full recompute's up to float rounding."""

    name = "occlusion"
    title = "sliding-window occlusion"
    params_spec = (
        Param("window", int, 56, "occluder side (model-input pixels)", 4, 4096),
        Param("stride", int, 28, "occluder step (model-input pixels)", 4, 4096),
        Param("incremental", bool, True,
              "recompute only what each occluder can reach (same saliency, faster)"),
    ) + _COMMON

    def _boxes(self, S):
        w, st = min(self.params["window"], S), self.params["stride"]
        pos = _window_positions(S, w, st)
        return [(y, x, y + w, x + w) for y in pos for x in pos]

    def _count(self, S):
        return len(self._boxes(S))

    def _batches(self, S, batch):
        boxes = self._boxes(S)
        for s in range(0, len(boxes), batch):
            part = boxes[s:s + batch]
            keep = np.ones((len(part), S, S), np.float32)
            for k, (y0, x0, y1, x1) in enumerate(part):
                keep[k, y0:y1, x0:x1] = 0
            yield keep

    def _add(self, acc, keep, scores):
        occ = 1 - keep
        drop = -np.asarray(scores, np.float64)  # higher when occluding lowers the score
        acc["sum"] = acc.get("sum", 0) + np.tensordot(drop, occ, axes=1)
        acc["cover"] = acc.get("cover", 0) + occ.sum(0)

    def _saliency(self, acc):
        sal = acc["sum"] / np.maximum(acc["cover"], 1)
        return sal - sal.min()

    def _run(self, score, x, xb, part, side="result"):
        if not self.params["incremental"]:
            return super()._run(score, x, xb, part, side)
        from .incremental import occluded_features

        S = x.shape[-1]
        scorer: Scorer = self._scorer
        inc = occluded_features(scorer.net, x, xb)
        if inc is None:  # the network does not allow it: the full recompute
            return super()._run(score, x, xb, part, side)
        boxes = self._boxes(S)
        acc: dict = {}
        bs = self.params["batch_size"]
        for s in range(0, len(boxes), bs):
            chunk = boxes[s:s + bs]
            feats = inc.features(chunk)
            scorer.forwards += len(chunk)
            scores = (scorer.result_scores(feats) if side == "result"
                      else scorer.query_scores(feats, self._ref))
            keep = np.ones((len(chunk), S, S), np.float32)
            for k, (y0, x0, y1, x1) in enumerate(chunk):
                keep[k, y0:y1, x0:x1] = 0
            self._add(acc, keep, scores)
            part(min(1.0, (s + bs) / len(boxes)))
        return self._saliency(acc)

    def _setup(self, q, rid, ctl):
        out = super()._setup(q, rid, ctl)
        self._scorer, self._ref = out[0], out[3]
        return out


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

    def _count(self, S):
        return self.params["n_masks"]

    def _batches(self, S, batch):
        n, p, s = self.params["n_masks"], self.params["p"], self.params["cells"]
        rng = np.random.default_rng(self.params["seed"])
        cell = int(np.ceil(S / s))
        up = (s + 1) * cell
        grid = (rng.random((n, s, s)) < p).astype(np.float32)
        shifts = [rng.integers(0, cell, 2) for _ in range(n)]  # the same draws as before
        for b in range(0, n, batch):
            out = np.empty((min(batch, n - b), S, S), np.float32)
            for k in range(len(out)):
                big = np.asarray(Image.fromarray(grid[b + k]).resize((up, up),
                                                                     Image.Resampling.BILINEAR))
                dx, dy = shifts[b + k]
                out[k] = big[dy:dy + S, dx:dx + S]
            yield out

    def _add(self, acc, keep, scores):
        acc["sum"] = acc.get("sum", 0) + np.tensordot(np.asarray(scores, np.float64), keep, axes=1)

    def _saliency(self, acc):
        return acc["sum"] / (self.params["n_masks"] * self.params["p"])
