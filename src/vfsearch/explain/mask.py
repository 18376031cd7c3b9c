"""The learned perturbation mask (Fong & Vedaldi, "meaningful perturbation"; Plummer et al. §1):
a low-resolution mask optimised by gradient descent so that the images it perturbs keep (or
lose) their similarity, with L1 and total-variation penalties keeping it small and smooth."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BadParameter
from .base import Explanation, Param, register
from .blackbox import _AUC, _MODE, ModelExplainer

__all__ = ["MaskExplainer", "PooledScore", "RegionScore"]


class RegionScore:
    """The region cosine of the search (max over offsets) as a differentiable torch function
    of feature maps (N, C, H, W): a convolution with the masked query for the dot products and
    one with the squared mask weights over the per-cell squared norms."""

    def __init__(self, weights: np.ndarray):
        ys, xs = np.nonzero(weights > 0)
        self.r0, self.c0 = int(ys.min()), int(xs.min())
        self.h, self.w = int(ys.max()) - self.r0 + 1, int(xs.max()) - self.c0 + 1
        self.ys, self.xs = torch.from_numpy(ys), torch.from_numpy(xs)
        self.m2 = torch.from_numpy(weights[ys, xs].astype(np.float32) ** 2)
        wm = torch.zeros(1, 1, self.h, self.w)
        wm[0, 0, self.ys - self.r0, self.xs - self.c0] = self.m2
        self.wm = wm

    def query(self, qmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, H, W) query feature map → (conv filter (1, C, h, w), query norm)."""
        qk = qmap[0][:, self.ys, self.xs]  # (C, K)
        filt = torch.zeros(1, qmap.shape[1], self.h, self.w, dtype=qmap.dtype, device=qmap.device)
        filt[0, :, self.ys - self.r0, self.xs - self.c0] = qk * self.m2.to(qmap.device)
        qnorm = torch.sqrt((self.m2.to(qmap.device) * (qk * qk).sum(0)).sum())
        return filt, qnorm

    def __call__(self, fmap: torch.Tensor, filt: torch.Tensor, qnorm: torch.Tensor) -> torch.Tensor:
        num = F.conv2d(fmap, filt)  # (N, 1, A, B)
        den = F.conv2d((fmap * fmap).sum(1, keepdim=True), self.wm.to(fmap.device))
        s = num / (qnorm * torch.sqrt(den.clamp_min(1e-12)))
        return s.flatten(1).max(1).values


class PooledScore:
    """The global score (cosine of mean-pooled feature maps) as a differentiable torch function
    of feature maps (N, C, H, W), with :class:`RegionScore`'s interface."""

    def query(self, qmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, H, W) query feature map → (its pooled vector (C,), its norm)."""
        v = qmap[0].mean(dim=(1, 2))
        return v, v.norm()

    def vector(self, pooled: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.from_numpy(np.asarray(pooled, np.float32)).to(device)
        return v, v.norm()

    def __call__(self, fmap: torch.Tensor, qv: torch.Tensor, qnorm: torch.Tensor) -> torch.Tensor:
        p = fmap.mean(dim=(2, 3))  # (N, C)
        return (p @ qv) / (qnorm * p.norm(dim=1)).clamp_min(1e-12)


def _tv(m: torch.Tensor, beta: float) -> torch.Tensor:
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).mean()
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).mean()
    return dy + dx


@register
class MaskExplainer(ModelExplainer):
    """Learned perturbation mask: a ``size``×``size`` mask m ∈ [0, 1] (1 = keep), upsampled
    bilinearly to the model input, blends the image with its blurred copy (the "removed" look
    of the other methods); Adam (``lr``, ``iterations``) minimises

    * ``objective="preserve"``: −score(perturbed) + ``l1``·mean(m) + ``tv``·TV(m) — the
      smallest region that keeps the similarity (saliency = m);
    * ``objective="delete"``: score(perturbed) + ``l1``·mean(1 − m) + ``tv``·TV(m) — the
      smallest region whose removal destroys it (saliency = 1 − m);

    with TV(m) the mean of |∇m|^``tv_beta`` (Fong & Vedaldi use β = 3). ``mode="fixed"``
    perturbs the result only (the query region's features stay those of the search);
    ``mode="both"`` learns a mask on the query image and one on the result jointly, the score
    being that of the perturbed query region against the perturbed result. The score is the
    search's: the region cosine at the best offset, or for a global query the cosine of the
    mean-pooled maps (:class:`PooledScore`). Gradients flow to
    the masks only, through a forward that stops at the searched layer. The objective's values
    are kept in ``extra["objective"]`` (first, every ``iterations``/50-th, last).
    """

    name = "mask"
    title = "learned perturbation mask"
    params_spec = (
        Param("size", int, 14, "mask cells per side (at most the model input side)", 2, 4096),
        Param("iterations", int, 500, "Adam steps", 1, 20000),
        Param("lr", float, 0.1, "Adam learning rate", 1e-5, 10.0),
        Param("l1", float, 0.3, "weight of the mask's area (L1)", 0.0, 1000.0),
        Param("tv", float, 0.2, "weight of the total variation", 0.0, 1000.0),
        Param("tv_beta", float, 3.0, "exponent of the total variation", 1.0, 4.0),
        Param("objective", str, "preserve",
              "preserve: smallest region keeping the score; delete: smallest one removing it",
              choices=("preserve", "delete")),
        _MODE, _AUC,
    )

    def __init__(self, cache, model=None, **params):
        super().__init__(cache, model, **params)
        S = cache.transform.size
        if self.params["size"] > S:
            raise BadParameter(f"size must be at most the model input side ({S})", param="size")

    def _explain(self, q, rid, ctl):
        scorer, x, xb, ref, best, off = self._setup(q, rid, ctl)
        net = scorer.net
        both = self.params["mode"] == "both"
        S = x.shape[-1]
        size, iters = self.params["size"], self.params["iterations"]
        preserve = self.params["objective"] == "preserve"
        l1, tv, beta = self.params["l1"], self.params["tv"], self.params["tv_beta"]
        glob = q.mode == "global"  # the search's own score: pooled cosine, else region cosine
        score_fn = PooledScore() if glob else RegionScore(q.weights)
        dev = net.device
        xs = [torch.from_numpy(x).to(dev)]
        xbs = [torch.from_numpy(xb).to(dev)]
        if both:
            qx, qxb = self._query_inputs(q)
            xs.insert(0, torch.from_numpy(qx).to(dev))
            xbs.insert(0, torch.from_numpy(qxb).to(dev))
        X, XB = torch.stack(xs), torch.stack(xbs)
        fixed_filt = None
        if not both and glob:
            fixed_filt = score_fn.vector(q.pooled, dev)
        elif not both:
            qmap = torch.from_numpy(np.ascontiguousarray(q.features.transpose(2, 0, 1)))[None]
            fixed_filt = score_fn.query(qmap.to(dev))
        m = torch.full((len(xs), 1, size, size), 0.5, device=dev, requires_grad=True)
        opt = torch.optim.Adam([m], lr=self.params["lr"])
        history: list[float] = []
        every = max(1, iters // 50)
        tick = max(1, iters // 100)
        part = ctl.part(0.0, 0.9)

        def upsample(mm):
            return F.interpolate(mm, size=(S, S), mode="bilinear", align_corners=False)

        for it in range(iters):
            opt.zero_grad(set_to_none=True)
            M = upsample(m)
            feats = net.forward(XB + M * (X - XB))
            if both:
                filt, qn = score_fn.query(feats[:1])
                s = score_fn(feats[1:], filt, qn)[0]
            else:
                s = score_fn(feats, *fixed_filt)[0]
            area = m.mean() if preserve else (1 - m).mean()
            loss = (-s if preserve else s) + l1 * area * len(xs) + tv * _tv(m, beta) * len(xs)
            loss.backward()
            opt.step()
            with torch.no_grad():
                m.clamp_(0.0, 1.0)
            if it == 0 or it == iters - 1 or it % every == 0:
                history.append(float(loss.detach()))
            if it % tick == 0 or it == iters - 1:
                part((it + 1) / iters)
        with torch.no_grad():
            M = upsample(m).cpu().numpy()[:, 0]
        maps = M if preserve else 1.0 - M
        sal = maps[-1].astype(np.float64)
        qsal = maps[0].astype(np.float64) if both else None
        ctl(0.9)
        ins, dele = self._aucs(sal, x, xb, scorer)
        return Explanation(self.name, rid, best, off, sal, qsal, "input", insertion_auc=ins,
                           deletion_auc=dele, extra={
                               "forwards": scorer.forwards + iters * len(xs),
                               "backwards": iters * len(xs), "iterations": iters,
                               "objective": history, "mask_cells": m.detach().cpu().numpy()[:, 0]
                               .round(4).tolist()})
