"""The numpy backend: the same scan, epilogue and bounds as the C kernel, vectorised over
chunks of images (always available; the fallback when the C kernel cannot be built)."""

from __future__ import annotations

import math

import numpy as np

from .dispatch import run_split
from .query import PreparedQuery, ScanResult, quantised

__all__ = ["CHUNK", "angle_bound", "exact_numpy", "read_checksum", "scan_numpy"]

SLACK = 1e-5  # float rounding allowance of the bounds (VFS_SLACK in _kernel.c)
ANGLE_C = 0.6190  # slope of the chord of (1 - x)^(-1/2) over [0, 1/4], rounded up
CHUNK = 256  # images per matmul (half that for 8-bit features, which go through float64)


def _windows(a: np.ndarray, query: PreparedQuery, OH: int, OW: int, k: int) -> np.ndarray:
    """a[..., dy_k:dy_k+OH, dx_k:dx_k+OW] for (m, H, W[, ...]) arrays."""
    y, x = int(query.dy[k]), int(query.dx[k])
    return a[:, y : y + OH, x : x + OW]


def angle_bound(d: np.ndarray) -> np.ndarray:
    """Upper bound on asin(d) (the most a relative error d can move a cosine), as in the C
    kernel: d (1 + 0.619 d^2) below 0.5 (>= d / sqrt(1 - d^2) >= asin d there), pi beyond."""
    return np.where(d < 0.5, d * (1.0 + ANGLE_C * d * d), math.pi)


def _finish(
    num, den, qe, query: PreparedQuery, eps_q: float, is8: bool, out: ScanResult, i0: int
) -> None:
    """Same epilogue as the C kernel, vectorised: num/den/qe are (m, O) float64."""
    m = num.shape[0]
    qn = float(query.qnorm)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (den > 0) & (qn > 0)
        s = np.where(ok, num / (qn * np.sqrt(np.where(ok, den, 1.0))), 0.0)
    bo = np.argmax(s, axis=1)
    rows = np.arange(m)
    best = s[rows, bo]
    if not is8:
        up = best + SLACK
        lo = best - SLACK
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(
                qe > 0, np.where(den > 0, np.sqrt(qe / np.where(den > 0, den, 1.0)), np.inf), 0.0
            )
            f = angle_bound(d)
        up = np.max(s + f, axis=1) + eps_q + SLACK
        lo = best - (eps_q + f[rows, bo] + SLACK)
    sl = slice(i0, i0 + m)
    out.score[sl] = best
    out.offset[sl] = bo
    out.upper[sl] = up
    out.lower[sl] = lo


def scan_numpy(
    feats, sqnorm, query, scale, qerr2, threads: int = 1, out: ScanResult | None = None
) -> ScanResult:
    """The scan over checked inputs (8-bit: exact integer dots with the int16 query)."""
    n, H, W, C = feats.shape
    out = ScanResult.empty(n) if out is None else out
    if n == 0:
        return out
    is8 = feats.dtype.itemsize == 1
    OH, OW = H - query.h + 1, W - query.w + 1
    K = query.K
    if is8:
        qz = quantised(query)
        qmat = qz.qi.astype(np.float64).T  # exact integer dots in float64
        wk = qz.sq.astype(np.float64)
        eps_q = qz.eps_q
        chunk = max(1, CHUNK // 2)
    else:
        qmat = query.qf.T  # float32 BLAS
        wk = np.ones(K)
        eps_q = 0.0
        chunk = CHUNK
    m2 = query.m2.astype(np.float64)

    def run(i0: int, i1: int) -> None:
        for s0 in range(i0, i1, chunk):
            s1 = min(i1, s0 + chunk)
            m = s1 - s0
            x = np.asarray(feats[s0:s1]).reshape(m, H * W, C)
            x = x.astype(qmat.dtype)
            D = np.matmul(x, qmat).astype(np.float64).reshape(m, H, W, K)
            sn = sqnorm[s0:s1].astype(np.float64)
            sc = scale[s0:s1].astype(np.float64) if is8 else None
            qr = qerr2[s0:s1].astype(np.float64) if (is8 and qerr2 is not None) else None
            num = np.zeros((m, OH, OW))
            den = np.zeros((m, OH, OW))
            qe = np.zeros((m, OH, OW))
            for k in range(K):
                Dk = _windows(D[..., k], query, OH, OW, k)
                if is8:
                    num += (_windows(sc, query, OH, OW, k) * wk[k]) * Dk
                else:
                    num += Dk
                den += m2[k] * _windows(sn, query, OH, OW, k)
                if qr is not None:
                    qe += m2[k] * _windows(qr, query, OH, OW, k)
            _finish(
                num.reshape(m, -1),
                den.reshape(m, -1),
                qe.reshape(m, -1),
                query,
                eps_q,
                is8,
                out,
                s0,
            )

    run_split(n, threads, run, min_per_thread=chunk)
    out.eps_q = float(eps_q)
    return out


def read_checksum(flat: np.ndarray, i0: int, i1: int) -> int:
    """What ``vfs_read_floor`` returns for bytes [i0, i1) of a uint8 array: the XOR of its
    8-byte words over the largest multiple of 32 bytes, then of the remaining single bytes."""
    part = flat[i0:i1]
    m = len(part) // 32 * 32
    acc = int(np.bitwise_xor.reduce(part[:m].view(np.uint64))) if m else 0
    if m < len(part):
        acc ^= int(np.bitwise_xor.reduce(part[m:]))
    return acc


def exact_numpy(feats, dy, dx, m2, Q, qnorm: float) -> tuple[np.ndarray, np.ndarray]:
    """What ``vfs_exact`` computes, in numpy: float64 best score and offset per image, every
    image on its own in the same order of operations (identical rows tie exactly)."""
    m, H, W, C = feats.shape
    h, w = int(dy.max()) + 1, int(dx.max()) + 1
    OH, OW = H - h + 1, W - w + 1
    best = np.zeros(m, np.float64)
    offset = np.zeros(m, np.int32)
    for i in range(m):
        x = feats[i].astype(np.float64)
        sq = np.einsum("hwc,hwc->hw", x, x)
        num = np.zeros((OH, OW))
        den = np.zeros((OH, OW))
        for k in range(len(dy)):
            y, xx = int(dy[k]), int(dx[k])
            num += x[y:y + OH, xx:xx + OW] @ Q[k]
            den += m2[k] * sq[y:y + OH, xx:xx + OW]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where((den > 0) & (qnorm > 0), num / (qnorm * np.sqrt(den)), 0.0)
        o = int(np.argmax(s))
        best[i], offset[i] = s.reshape(-1)[o], o
    return best, offset
