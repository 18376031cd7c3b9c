"""Region-cosine search kernel: the public surface (:func:`scan`, :class:`PreparedQuery`,
:class:`ScanResult`, :func:`available_backends`, :func:`resolve_backend`, :func:`read_floor`).

For a query of K cells at (dy_k, dx_k) inside an h x w box, with mask weights m_k
and query vectors q_k, and an image feature map x (H, W, C), at every offset (a, b):

    num(a,b) = sum_k m_k^2 <q_k, x[a+dy_k, b+dx_k]>
    den(a,b) = sum_k m_k^2 |x[a+dy_k, b+dx_k]|^2
    score    = num / (qnorm * sqrt(den))      (0 when den <= 0 or qnorm == 0)

The image score is the max over offsets (ties -> lowest offset index
o = a*(W-w+1)+b).

Backends: "avx512" (AVX-512 VNNI), "avx2" (AVX2+FMA+F16C), "generic" (plain C),
all in ``_kernel.c`` compiled on first use into a cache directory, and "numpy"
(always available). ``VFSEARCH_KERNEL`` forces the backend used by
``backend="auto"``.

8-bit features are dotted in exact integer arithmetic with a rounded query:
int16 everywhere (``precision="fine"``), or, on the fast path, int8 (VNNI) /
7-bit (AVX2). Each image's [lower, upper] bounds hold the exact score whatever
the rounding (its effect is eps_q); ``tighten_k`` re-scans the images that could
reach the top k with the int16 query (in place, by row id), so the fast path
costs the refine step almost nothing. The fast formats also round to 0 the rows of
cells a soft brush barely touched (weights ~0.001 at a stroke's edge) while their
share stays under ``query.DROP_SHARE`` of the rounding bound; eps_q includes them,
and the offsets kernels skip those rows (the box, and so where the region fits,
does not change).

The SIMD kernels put different things in their vector lanes, chosen per query by a
cost model (``path``): the channels of one cell (one dot per (cell, query cell)
pair, wide layers on small grids), 16 / 8 consecutive offsets (a transposed copy
of each image, many offsets and few channels: 14x14, 28x28 grids), or, when the
query box is the whole grid (one offset: whole-image queries), the channels of
each cell folded lane by lane without horizontal sums.

Internal modules: :mod:`.query` (query, result, query rounding), :mod:`.build` (compile, load,
ABI check, self-check), :mod:`.dispatch` (C ABI, thread pool, C calls), :mod:`.numpy_path`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ...errors import BackendUnavailable, BadMask, BadParameter
from . import build
from .dispatch import DTYPES, LEVELS, PATHS, default_threads, exact_c, read_split, scan_c
from .lanes import Interleaved, interleave, interleaved_nbytes
from .numpy_path import exact_numpy, read_checksum, scan_numpy
from .query import PRECISIONS, PreparedQuery, ScanResult, qfmt_for

__all__ = [
    "BACKENDS",
    "Interleaved",
    "PreparedQuery",
    "ScanResult",
    "available_backends",
    "exact_best",
    "interleave",
    "interleaved_nbytes",
    "read_floor",
    "rows_by_id",
    "resolve_backend",
    "scan",
]

#: every backend name this kernel knows, fastest first ("auto" picks the first available)
BACKENDS = ("avx512", "avx2", "generic", "numpy")


def available_backends() -> list[str]:
    """Backends usable on this machine, best first, e.g. ["avx2", "generic", "numpy"]."""
    return list(build.load().names)


def resolve_backend(backend: str = "auto") -> str:
    """The backend a scan with ``backend`` runs on: "auto" means ``VFSEARCH_KERNEL`` if set,
    else the best available one.

    Raises :class:`~vfsearch.errors.BadParameter` for a name that is no backend and
    :class:`~vfsearch.errors.BackendUnavailable` for one this machine or build does not have."""
    state = build.load()
    b = (backend or "auto").strip().lower()
    what, param = f"kernel backend {backend!r}", "backend"
    if b == "auto":
        env = os.environ.get("VFSEARCH_KERNEL", "").strip().lower()
        if not env or env == "auto":
            return state.names[0]
        b, what, param = env, f"VFSEARCH_KERNEL={env!r}", None
    if b not in BACKENDS:
        raise BadParameter(
            f"{what} is not a kernel backend (choose one of auto, {', '.join(BACKENDS)})",
            param=param,
        )
    if b not in state.names:
        raise BackendUnavailable(
            f"{what} is not available on this machine: {state.missing.get(b, 'not built')} "
            f"(available: {', '.join(state.names)})",
            param=param,
        )
    return b


def _check_inputs(feats, sqnorm, query, scale, qerr2):
    if not isinstance(query, PreparedQuery):
        raise TypeError("query must be a PreparedQuery")
    feats = np.asarray(feats) if not isinstance(feats, np.ndarray) else feats
    if feats.ndim != 4:
        raise ValueError(f"feats must be (n,H,W,C), got shape {feats.shape}")
    if not feats.dtype.isnative or feats.dtype not in DTYPES:
        raise TypeError(f"feats dtype must be native uint8/int8/float16/float32, got {feats.dtype}")
    if not feats.flags.c_contiguous:
        feats = np.ascontiguousarray(feats)
    n, H, W, C = feats.shape
    if C != query.C:
        raise ValueError(f"feature width C={C} does not match the query ({query.C})")
    if query.h > H or query.w > W:
        raise ValueError(f"query box {query.h}x{query.w} larger than the grid {H}x{W}")
    sqnorm = np.ascontiguousarray(sqnorm, dtype=np.float32)
    if sqnorm.shape != (n, H, W):
        raise ValueError(f"sqnorm must be {(n, H, W)}, got {sqnorm.shape}")
    is8 = feats.dtype.itemsize == 1
    if is8:
        if scale is None:
            raise ValueError("scale is required for 8-bit features")
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        if scale.shape != (n, H, W):
            raise ValueError(f"scale must be {(n, H, W)}, got {scale.shape}")
        if qerr2 is not None:
            qerr2 = np.ascontiguousarray(qerr2, dtype=np.float32)
            if qerr2.shape != (n, H, W):
                raise ValueError(f"qerr2 must be {(n, H, W)}, got {qerr2.shape}")
    else:
        scale = None
        qerr2 = None
    return feats, sqnorm, scale, qerr2, is8


def rows_by_id(ids, feats, sqnorm, scale=None, qerr2=None):
    """Rows ``ids`` of a block's scanned arrays, copied (an absent array stays None): for the
    backends that cannot scan a subset in place."""
    take = lambda a: None if a is None else a[ids]  # noqa: E731
    return feats[ids], sqnorm[ids], take(scale), take(qerr2)


def scan(
    feats,
    sqnorm,
    query: PreparedQuery,
    *,
    scale=None,
    qerr2=None,
    threads=None,
    backend="auto",
    precision: str = "fast",
    tighten_k: int | None = None,
    tighten_floor: float = -math.inf,
    ids=None,
    path: str = "auto",
    inter: Interleaved | None = None,
) -> ScanResult:
    """Best region-cosine score of `query` in each of the n images.

    feats (n,H,W,C) uint8|int8|float16|float32, C-contiguous (np.memmap fine);
    sqnorm (n,H,W) float32 = |dequantised cell|^2; for 8-bit: scale (n,H,W)
    float32 (required) and qerr2 (n,H,W) float32 = |true - dequantised cell|^2
    (None -> zeros). Returns per-image score, argmax offset and bounds
    [lower, upper] on the exact (unquantised) image score.

    8-bit features: ``precision="fast"`` lets the AVX-512 VNNI kernel round the
    query to int8 and the AVX2 one to 6 bits (faster; wider bounds), ``"fine"``
    always uses an int16 query. With ``tighten_k``, every image whose upper bound reaches the
    k-th best lower bound (or ``tighten_floor``, if higher) is re-scanned with
    the int16 query, so the images that can reach a top k have tight bounds.
    ``ids`` (integers in [0, n)): scan only those rows (result i is row ``ids[i]``), without
    copying them. ``path`` ("auto", "channels", "offsets", "single") forces where the 8-bit
    SIMD kernels put their lanes (for tests and benchmarks; "auto" picks by cost). ``inter``:
    the features' cell-interleaved copy (:func:`interleave`), which the offsets path then reads
    instead of transposing each image (same results; the cost model counts no transposes).

    Raises :class:`~vfsearch.errors.BadParameter` for an unknown ``precision`` or ``backend``
    and :class:`~vfsearch.errors.BackendUnavailable` for a backend this machine lacks.
    """
    feats, sqnorm, scale, qerr2, is8 = _check_inputs(feats, sqnorm, query, scale, qerr2)
    if precision not in PRECISIONS:
        raise BadParameter(f"precision must be 'fast' or 'fine', got {precision!r}",
                           param="precision")
    if path not in PATHS:
        raise BadParameter(f"path must be one of {', '.join(PATHS)}, got {path!r}", param="path")
    if ids is not None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= feats.shape[0]):
            raise ValueError(f"ids must lie in [0, {feats.shape[0]})")
    nthreads = default_threads() if threads is None else max(1, int(threads))
    b = resolve_backend(backend)
    qfmt = qfmt_for(b, precision) if is8 else 0
    if b == "numpy":
        if ids is not None:
            feats, sqnorm, scale, qerr2 = rows_by_id(ids, feats, sqnorm, scale, qerr2)
        return scan_numpy(feats, sqnorm, query, scale, qerr2, threads=nthreads)
    if inter is not None and not inter.matches(feats):
        raise ValueError(f"inter was made from features {inter.shape} {inter.dtype}, not "
                         f"{feats.shape} {feats.dtype}")
    lib = build.load().lib
    out = scan_c(lib, b, feats, sqnorm, query, scale, qerr2, threads=nthreads, qfmt=qfmt,
                 ids=ids, path=path, inter=inter)
    if qfmt and tighten_k and len(out.lower):
        k = min(int(tighten_k), len(out.lower))
        thr = max(float(tighten_floor), float(np.partition(out.lower, -k)[-k]))
        cand = np.flatnonzero(out.upper >= thr)
        if len(cand):  # the candidates' rows, re-scanned in place with the int16 query
            rows = cand if ids is None else ids[cand]
            sub = scan_c(lib, b, feats, sqnorm, query, scale, qerr2, threads=nthreads, qfmt=0,
                         ids=rows, path=path, inter=inter)
            out.score[cand], out.offset[cand] = sub.score, sub.offset
            out.upper[cand], out.lower[cand] = sub.upper, sub.lower
            out.rescanned = len(cand)
    return out


def exact_best(feats, weights, qfeat, *, threads=None, backend: str = "auto"):
    """Exact region-cosine of a few images (the refine step): float64 best score and its
    offset (lowest on ties) per image, from float features (m, H, W, C) (float16 / float32;
    float32 arithmetic on the values as stored, sums in float64), ``weights`` (H, W) the mask
    on the grid and ``qfeat`` (H, W, C) the query's feature map. Each image's result depends
    on its values alone, so identical rows tie exactly. Returns (best (m,), offset (m,))."""
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float64)
    ys, xs = np.nonzero(weights > 0)
    if not len(ys):
        raise BadMask("the mask is empty: no cell of the feature grid has a weight above 0",
                      param="weights")
    dy = np.ascontiguousarray(ys - ys.min(), dtype=np.int32)
    dx = np.ascontiguousarray(xs - xs.min(), dtype=np.int32)
    m2 = np.ascontiguousarray(weights[ys, xs] ** 2)
    q = np.asarray(qfeat, dtype=np.float64)[ys, xs]
    Q = np.ascontiguousarray(m2[:, None] * q)
    qnorm = math.sqrt(float(np.sum(m2 * np.einsum("kc,kc->k", q, q))))
    if feats.ndim != 4 or feats.shape[1:3] != weights.shape or feats.shape[3] != q.shape[1]:
        raise ValueError("exact_best: feats must be (m, H, W, C) on the mask's grid and C")
    b = resolve_backend(backend)
    if b == "numpy":
        best, off = exact_numpy(feats, dy, dx, m2, Q, qnorm)
    else:
        nthreads = default_threads() if threads is None else max(1, int(threads))
        best, off = exact_c(build.load().lib, b, feats, dy, dx, m2, Q, qnorm, threads=nthreads)
    return best, off.astype(np.int64)


def read_floor(arr, threads=None) -> int:
    """Read every byte of a C-contiguous array once, split across threads like `scan`
    (the memory-bandwidth floor for benchmarks). Returns a checksum of the bytes (the XOR of
    their 8-byte words, the trailing ``nbytes % 32`` bytes XORed in one by one), the same
    whatever the backend or thread count."""
    a = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
    if not a.flags.c_contiguous:
        raise ValueError("read_floor needs a C-contiguous array")
    nbytes = a.nbytes
    if nbytes == 0:
        return 0
    nthreads = default_threads() if threads is None else max(1, int(threads))
    state = build.load()
    c_levels = [b for b in state.names if b in LEVELS]
    if state.lib is not None and c_levels:
        lib, level, base = state.lib, LEVELS[c_levels[0]], a.ctypes.data

        def read(i0: int, i1: int) -> int:
            return int(lib.vfs_read_floor(base + i0, i1 - i0, level)) if i1 > i0 else 0
    else:
        flat = a.reshape(-1).view(np.uint8)

        def read(i0: int, i1: int) -> int:
            return read_checksum(flat, i0, i1)

    return read_split(read, nbytes, nthreads)
