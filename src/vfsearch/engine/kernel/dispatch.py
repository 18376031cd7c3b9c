"""Calling the compiled kernel: the C ABI (argument types, version, level and dtype codes), the
one thread pool, and :func:`scan_c` / :func:`read_split`, which split the work over it.

Nothing here builds or picks a backend (see :mod:`.build` and the package's ``scan``)."""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .query import PreparedQuery, ScanResult, quantised

__all__ = [
    "ABI_VERSION",
    "DTYPES",
    "LEVELS",
    "PATHS",
    "bind",
    "default_threads",
    "exact_c",
    "interleave_c",
    "read_split",
    "run_split",
    "scan_c",
]

#: what ``vfs_abi_version()`` in _kernel.c returns for the signatures :func:`bind` declares;
#: bump both together whenever an entry point's arguments change
ABI_VERSION = 5
LEVELS = {"generic": 0, "avx2": 1, "avx512": 2}
#: where an 8-bit scan puts its SIMD lanes: "auto" (by cost), "channels" (one dot per
#: (cell, query cell) pair), "offsets" (16 / 8 offsets per vector from a transposed image)
PATHS = {"auto": 0, "channels": 1, "offsets": 2, "single": 3}
DTYPES = {
    np.dtype(np.uint8): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.float32): 3,
}
MIN_IMAGES_PER_THREAD = 32
PIECES_PER_THREAD = 8  # run_split: pieces per thread, taken in turn (1 = an even split)
POOL_MAX = 64  # threads are started lazily, only as many as ever used at once
READ_ALIGN = 1 << 16  # read_split splits at multiples of this (whole 8-byte words per thread)


def bind(lib: ctypes.CDLL) -> None:
    """Declare the entry points' signatures on a freshly opened library (ABI ``ABI_VERSION``)."""
    P, N, I64, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    lib.vfs_abi_version.argtypes = []
    lib.vfs_abi_version.restype = N
    lib.vfs_cpu_level.argtypes = []
    lib.vfs_cpu_level.restype = N
    lib.vfs_scan.argtypes = [
        N, N, P, I64, N, N, N,  # level, dtype, feats, n, H, W, C
        P, P, P,  # scale, sqnorm, qerr2
        N, N, N, P, P, P,  # h, w, K, dy, dx, m2
        P, P, D, D,  # qdata, qscale, qnorm, eps_q
        P, P, P, P,  # score, offset, upper, lower
        N, P, I64, N,  # qfmt, ids (int64 rows or NULL), nids, path
        P,  # inter: the images transposed for the offsets path (lanes.Interleaved) or NULL
    ]  # fmt: skip
    lib.vfs_scan.restype = N
    lib.vfs_exact.argtypes = [
        N, P, I64, N, N, N,  # level, feats (float32), m, H, W, C
        N, N, N, P, P, P, P, D,  # h, w, K, dy, dx, m2 (double), Q (double K x C), qnorm
        P, P,  # best (double), offset (int32)
    ]  # fmt: skip
    lib.vfs_exact.restype = N
    lib.vfs_interleave.argtypes = [N, P, I64, N, N, N, N, P]  # level, feats, n, H, W, C, sgn, out
    lib.vfs_interleave.restype = N
    lib.vfs_read_floor.argtypes = [P, I64, N]
    lib.vfs_read_floor.restype = ctypes.c_uint64


# --------------------------------------------------------------------------- #
# threading
# --------------------------------------------------------------------------- #

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _get_pool() -> ThreadPoolExecutor:
    """The one persistent pool shared by every scan and read."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    max_workers=max(POOL_MAX, default_threads()),
                    thread_name_prefix="vfsearch-scan",
                )
    return _pool


def run_split(n: int, nthreads: int, fn, min_per_thread: int | None = None) -> list:
    """Call fn(i0, i1) over contiguous ranges covering [0, n), on up to `nthreads` threads
    (fewer when n is small); returns the calls' results (in no particular order).

    The range is cut into :data:`PIECES_PER_THREAD` pieces per thread, and each thread takes
    the next piece when it finishes one. On a laptop the search shares its cores with the
    browser showing the results: an even split waits for the thread the browser slowed down,
    these pieces let the other threads take over its share."""
    if min_per_thread is None:
        min_per_thread = MIN_IMAGES_PER_THREAD
    min_per_thread = max(1, min_per_thread)
    t = max(1, min(nthreads, POOL_MAX, n // min_per_thread or 1))
    if t == 1:
        return [fn(0, n)]
    pieces = max(t, min(t * PIECES_PER_THREAD, n // min_per_thread))
    bounds = [n * i // pieces for i in range(pieces + 1)]
    taken = itertools.count()
    lock = threading.Lock()

    def worker() -> list:
        done = []
        while True:
            with lock:
                i = next(taken)
            if i >= pieces:
                return done
            done.append(fn(bounds[i], bounds[i + 1]))

    pool = _get_pool()
    futs = [pool.submit(worker) for _ in range(t)]
    return [r for f in futs for r in f.result()]


# --------------------------------------------------------------------------- #
# the C entry points
# --------------------------------------------------------------------------- #


def _ptr(a: np.ndarray | None, i0: int = 0) -> int | None:
    if a is None:
        return None
    return a.ctypes.data + i0 * (a.strides[0] if a.ndim else 0)


def scan_c(
    lib,
    backend,
    feats,
    sqnorm,
    query: PreparedQuery,
    scale,
    qerr2,
    threads: int = 1,
    out: ScanResult | None = None,
    qfmt: int = 0,
    ids: np.ndarray | None = None,
    path: str = "auto",
    inter=None,
) -> ScanResult:
    """``vfs_scan`` at ``backend``'s level over checked, C-contiguous inputs, split by image.

    ``ids`` (int64, each in [0, n)): scan only those rows, in that order (result i is row
    ``ids[i]``) without copying them. ``path``: see :data:`PATHS`. ``inter``: the features'
    :class:`~.lanes.Interleaved` copy (checked by the caller), read by the offsets path."""
    n, H, W, C = feats.shape
    if ids is not None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise IndexError("scan ids out of range")
    m = n if ids is None else len(ids)
    out = ScanResult.empty(m) if out is None else out
    if m == 0:
        return out
    is8 = feats.dtype.itemsize == 1
    if is8:
        qz = quantised(query, qfmt)
        qdata, qscale, eps_q = qz.qi, qz.sq, qz.eps_q
    else:
        qdata, qscale, eps_q, qfmt = query.qf, None, 0.0, 0
    level = LEVELS[backend]
    dtype = DTYPES[feats.dtype]
    code = PATHS[path]

    def run(i0: int, i1: int) -> int:
        if i1 <= i0:
            return 0
        if ids is None:  # rows [i0, i1)
            rows, r0, sel, nsel = i1 - i0, i0, None, 0
        else:  # every row, the ids [i0, i1) of them
            rows, r0, sel, nsel = n, 0, _ptr(ids, i0), i1 - i0
        return lib.vfs_scan(
            level, dtype, _ptr(feats, r0), rows, H, W, C,
            _ptr(scale, r0), _ptr(sqnorm, r0), _ptr(qerr2, r0),
            query.h, query.w, query.K, _ptr(query.dy), _ptr(query.dx), _ptr(query.m2),
            _ptr(qdata), _ptr(qscale), float(query.qnorm), float(eps_q),
            _ptr(out.score, i0), _ptr(out.offset, i0), _ptr(out.upper, i0), _ptr(out.lower, i0),
            qfmt, sel, nsel, code, None if inter is None else _ptr(inter.words, r0),
        )  # fmt: skip

    for rc in run_split(m, threads, run):
        if rc != 0:
            raise RuntimeError(f"vfs_scan failed with code {rc} (backend {backend})")
    out.eps_q = float(eps_q)
    return out


def interleave_c(lib, backend: str, feats: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """``vfs_interleave``: 8-bit ``feats`` (n, H, W, C), C-contiguous, into ``out`` (n, words
    per image) uint32, split by image."""
    n, H, W, C = feats.shape
    sgn = int(feats.dtype == np.int8)

    def run(i0: int, i1: int) -> int:
        if i1 <= i0:
            return 0
        return lib.vfs_interleave(LEVELS[backend], _ptr(feats, i0), i1 - i0, H, W, C, sgn,
                                  _ptr(out, i0))

    for rc in run_split(n, threads, run):
        if rc != 0:
            raise RuntimeError(f"vfs_interleave failed with code {rc}")


def exact_c(lib, backend: str, feats: np.ndarray, dy, dx, m2, Q, qnorm: float,
            threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``vfs_exact`` over C-contiguous float32 ``feats`` (m, H, W, C), split by image."""
    m, H, W, C = feats.shape
    best = np.zeros(m, np.float64)
    offset = np.zeros(m, np.int32)
    if m == 0:
        return best, offset
    h, w = int(dy.max()) + 1, int(dx.max()) + 1
    level = LEVELS[backend]

    def run(i0: int, i1: int) -> int:
        if i1 <= i0:
            return 0
        return lib.vfs_exact(level, _ptr(feats, i0), i1 - i0, H, W, C, h, w, len(dy), _ptr(dy),
                             _ptr(dx), _ptr(m2), _ptr(Q), float(qnorm), _ptr(best, i0),
                             _ptr(offset, i0))

    for rc in run_split(m, threads, run, min_per_thread=64):
        if rc != 0:
            raise RuntimeError(f"vfs_exact failed with code {rc} (backend {backend})")
    return best, offset


def read_split(read, nbytes: int, threads: int) -> int:
    """``read(i0, i1)`` -> checksum of bytes [i0, i1), on up to `threads` ranges that start at
    multiples of READ_ALIGN; returns the XOR of the parts (= the checksum of the whole)."""
    t = max(1, min(threads, POOL_MAX, nbytes // READ_ALIGN or 1))
    if t == 1:
        return read(0, nbytes)
    bounds = [
        min(nbytes, (nbytes * i // t) // READ_ALIGN * READ_ALIGN) for i in range(t)
    ] + [nbytes]
    pool = _get_pool()
    futs = [pool.submit(read, bounds[i], bounds[i + 1]) for i in range(t)]
    acc = 0
    for f in futs:
        acc ^= f.result()
    return acc
