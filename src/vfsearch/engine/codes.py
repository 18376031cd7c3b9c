"""Compact first-pass codes with rigorous score bounds (a prototype; not used by ``search``).

A layer's cells x (C values) are projected on an orthonormal basis P (d x C, the top principal
directions of a sample of cells) and stored as ``bits``-bit codes c = round(P x / s) with one
scale s per cell (float16), together with two float16 scalars per cell:

* ``resid`` >= |x - P^T P x| (rounded up), the part of the cell the codes do not see;
* ``norm_lo`` <= |x| (rounded down; |x| < next float16 above it), for the denominator.

For a region query (cells k at (dy_k, dx_k) with weights m_k and vectors q_k, the kernel's math,
see :mod:`vfsearch.engine.kernel`), at each offset o::

    <q_k, x> = <P q_k, s c> + <P q_k, P x - s c> + <q_k - P^T P q_k, x - P^T P x>
             within  <P q_k, s c>  +-  (s / 2) |P q_k|_1  +  |q_k_perp| * resid

(optionally also ``qerr`` >= |P x - s c| per cell, rounded up: the quantisation term is then
min((s / 2) |P q_k|_1, |P q_k| qerr), and with ``clip`` < 1 the scale is set by a quantile of
|P x| so that the largest values are clipped and only the second, Cauchy-Schwarz, form holds),
so num(o) = sum_k m_k^2 <q_k, x> lies in [num^ - err, num^ + err] and den(o) = sum_k m_k^2 |x|^2
in [den_lo, den_hi]; the score num / (|q| sqrt(den)) then lies in an interval, and an image's
score (the max over offsets) lies in [max_o lower(o), max_o upper(o)]. Float rounding of the
bound arithmetic itself (float32 products of short dot products) is covered by a slack of
``SLACK`` x |q| sqrt(den_hi) on num, far above its forward error bound (~d * 2^-24).

Every image whose upper bound reaches the k-th best lower bound is a candidate; the exact top k
is always among them, and an exact re-rank of the candidates (from the float features) gives
the exact result. Public surface: :func:`train_basis`, :func:`encode`, :class:`Codes`,
:func:`bounds`, :func:`candidates`, :func:`search_codes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BadMask, BadParameter

__all__ = ["Codes", "SLACK", "bounds", "candidates", "encode", "search_codes", "train_basis"]

#: slack on num, relative to |q| sqrt(den_hi): covers float32 rounding in the bound arithmetic
SLACK = 1e-5
_QMAX = {b: 2 ** (b - 1) - 1 for b in range(2, 9)}  # symmetric signed codes
_NIBBLES = np.array([[lo - 16 * (lo > 7), hi - 16 * (hi > 7)]
                     for v in range(256) for lo, hi in [(v & 15, v >> 4)]], np.float32)


def train_basis(sample, d: int, *, center: bool = False) -> np.ndarray:
    """Orthonormal basis (d, C) float64: the top-``d`` eigenvectors of the second-moment matrix
    of ``sample`` (m, C) cells (uncentred by default: the codes project x itself, so the basis
    should capture its energy, mean included)."""
    x = np.asarray(sample, dtype=np.float64).reshape(-1, np.shape(sample)[-1])
    C = x.shape[1]
    if not 1 <= d <= C:
        raise BadParameter(f"d must be in [1, {C}], got {d}", param="d")
    if center:
        x = x - x.mean(0)
    w, v = np.linalg.eigh(x.T @ x / max(1, len(x)))
    P = v[:, np.argsort(w)[::-1][:d]].T
    q, _ = np.linalg.qr(P.T)  # re-orthonormalise (PP^T = I to float64 precision)
    return np.ascontiguousarray(q.T * np.sign(np.sum(q.T * P, axis=1, keepdims=True)))


def _f16_up(v: np.ndarray) -> np.ndarray:
    """float16 values >= v (v >= 0, float64)."""
    f = v.astype(np.float16)
    low = f.astype(np.float64) < v
    f[low] = np.nextafter(f[low], np.float16(np.inf))
    return f


def _f16_down(v: np.ndarray) -> np.ndarray:
    """float16 values <= v (v >= 0, float64)."""
    f = v.astype(np.float16)
    high = f.astype(np.float64) > v
    f[high] = np.nextafter(f[high], np.float16(0))
    return f


@dataclass
class Codes:
    """First-pass codes of n images (H, W grid): ``codes`` (n, H, W, d) int8 (values within
    +-(2^(bits-1) - 1)) or, for 4 bits, (n, H, W, ceil(d/2)) uint8 (two signed nibbles per byte,
    low nibble first), ``scale``, ``resid``,
    ``norm_lo`` (n, H, W) float16, and the ``basis`` (d, C)."""

    codes: np.ndarray
    scale: np.ndarray
    resid: np.ndarray
    norm_lo: np.ndarray
    basis: np.ndarray
    bits: int = 8
    qerr: np.ndarray | None = None  # (n, H, W) float16 >= |P x - s c|, when stored
    clipped: bool = False  # scales from a quantile: codes clipped, only the qerr bound holds

    def __len__(self) -> int:
        return len(self.scale)

    @property
    def d(self) -> int:
        return self.basis.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.scale.shape[1:3])

    @property
    def bytes_per_image(self) -> int:
        """Bytes of one image with the codes bit-packed (``bits`` x d per cell, rounded up to
        whole bytes) plus three float16 scalars per cell. Only 4-bit codes are held packed by
        this prototype (others in one int8 each: :attr:`held_bytes_per_image`)."""
        H, W = self.grid
        return H * W * (-(-self.d * self.bits // 8) + self._scalars * 2)

    @property
    def _scalars(self) -> int:
        return 3 if self.qerr is None else 4

    @property
    def held_bytes_per_image(self) -> int:
        """Bytes one image takes in this prototype's arrays."""
        H, W = self.grid
        return int(self.codes[0].nbytes) + self._scalars * 2 * H * W

    @property
    def nbytes(self) -> int:
        extra = 0 if self.qerr is None else self.qerr.nbytes
        return (self.codes.nbytes + self.scale.nbytes + self.resid.nbytes + self.norm_lo.nbytes
                + extra)

    def unpack(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Integer codes of rows [start, stop) as float32 (m, H, W, d)."""
        c = self.codes[start:stop]
        if self.bits != 4:
            return c.astype(np.float32)
        out = _NIBBLES[c].reshape(*c.shape[:-1], -1)  # (m, H, W, 2 * width)
        return out[..., :self.d]

    @staticmethod
    def concat(parts: list["Codes"]) -> "Codes":
        p0 = parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        qerr = None if p0.qerr is None else cat("qerr")
        return Codes(cat("codes"), cat("scale"), cat("resid"), cat("norm_lo"), p0.basis, p0.bits,
                     qerr, p0.clipped)


def encode(feats, basis: np.ndarray, *, bits: int = 8, block: int = 256, qerr: bool = False,
           clip: float = 1.0) -> Codes:
    """Codes of float feature maps ``feats`` (n, H, W, C) on ``basis`` (d, C); ``qerr`` stores
    the norm of each cell's quantisation error too, ``clip`` < 1 sets each cell's scale from
    that quantile of |P x| (clipping the largest values; implies ``qerr``)."""
    if bits not in _QMAX:
        raise BadParameter(f"bits must be in 2..8, got {bits}", param="bits")
    if not 0 < clip <= 1:
        raise BadParameter(f"clip must be in (0, 1], got {clip}", param="clip")
    qerr = qerr or clip < 1
    feats = np.asarray(feats)
    if feats.ndim != 4 or feats.shape[3] != basis.shape[1]:
        raise BadParameter(f"feats must be (n, H, W, {basis.shape[1]}), got {feats.shape}",
                           param="feats")
    n, H, W, _ = feats.shape
    d, qmax = basis.shape[0], _QMAX[bits]
    width = (d + 1) // 2 if bits == 4 else d
    codes = np.empty((n, H, W, width), np.uint8 if bits == 4 else np.int8)
    scale = np.empty((n, H, W), np.float16)
    resid = np.empty((n, H, W), np.float16)
    norm_lo = np.empty((n, H, W), np.float16)
    qe = np.empty((n, H, W), np.float16) if qerr else None
    for s in range(0, n, block):
        x = np.asarray(feats[s:s + block], dtype=np.float64)
        y = x @ basis.T  # (b, H, W, d)
        xp = x - y @ basis
        # float64 rounding of r and |x| (~1e-15 relative to |x|): covered by the 1e-12 |x| margins
        r = np.sqrt(np.einsum("...c,...c->...", xp, xp))
        nx = np.sqrt(np.einsum("...c,...c->...", x, x))
        ay = np.abs(y)
        top = ay.max(-1)
        if clip < 1:  # a zero quantile (sparse cell): keep the max
            qt = np.quantile(ay, clip, axis=-1)
            top = np.where(qt > 0, qt, top)
        sc = _f16_up(top / qmax)
        sc[sc == 0] = np.float16(1)
        c = np.clip(np.rint(y / sc.astype(np.float64)[..., None]), -qmax, qmax).astype(np.int8)
        if qe is not None:
            ey = y - c * sc.astype(np.float64)[..., None]
            ny = np.sqrt(np.einsum("...c,...c->...", y, y))
            qe[s:s + block] = _f16_up(np.sqrt(np.einsum("...c,...c->...", ey, ey)) + 1e-12 * ny)
        if bits == 4:
            if d % 2:
                c = np.concatenate([c, np.zeros(c.shape[:-1] + (1,), np.int8)], -1)
            u = c.view(np.uint8) & 0x0F
            c = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
        codes[s:s + block] = c
        scale[s:s + block] = sc
        resid[s:s + block] = _f16_up(r + 1e-12 * nx)
        norm_lo[s:s + block] = _f16_down(nx * (1 - 1e-12))
    return Codes(codes, scale, resid, norm_lo, np.asarray(basis, np.float64), bits, qe,
                 clip < 1)


def _query_terms(codes: Codes, weights, qfeat):
    w = np.asarray(weights, dtype=np.float64)
    ys, xs = np.nonzero(w > 0)
    if not len(ys):
        raise BadMask("the mask is empty: no cell of the feature grid has a weight above 0",
                      param="weights")
    m2 = w[ys, xs] ** 2
    q = np.asarray(qfeat, dtype=np.float64)[ys, xs]  # (K, C)
    P = codes.basis
    pq = q @ P.T  # (K, d)
    qperp = np.sqrt(np.maximum(0.0, np.einsum("kc,kc->k", q - pq @ P, q - pq @ P)))
    qnorm = math.sqrt(float(np.sum(m2 * np.einsum("kc,kc->k", q, q))))
    return ys - ys.min(), xs - xs.min(), m2, pq, qperp, qnorm


def bounds(codes: Codes, weights, qfeat, *, block: int = 1024, start: int = 0,
           stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous (lower, upper) bounds (float32, per image of rows [start, stop)) on the exact
    region-cosine image score of the query (``weights`` (H, W) mask on the grid, ``qfeat``
    (H, W, C) the query's features)."""
    dy, dx, m2, pq, qperp, qnorm = _query_terms(codes, weights, qfeat)
    stop = len(codes) if stop is None else stop
    H, W = codes.grid
    A, B = H - int(dy.max()), W - int(dx.max())
    n = stop - start
    lower = np.zeros(n, np.float32)
    upper = np.zeros(n, np.float32)
    if qnorm == 0 or n <= 0:
        return lower, upper
    Qt = np.ascontiguousarray((pq * m2[:, None]).T.astype(np.float32))  # (d, K)
    a = (m2 * 0.5 * np.abs(pq).sum(1)).astype(np.float32)  # quantisation term per unit scale
    b = (m2 * qperp).astype(np.float32)  # residual term per unit resid
    cq = (m2 * np.sqrt(np.einsum("kd,kd->k", pq, pq))).astype(np.float32)  # per unit qerr
    m2f = m2.astype(np.float32)
    nxt = np.float16(np.inf)
    for s in range(start, stop, block):
        e = min(stop, s + block)
        G = codes.unpack(s, e) @ Qt  # (m, H, W, K)
        sc = codes.scale[s:e].astype(np.float32)
        G *= sc[..., None]
        r = codes.resid[s:e].astype(np.float32)
        qe = None if codes.qerr is None else codes.qerr[s:e].astype(np.float32)
        nl16 = codes.norm_lo[s:e]
        nl = nl16.astype(np.float32)
        nh = np.nextafter(nl16, nxt).astype(np.float32)
        nl *= nl
        nh *= nh
        m = e - s
        num = np.zeros((m, A, B), np.float32)
        err = np.zeros((m, A, B), np.float32)
        dlo = np.zeros((m, A, B), np.float32)
        dhi = np.zeros((m, A, B), np.float32)
        for k in range(len(m2)):
            sl = (slice(None), slice(dy[k], dy[k] + A), slice(dx[k], dx[k] + B))
            num += G[sl + (k,)]
            if qe is None:
                err += a[k] * sc[sl] + b[k] * r[sl]
            elif codes.clipped:
                err += cq[k] * qe[sl] + b[k] * r[sl]
            else:
                err += np.minimum(a[k] * sc[sl], cq[k] * qe[sl]) + b[k] * r[sl]
            dlo += m2f[k] * nl[sl]
            dhi += m2f[k] * nh[sl]
        sdlo, sdhi = np.sqrt(dlo), np.sqrt(dhi)
        err += np.float32(SLACK * qnorm) * sdhi
        nhi, nlo = num + err, num - err
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(nhi >= 0, nhi / sdlo, nhi / sdhi) / qnorm
            lo = np.where(nlo >= 0, nlo / sdhi, nlo / sdlo) / qnorm
        zero = dhi <= 0  # every cell is 0: the score is 0
        up = np.where(zero, 0, np.nan_to_num(np.clip(up, -1, 1), nan=1.0))
        lo = np.where(zero, 0, np.nan_to_num(np.clip(lo, -1, 1), nan=-1.0))
        upper[s - start:e - start] = up.reshape(m, -1).max(1)
        lower[s - start:e - start] = lo.reshape(m, -1).max(1)
    return lower, upper


def candidates(lower, upper, k: int, exclude=None) -> np.ndarray:
    """Ids whose upper bound reaches the k-th largest lower bound (rows in ``exclude`` left
    out): the exact top k is always among them."""
    lower = np.asarray(lower, dtype=np.float64).copy()
    upper = np.asarray(upper, dtype=np.float64).copy()
    if exclude is not None:
        lower[exclude] = -np.inf
        upper[exclude] = -np.inf
    valid = int(np.isfinite(upper).sum())
    k = min(int(k), valid)
    if k <= 0:
        return np.zeros(0, np.int64)
    L = np.partition(lower, -k)[-k]
    return np.flatnonzero(upper >= L)


def search_codes(codes: Codes, weights, qfeat, k: int, rows, *, exclude=None,
                 exact=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact top ``k`` (ids, scores, stats) from the codes' bounds and an exact re-rank of the
    candidates: ``rows(ids)`` returns their float features (m, H, W, C); ``exact(feats,
    weights, qfeat)`` scores them (default: float64, :func:`vfsearch.engine.searcher.
    exact_scores`). Ties are broken by the lower id."""
    if exact is None:
        from .searcher import exact_scores as exact
    lower, upper = bounds(codes, weights, qfeat)
    cand = candidates(lower, upper, k, exclude)
    best = np.asarray(exact(rows(cand), weights, qfeat)[0], dtype=np.float64) if len(cand) \
        else np.zeros(0)
    order = np.lexsort((cand, -best))[:k]
    return cand[order], best[order], {"candidates": int(len(cand)), "lower": lower,
                                      "upper": upper}
