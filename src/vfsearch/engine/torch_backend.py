"""The scan in PyTorch, for a GPU (``backend="torch:cuda"``) or as a CPU cross-check
(``backend="torch"``). Same outputs as :func:`vfsearch.engine.kernel.scan`: per-image best score,
offset, and bounds on the exact score (8-bit: from each cell's stored quantisation error; the query
is not rounded here, so only the feature term and float slack remain)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernel import PreparedQuery, ScanResult, rows_by_id

__all__ = ["scan"]


def scan(feats, sqnorm, query: PreparedQuery, *, scale=None, qerr2=None, device: str = "cpu",
         block: int = 4096, ids=None) -> ScanResult:
    """``ids``: scan only those rows (result i is row ``ids[i]``), as the kernel's scan."""
    if ids is not None:
        feats, sqnorm, scale, qerr2 = rows_by_id(ids, feats, sqnorm, scale, qerr2)
    n, H, W, C = feats.shape
    A, B = H - query.h + 1, W - query.w + 1
    dev = torch.device(device)
    # (K, C), m² folded in
    Q = torch.from_numpy(np.ascontiguousarray(query.qf)).to(dev, torch.float32)
    m2 = torch.from_numpy(np.ascontiguousarray(query.m2)).to(dev, torch.float32)
    dy, dx = query.dy.tolist(), query.dx.tolist()
    out = ScanResult(np.empty(n, np.float32), np.empty(n, np.int32), np.empty(n, np.float32),
                     np.empty(n, np.float32))
    slack = 1e-5
    for s in range(0, n, block):
        e = min(n, s + block)
        x = torch.from_numpy(np.ascontiguousarray(feats[s:e])).to(dev).float()
        if scale is not None:
            x = x * torch.from_numpy(np.ascontiguousarray(scale[s:e])).to(dev)[..., None]
        sq = torch.from_numpy(np.ascontiguousarray(sqnorm[s:e])).to(dev)
        qe = None if qerr2 is None else torch.from_numpy(np.ascontiguousarray(qerr2[s:e])).to(dev)
        num = torch.zeros((e - s, A, B), device=dev)
        den = torch.zeros((e - s, A, B), device=dev)
        err = torch.zeros((e - s, A, B), device=dev) if qe is not None else None
        for k in range(len(dy)):
            num += x[:, dy[k]:dy[k] + A, dx[k]:dx[k] + B, :] @ Q[k]
            den += m2[k] * sq[:, dy[k]:dy[k] + A, dx[k]:dx[k] + B]
            if err is not None:
                err += m2[k] * qe[:, dy[k]:dy[k] + A, dx[k]:dx[k] + B]
        ok = (den > 0) & (query.qnorm > 0)
        score = torch.where(ok, num / (query.qnorm * torch.sqrt(den.clamp_min(1e-30))),
                            torch.zeros_like(num))
        if err is not None:
            delta = torch.where(ok, torch.sqrt(err) / torch.sqrt(den.clamp_min(1e-30)),
                                torch.zeros_like(num))
            eps = torch.where(delta < 1, torch.asin(delta.clamp(max=1.0)),
                              torch.full_like(delta, math.pi)) + slack
        else:
            eps = torch.full_like(score, slack)
        flat = score.reshape(e - s, -1)
        best, off = flat.max(dim=1)  # first maximum: lowest offset index on ties
        eps_best = eps.reshape(e - s, -1).gather(1, off[:, None])[:, 0]
        out.score[s:e] = best.cpu().numpy()
        out.offset[s:e] = off.to(torch.int32).cpu().numpy()
        out.upper[s:e] = (flat + eps.reshape(e - s, -1)).max(dim=1).values.cpu().numpy()
        out.lower[s:e] = (best - eps_best).cpu().numpy()
    return out
