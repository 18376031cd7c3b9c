"""Slow float64 reference for the region-cosine search, written straight from the
paper ("Interactive Visual Feature Search", eq. 1-5). Ground truth for tests."""

from __future__ import annotations

import numpy as np


def reference_scores(feats, weights, qfeat):
    """feats (n,H,W,C), weights (H,W) mask on the grid, qfeat (H,W,C).

    Returns (best_scores float64 (n,), best_offset int (n,), maps: list of
    (H-h+1, W-w+1) float64 arrays), offsets o = a*(W-w+1)+b, ties -> lowest o.
    """
    feats = np.asarray(feats, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    qfeat = np.asarray(qfeat, dtype=np.float64)
    n, H, W, _C = feats.shape

    # crop the mask to the bounding box of weights > 0
    ys, xs = np.nonzero(weights > 0)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    m = weights[y0 : y1 + 1, x0 : x1 + 1]
    qbox = qfeat[y0 : y1 + 1, x0 : x1 + 1]
    cells = [(i, j) for i in range(h) for j in range(w) if m[i, j] > 0]

    # q = concat(m_ij * q_ij)
    q = np.concatenate([m[i, j] * qbox[i, j] for i, j in cells])
    qn = np.linalg.norm(q)

    best_scores = np.zeros(n)
    best_offset = np.zeros(n, dtype=np.int64)
    maps = []
    for t in range(n):
        smap = np.zeros((H - h + 1, W - w + 1))
        for a in range(H - h + 1):
            for b in range(W - w + 1):
                # r = concat(m_ij * x[a+i, b+j])
                r = np.concatenate([m[i, j] * feats[t, a + i, b + j] for i, j in cells])
                rn = np.linalg.norm(r)
                smap[a, b] = 0.0 if qn == 0 or rn == 0 else np.dot(q, r) / (qn * rn)
        flat = smap.reshape(-1)
        best_offset[t] = int(np.argmax(flat))
        best_scores[t] = flat[best_offset[t]]
        maps.append(smap)
    return best_scores, best_offset, maps
