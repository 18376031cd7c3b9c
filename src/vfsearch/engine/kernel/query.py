"""What goes into a scan and what comes out: :class:`PreparedQuery`, :class:`ScanResult`, and
the integer rounding of a query for 8-bit features (with the bound it puts on every score)."""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from ...errors import BadMask

__all__ = ["PRECISIONS", "PreparedQuery", "Quant", "ScanResult", "qfmt_for", "quantised"]


@dataclass(frozen=True, eq=False)
class PreparedQuery:
    """A query, cropped to the bounding box of its mask, weights folded in.

    ``eq=False``: instances hash/compare by identity (the fields are arrays).
    """

    h: int
    w: int
    dy: np.ndarray  # int32 (K,)
    dx: np.ndarray  # int32 (K,)
    m2: np.ndarray  # float32 (K,), m_k^2 > 0
    qf: np.ndarray  # float32 (K, C): Q_k = m_k^2 * q_k
    qnorm: float  # sqrt(sum m_k^2 |q_k|^2), float64 from the unfolded q

    def __post_init__(self) -> None:
        dy = np.ascontiguousarray(self.dy, dtype=np.int32).reshape(-1)
        dx = np.ascontiguousarray(self.dx, dtype=np.int32).reshape(-1)
        m2 = np.ascontiguousarray(self.m2, dtype=np.float32).reshape(-1)
        qf = np.ascontiguousarray(self.qf, dtype=np.float32)
        K = dy.shape[0]
        if qf.ndim != 2 or qf.shape[0] != K or dx.shape[0] != K or m2.shape[0] != K or K < 1:
            raise ValueError("PreparedQuery: dy, dx, m2 must be (K,) and qf (K, C) with K >= 1")
        h, w = int(self.h), int(self.w)
        if h < 1 or w < 1 or dy.min() < 0 or dy.max() >= h or dx.min() < 0 or dx.max() >= w:
            raise ValueError("PreparedQuery: cells must lie inside the h x w box")
        if not np.all(m2 > 0):
            raise ValueError("PreparedQuery: m2 must be > 0")
        for name, val in (
            ("h", h),
            ("w", w),
            ("dy", dy),
            ("dx", dx),
            ("m2", m2),
            ("qf", qf),
            ("qnorm", float(self.qnorm)),
        ):
            object.__setattr__(self, name, val)

    @property
    def K(self) -> int:
        return int(self.dy.shape[0])

    @property
    def C(self) -> int:
        return int(self.qf.shape[1])

    @classmethod
    def from_grid(cls, qfeat: np.ndarray, weights: np.ndarray) -> PreparedQuery:
        """qfeat (H,W,C) query feature map, weights (H,W) mask weights in [0,1] on the
        grid; crops to the bounding box of weights>0.

        Raises :class:`~vfsearch.errors.BadMask` when no weight is > 0."""
        qfeat = np.asarray(qfeat)
        weights = np.asarray(weights, dtype=np.float64)
        if qfeat.ndim != 3 or weights.shape != qfeat.shape[:2]:
            raise ValueError("from_grid: qfeat must be (H,W,C) and weights (H,W)")
        on = weights > 0
        if not on.any():
            raise BadMask("the mask is empty: no cell of the feature grid has a weight above 0",
                          param="weights")
        ys, xs = np.nonzero(on)  # row-major order
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        m2 = weights[ys, xs] ** 2
        q = qfeat[ys, xs].astype(np.float64)
        qnorm = math.sqrt(float(np.sum(m2 * np.einsum("kc,kc->k", q, q))))
        return cls(
            h=int(y1 - y0 + 1),
            w=int(x1 - x0 + 1),
            dy=(ys - y0).astype(np.int32),
            dx=(xs - x0).astype(np.int32),
            m2=m2.astype(np.float32),
            qf=(m2[:, None] * q).astype(np.float32),
            qnorm=qnorm,
        )


@dataclass
class ScanResult:
    score: np.ndarray  # float32 (n,)  best score per image
    offset: np.ndarray  # int32 (n,)    argmax offset index
    upper: np.ndarray  # float32 (n,)  upper bound of the exact (unquantised) image score
    lower: np.ndarray  # float32 (n,)  lower bound of the exact image score
    eps_q: float = 0.0  # bound on what rounding the query moved any score (8-bit features)
    rescanned: int = 0  # images re-scanned with the int16 query to tighten their bounds

    @classmethod
    def empty(cls, n: int) -> ScanResult:
        """Zeroed outputs for n images, for the backends to fill in."""
        return cls(
            score=np.zeros(n, np.float32),
            offset=np.zeros(n, np.int32),
            upper=np.zeros(n, np.float32),
            lower=np.zeros(n, np.float32),
        )


# --------------------------------------------------------------------------- #
# query rounding for 8-bit features
# --------------------------------------------------------------------------- #

PRECISIONS = ("fast", "fine")  # what scan(precision=...) accepts
_QMAX = {1: 127, 2: 63}  # int8 query formats; 0 is int16
DROP_SHARE = 0.45  # quantised: dropped cells' share of the rounding bound (sqrt(1 + .45^2) = 1.1)
QMAX16 = 8191  # int16 query: 128 * hi + lo with int8 |hi|, |lo| <= 64 (offsets-in-lanes kernels)


@dataclass(frozen=True)
class Quant:
    qi: np.ndarray  # int16 (K, C), or int8 (K, C rounded up to 64) for the fast kernels
    sq: np.ndarray  # float32 (K,)
    eps_q: float
    qfmt: int  # 0: int16 rows, 1: int8 rows (VNNI), 2: int8 rows with |q| <= 63 (AVX2)


_quant_cache: weakref.WeakKeyDictionary[PreparedQuery, dict[int, Quant]] = (
    weakref.WeakKeyDictionary()
)
_quant_lock = threading.Lock()


def qfmt_for(backend: str, precision: str = "fast") -> int:
    """The query format a backend uses on 8-bit features: int8 for the AVX-512 VNNI kernel (1),
    7-bit for the AVX2 one (2) on the fast path; int16 (0) otherwise."""
    if precision == "fine":
        return 0
    return {"avx512": 1, "avx2": 2}.get(backend, 0)


def quantised(query: PreparedQuery, qfmt: int = 0) -> Quant:
    """Integer rounding of the folded query in format ``qfmt`` (see :func:`qfmt_for`), per-cell
    scale, and the bound it puts on every cosine (eps_q). Cached per query and format."""
    with _quant_lock:
        hit = _quant_cache.get(query, {}).get(qfmt)
    if hit is not None:
        return hit
    K, C = query.qf.shape
    qmax = _QMAX[qfmt] if qfmt else min(QMAX16, (2**31 - 1) // (C * 255))
    Q = query.qf.astype(np.float64)
    sq = (np.abs(Q).max(axis=1) / qmax).astype(np.float32)
    sqd = sq.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        qi = np.where(sqd[:, None] > 0, np.rint(Q / sqd[:, None]), 0.0)
    qi = np.clip(qi, -qmax, qmax)
    m2 = query.m2.astype(np.float64)

    def bound(qi, sqd):
        R = sqd[:, None] * qi - Q
        err = math.sqrt(float(np.sum(np.einsum("kc,kc->k", R, R) / m2)))
        return err / query.qnorm if query.qnorm > 0 else 0.0

    eps_q = bound(qi, sqd)
    if qfmt and K > 1 and eps_q > 0:
        # Cells a soft brush barely touched (weights of 0.001 at a stroke's edge): rounding
        # their whole query row to 0 moves a cosine by at most sqrt(m_k^2 |q_k|^2) / |q|, the
        # same bound as any rounding. The lightest cells go while together they stay under
        # DROP_SHARE of the rounding bound (the bounds widen by <= 10%, exactness is kept by
        # the refine as ever); the offsets kernels skip their rows.
        share = np.einsum("kc,kc->k", Q, Q) / m2  # m_k^2 |q_k|^2
        order = np.argsort(share, kind="stable")
        cum = np.cumsum(share[order])
        drop = order[:min(K - 1, int(np.searchsorted(
            cum, (DROP_SHARE * eps_q * query.qnorm) ** 2, side="right")))]
        if len(drop):
            qi[drop] = 0
            sq[drop] = 0
            sqd = sq.astype(np.float64)
            eps_q = bound(qi, sqd)
    if qfmt:
        rows = np.zeros((K, (C + 63) // 64 * 64), np.int8)
        rows[:, :C] = qi
    else:
        rows = np.ascontiguousarray(qi.astype(np.int16))
    res = Quant(qi=rows, sq=sq, eps_q=eps_q, qfmt=qfmt)
    with _quant_lock:
        _quant_cache.setdefault(query, {})[qfmt] = res
    return res
