"""Clustering in numpy: spherical k-means (in memory, and as streamed Lloyd passes over blocks),
and online non-negative matrix factorisation for non-negative layers.

Directions, not points: a cell belongs to the concept whose unit direction has the largest
cosine with it — the score the search engine gives a one-cell query holding that direction.
Spherical k-means here weights each cell by its norm (a concept is the normalised *sum* of its
cells), so weak, near-zero cells cannot pull a direction about; the assignment needs no
normalisation (``argmax_k <x, c_k>`` is the same for ``x`` and ``x / |x|``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Accumulator", "assign", "kmeans", "kmeans_pp", "nmf_update", "nmf_codes", "unit"]


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def assign(x: np.ndarray, centres: np.ndarray, norms: np.ndarray | None = None):
    """Nearest direction of each row: (labels (m,) int64, cosine (m,) float32). Rows with a zero
    norm get label -1 and cosine 0."""
    x = np.asarray(x, np.float32)
    if norms is None:
        norms = np.linalg.norm(x, axis=1)
    if not len(centres):
        return np.full(len(x), -1, np.int64), np.zeros(len(x), np.float32)
    dots = x @ np.ascontiguousarray(np.asarray(centres, np.float32).T)
    lab = dots.argmax(axis=1)
    best = np.take_along_axis(dots, lab[:, None], axis=1)[:, 0]
    ok = norms > 0
    if ok.all():
        return lab, (best / norms).astype(np.float32)
    cos = np.divide(best, norms, out=np.zeros(len(x), np.float32), where=ok)
    lab[~ok] = -1
    return lab, cos


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, max_points: int = 20_000
              ) -> np.ndarray:
    """Greedy k-means++ seeding on the unit sphere (distance² = 2 − 2 cos), weighted by norm,
    on at most ``max_points`` rows drawn at random (the seeds only need to be spread out; the
    Lloyd steps that follow use every row)."""
    if len(x) > max_points:
        x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
    u = unit(x)
    w = np.linalg.norm(np.asarray(x, np.float32), axis=1).astype(np.float64)
    keep = w > 0
    u, w = u[keep], w[keep]
    if len(u) == 0:
        raise ValueError("every vector is zero")
    k = min(k, len(u))
    trials = 2 + int(math.log(max(k, 2)))
    centres = np.empty((k, u.shape[1]), np.float32)
    first = rng.choice(len(u), p=w / w.sum())
    centres[0] = u[first]
    d2 = np.maximum(0.0, 2.0 - 2.0 * (u @ centres[0]).astype(np.float64))
    for j in range(1, k):
        p = w * d2
        tot = p.sum()
        if tot <= 0:  # fewer distinct directions than k: repeat one, it will be re-seeded
            centres[j:] = centres[0]
            break
        cand = rng.choice(len(u), size=trials, p=p / tot)
        cd2 = np.maximum(0.0, 2.0 - 2.0 * (u @ u[cand].T).astype(np.float64))  # (n, trials)
        pot = (w[:, None] * np.minimum(d2[:, None], cd2)).sum(0)
        b = int(pot.argmin())
        centres[j] = u[cand[b]]
        d2 = np.minimum(d2, cd2[:, b])
    return centres


class Accumulator:
    """Sums of the rows assigned to each direction over any number of blocks (one Lloyd step
    streamed over data that never sits in memory at once)."""

    def __init__(self, k: int, c: int):
        self.sums = np.zeros((k, c), np.float64)
        self.counts = np.zeros(k, np.int64)
        self.objective = 0.0  # Σ <x, c_label>: what the Lloyd steps increase
        self.worst: tuple[float, np.ndarray] | None = None  # the row least like its direction

    def add(self, x: np.ndarray, labels: np.ndarray, cos: np.ndarray, norms: np.ndarray) -> None:
        from scipy.sparse import csr_matrix

        cols = np.flatnonzero(labels >= 0)
        if not len(cols):
            return
        ls = labels[cols]
        k = self.sums.shape[0]
        # per-direction sums of the rows: one sparse one-hot product, no copy of x (a dense
        # one-hot GEMM is 30× slower here)
        onehot = csr_matrix((np.ones(len(ls), np.float32), (ls, cols)), shape=(k, len(x)))
        self.sums += np.asarray(onehot @ x, np.float64)
        self.counts += np.bincount(ls, minlength=k)
        c = cos[cols]
        self.objective += float(np.dot(c.astype(np.float64), norms[cols]))
        j = int(np.argmin(c))
        if self.worst is None or c[j] < self.worst[0]:
            self.worst = (float(c[j]), np.array(x[cols[j]], np.float32))

    def centres(self, old: np.ndarray) -> np.ndarray:
        """The new directions; an empty one is re-seeded on the row least like its direction."""
        new = unit(self.sums.astype(np.float32))
        empty = self.counts == 0
        new[empty] = old[empty]
        if empty.any() and self.worst is not None:
            new[np.flatnonzero(empty)[0]] = unit(self.worst[1][None])[0]
        return new


def kmeans(x: np.ndarray, k: int, *, iters: int = 30, seed: int = 0, init: np.ndarray | None = None,
           tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray, float]:
    """Spherical k-means of the rows of ``x`` in memory: (unit directions (k, C), labels (m,),
    objective Σ <x, c>). Stops after ``iters`` Lloyd steps or once fewer than a fraction
    ``tol`` of the rows change cluster. ``k`` is clipped to the number of non-zero rows."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(x, axis=1)
    centres = kmeans_pp(x, k, rng) if init is None else np.asarray(init, np.float32)
    prev = -np.inf
    labels = np.full(len(x), -1, np.int64)
    for _ in range(max(1, iters)):
        old = labels
        labels, cos = assign(x, centres, norms)
        acc = Accumulator(len(centres), x.shape[1])
        acc.add(x, labels, cos, norms)
        centres = acc.centres(centres)
        moved = float(np.mean(old != labels))
        if moved <= tol or acc.objective - prev <= 1e-7 * max(1.0, abs(acc.objective)):
            break
        prev = acc.objective
    labels, cos = assign(x, centres, norms)
    return centres, labels, float((cos * norms).sum())


# -- non-negative matrix factorisation (online, for non-negative layers) ---------------------------


def nmf_codes(x: np.ndarray, h: np.ndarray, iters: int = 30) -> np.ndarray:
    """Non-negative codes ``w`` (m, k) with ``x ≈ w h`` for a fixed dictionary ``h`` (k, C):
    multiplicative updates from a non-negative least-squares start."""
    x = np.asarray(x, np.float32)
    hh = h @ h.T
    xh = x @ h.T
    w = np.maximum(xh, 0) / np.maximum(np.diag(hh), 1e-12)
    for _ in range(iters):
        w *= xh / (w @ hh + 1e-9)
    return w


def nmf_update(h: np.ndarray, a: np.ndarray, b: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Block-coordinate (HALS) update of the dictionary from the statistics ``a = Σ wᵀw`` (k, k)
    and ``b = Σ wᵀx`` (k, C) of Mairal et al.'s online dictionary learning."""
    h = np.array(h, np.float64)
    for _ in range(sweeps):
        for j in range(len(h)):
            if a[j, j] <= 0:
                continue
            h[j] = np.maximum(0.0, h[j] + (b[j] - a[j] @ h) / a[j, j])
            n = np.linalg.norm(h[j])
            if n > 1:  # atoms in the unit ball (Mairal et al.): the codes carry the scale
                h[j] /= n
    return h.astype(np.float32)
