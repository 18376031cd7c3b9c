"""Region-cosine search kernel: build/load of the C kernel, dispatch, numpy fallback.

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
6-bit (AVX2), about 1.3-1.6x faster. Each image's [lower, upper] bounds hold the
exact score whatever the rounding (its effect is eps_q); ``tighten_k`` re-scans
the images that could reach the top k with the int16 query, so the fast path
costs the refine step almost nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PreparedQuery",
    "ScanResult",
    "available_backends",
    "read_floor",
    "scan",
    "score_map",
]

_SRC = Path(__file__).with_name("_kernel.c")
_CFLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_LEVELS = {"generic": 0, "avx2": 1, "avx512": 2}
_DTYPES = {
    np.dtype(np.uint8): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.float32): 3,
}
_SLACK = 1e-5
_ANGLE_C = 0.6190  # slope of the chord of (1 - x)^(-1/2) over [0, 1/4], rounded up
_NUMPY_CHUNK = 256
_MIN_IMAGES_PER_THREAD = 32


# --------------------------------------------------------------------------- #
# query
# --------------------------------------------------------------------------- #


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
        grid; crops to the bounding box of weights>0."""
        qfeat = np.asarray(qfeat)
        weights = np.asarray(weights, dtype=np.float64)
        if qfeat.ndim != 3 or weights.shape != qfeat.shape[:2]:
            raise ValueError("from_grid: qfeat must be (H,W,C) and weights (H,W)")
        on = weights > 0
        if not on.any():
            raise ValueError("from_grid: the mask is empty (no weight > 0)")
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


@dataclass(frozen=True)
class _Quant:
    qi: np.ndarray  # int16 (K, C), or int8 (K, C rounded up to 64) for the fast kernels
    sq: np.ndarray  # float32 (K,)
    eps_q: float
    qfmt: int  # 0: int16 rows, 1: int8 rows (VNNI), 2: int8 rows with |q| <= 31 (AVX2)


_quant_cache: weakref.WeakKeyDictionary[PreparedQuery, dict[int, _Quant]] = (
    weakref.WeakKeyDictionary()
)
_quant_lock = threading.Lock()
_QMAX = {1: 127, 2: 31}  # int8 query formats; 0 is int16


def _qfmt(backend: str, precision: str = "fast") -> int:
    """The query format a backend uses on 8-bit features: int8 for the AVX-512 VNNI kernel (1),
    6-bit for the AVX2 one (2) on the fast path; int16 (0) otherwise."""
    if precision == "fine":
        return 0
    return {"avx512": 1, "avx2": 2}.get(backend, 0)


def _quantised(query: PreparedQuery, qfmt: int = 0) -> _Quant:
    """Integer rounding of the folded query in format ``qfmt`` (see :func:`_qfmt`), per-cell
    scale, and the bound it puts on every cosine (eps_q)."""
    with _quant_lock:
        hit = _quant_cache.get(query, {}).get(qfmt)
    if hit is not None:
        return hit
    K, C = query.qf.shape
    qmax = _QMAX[qfmt] if qfmt else min(16383, (2**31 - 1) // (C * 255))
    Q = query.qf.astype(np.float64)
    sq = (np.abs(Q).max(axis=1) / qmax).astype(np.float32)
    sqd = sq.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        qi = np.where(sqd[:, None] > 0, np.rint(Q / sqd[:, None]), 0.0)
    qi = np.clip(qi, -qmax, qmax)
    R = sqd[:, None] * qi - Q
    m2 = query.m2.astype(np.float64)
    err = math.sqrt(float(np.sum(np.einsum("kc,kc->k", R, R) / m2)))
    eps_q = err / query.qnorm if query.qnorm > 0 else 0.0
    if qfmt:
        rows = np.zeros((K, (C + 63) // 64 * 64), np.int8)
        rows[:, :C] = qi
    else:
        rows = np.ascontiguousarray(qi.astype(np.int16))
    res = _Quant(qi=rows, sq=sq, eps_q=eps_q, qfmt=qfmt)
    with _quant_lock:
        _quant_cache.setdefault(query, {})[qfmt] = res
    return res


# --------------------------------------------------------------------------- #
# build / load
# --------------------------------------------------------------------------- #

_load_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_backends: list[str] | None = None
_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _cache_dir() -> Path:
    root = os.environ.get("VFSEARCH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "vfsearch"
    return base / "kernels"


def _build() -> Path:
    cc = shlex.split(os.environ.get("CC") or "cc")
    src = _SRC.read_bytes()
    ver = subprocess.run(
        cc + ["--version"], check=False, capture_output=True, text=True, timeout=60
    )
    if ver.returncode != 0:
        raise RuntimeError(f"{cc[0]} --version failed: {ver.stderr.strip()}")
    h = hashlib.sha256()
    for part in (
        src,
        ver.stdout.encode(),
        " ".join(cc + _CFLAGS).encode(),
        platform.machine().encode(),
    ):
        h.update(part)
        h.update(b"\0")
    name = f"_kernel-{h.hexdigest()[:20]}.so"
    dirs = [
        _cache_dir(),
        Path(tempfile.gettempdir())
        / f"vfsearch-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}",
    ]
    last_err: Exception | None = None
    for d in dirs:
        so = d / name
        if so.exists():
            return so
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            try:
                res = subprocess.run(
                    cc + _CFLAGS + [str(_SRC), "-o", str(tmp), "-lm"],
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if res.returncode != 0:
                    raise RuntimeError(
                        f"compiling {_SRC.name} failed:\n{res.stderr.strip()[-2000:]}"
                    )
                os.replace(tmp, so)
            finally:
                if tmp.exists():
                    tmp.unlink()
            _remove_stale_temps(d)
            return so
        except OSError as e:  # unwritable cache dir: try the next one
            last_err = e
    raise RuntimeError(f"cannot write the kernel cache: {last_err}")


def _remove_stale_temps(d: Path, age_s: float = 3600.0) -> None:
    """Temp files left by builds that were killed half-way (best effort)."""
    now = time.time()
    for p in d.glob("._kernel-*.tmp"):
        try:
            if now - p.stat().st_mtime > age_s:
                p.unlink()
        except OSError:
            pass


def _bind(lib: ctypes.CDLL) -> None:
    P, I, I64, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    lib.vfs_cpu_level.argtypes = []
    lib.vfs_cpu_level.restype = I
    lib.vfs_scan.argtypes = [
        I,
        I,
        P,
        I64,
        I,
        I,
        I,
        P,
        P,
        P,
        I,
        I,
        I,
        P,
        P,
        P,
        P,
        P,
        D,
        D,
        P,
        P,
        P,
        P,
        I,
    ]
    lib.vfs_scan.restype = I
    lib.vfs_read_floor.argtypes = [P, I64, I]
    lib.vfs_read_floor.restype = ctypes.c_uint64


def _load() -> tuple[ctypes.CDLL | None, list[str]]:
    global _lib, _backends
    if _backends is not None:
        return _lib, _backends
    with _load_lock:
        if _backends is not None:
            return _lib, _backends
        lib = None
        backends = ["numpy"]
        try:
            so = _build()
            lib = ctypes.CDLL(str(so))
            _bind(lib)
        except Exception as e:  # noqa: BLE001 - any failure -> numpy fallback
            lib = None
            _warn_once(
                "build",
                f"vfsearch: C search kernel unavailable ({e}); using the slow numpy backend",
            )
        if lib is not None:
            _lib = lib
            level = int(lib.vfs_cpu_level())
            backends = ["generic", "numpy"]
            for name in ("avx2", "avx512"):
                if _LEVELS[name] > level:
                    continue
                ok, why = _self_check(lib, name)
                if ok:
                    backends.insert(0, name)
                else:
                    _warn_once(
                        f"check-{name}",
                        f"vfsearch: {name} kernel disabled, self-check failed: {why}",
                    )
        _lib = lib
        _backends = backends
        return _lib, _backends


def _self_check(lib: ctypes.CDLL, name: str) -> tuple[bool, str]:
    """Run a SIMD backend against the generic C path on small random cases."""
    rng = np.random.default_rng(1234)
    try:
        for C in (16, 37, 69, 130):
            for dt in (np.uint8, np.int8, np.float16, np.float32):
                n, H, W = 3, 5, 6
                if dt == np.uint8:
                    feats = rng.integers(0, 256, (n, H, W, C)).astype(np.uint8)
                elif dt == np.int8:
                    feats = rng.integers(-127, 128, (n, H, W, C)).astype(np.int8)
                else:
                    feats = rng.standard_normal((n, H, W, C)).astype(dt)
                scale = None
                deq = feats.astype(np.float64)
                if np.dtype(dt).itemsize == 1:
                    scale = rng.uniform(0.01, 0.1, (n, H, W)).astype(np.float32)
                    deq = deq * scale[..., None]
                sqn = np.einsum("nhwc,nhwc->nhw", deq, deq).astype(np.float32)
                qerr2 = (
                    rng.uniform(0, 1e-3, (n, H, W)).astype(np.float32)
                    if scale is not None
                    else None
                )
                for wts in (
                    rng.uniform(0.1, 1, (H, W)) * (rng.random((H, W)) < 0.5),
                    np.eye(H, W)[:, ::-1],
                ):
                    wts = np.array(wts)
                    wts[2, 3] = 0.7
                    qfeat = rng.standard_normal((H, W, C)).astype(np.float32)
                    if dt == np.uint8:
                        qfeat = np.abs(qfeat)
                    q = PreparedQuery.from_grid(qfeat, wts)
                    fmts = (0, _qfmt(name)) if scale is not None else (0,)
                    for qfmt in fmts:
                        a = _scan_c(lib, "generic", feats, sqn, q, scale, qerr2, qfmt=qfmt)
                        b = _scan_c(lib, name, feats, sqn, q, scale, qerr2, qfmt=qfmt)
                        for f in ("score", "upper", "lower"):
                            x, y = getattr(a, f), getattr(b, f)
                            if not np.allclose(x, y, rtol=0, atol=1e-4):
                                return False, f"{np.dtype(dt).name} C={C} q{qfmt}: {f} {x} != {y}"
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    return True, ""


def available_backends() -> list[str]:
    """Backends usable on this machine, best first, e.g. ["avx2", "generic", "numpy"]."""
    return list(_load()[1])


def _resolve(backend: str) -> str:
    avail = available_backends()
    b = (backend or "auto").strip().lower()
    if b == "auto":
        env = os.environ.get("VFSEARCH_KERNEL", "").strip().lower()
        if env and env != "auto":
            if env not in avail:
                raise RuntimeError(
                    f"VFSEARCH_KERNEL={env!r} is not available here (available: {avail})"
                )
            return env
        return avail[0]
    if b not in avail:
        raise ValueError(f"backend {backend!r} is not available here (available: {avail})")
    return b


# --------------------------------------------------------------------------- #
# threading
# --------------------------------------------------------------------------- #

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_POOL_MAX = 64  # threads are started lazily, only as many as ever used at once


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _get_pool() -> ThreadPoolExecutor:
    """The one persistent pool shared by scan / read_floor."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    max_workers=max(_POOL_MAX, _default_threads()),
                    thread_name_prefix="vfsearch-scan",
                )
    return _pool


def _run_split(n: int, nthreads: int, fn, min_per_thread: int | None = None) -> list:
    """Call fn(i0, i1) on `nthreads` contiguous ranges of [0, n) (fewer when n is small)."""
    if min_per_thread is None:
        min_per_thread = _MIN_IMAGES_PER_THREAD
    t = max(1, min(nthreads, _POOL_MAX, n // max(1, min_per_thread) or 1))
    if t == 1:
        return [fn(0, n)]
    bounds = [n * i // t for i in range(t + 1)]
    pool = _get_pool()
    futs = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(t)]
    return [f.result() for f in futs]


# --------------------------------------------------------------------------- #
# scan
# --------------------------------------------------------------------------- #


def _check_inputs(feats, sqnorm, query, scale, qerr2):
    if not isinstance(query, PreparedQuery):
        raise TypeError("query must be a PreparedQuery")
    feats = np.asarray(feats) if not isinstance(feats, np.ndarray) else feats
    if feats.ndim != 4:
        raise ValueError(f"feats must be (n,H,W,C), got shape {feats.shape}")
    if not feats.dtype.isnative or feats.dtype not in _DTYPES:
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


def _alloc(n: int) -> ScanResult:
    return ScanResult(
        score=np.zeros(n, np.float32),
        offset=np.zeros(n, np.int32),
        upper=np.zeros(n, np.float32),
        lower=np.zeros(n, np.float32),
    )


def _ptr(a: np.ndarray | None, i0: int = 0) -> int | None:
    if a is None:
        return None
    return a.ctypes.data + i0 * (a.strides[0] if a.ndim else 0)


def _scan_c(
    lib,
    backend,
    feats,
    sqnorm,
    query,
    scale,
    qerr2,
    threads: int = 1,
    out: ScanResult | None = None,
    qfmt: int = 0,
) -> ScanResult:
    n, H, W, C = feats.shape
    out = _alloc(n) if out is None else out
    if n == 0:
        return out
    is8 = feats.dtype.itemsize == 1
    if is8:
        qz = _quantised(query, qfmt)
        qdata, qscale, eps_q = qz.qi, qz.sq, qz.eps_q
    else:
        qdata, qscale, eps_q, qfmt = query.qf, None, 0.0, 0
    level = _LEVELS[backend]
    dtype = _DTYPES[feats.dtype]

    def run(i0: int, i1: int) -> int:
        if i1 <= i0:
            return 0
        return lib.vfs_scan(
            level, dtype, _ptr(feats, i0), i1 - i0, H, W, C,
            _ptr(scale, i0), _ptr(sqnorm, i0), _ptr(qerr2, i0),
            query.h, query.w, query.K, _ptr(query.dy), _ptr(query.dx), _ptr(query.m2),
            _ptr(qdata), _ptr(qscale), float(query.qnorm), float(eps_q),
            _ptr(out.score, i0), _ptr(out.offset, i0), _ptr(out.upper, i0), _ptr(out.lower, i0),
            qfmt,
        )  # fmt: skip

    for rc in _run_split(n, threads, run):
        if rc != 0:
            raise RuntimeError(f"vfs_scan failed with code {rc} (backend {backend})")
    out.eps_q = float(eps_q)
    return out


def _windows(a: np.ndarray, query: PreparedQuery, OH: int, OW: int, k: int) -> np.ndarray:
    """a[..., dy_k:dy_k+OH, dx_k:dx_k+OW] for (m, H, W[, ...]) arrays."""
    y, x = int(query.dy[k]), int(query.dx[k])
    return a[:, y : y + OH, x : x + OW]


def _angle_bound(d: np.ndarray) -> np.ndarray:
    """Upper bound on asin(d) (the most a relative error d can move a cosine), as in the C
    kernel: d (1 + 0.619 d^2) below 0.5 (>= d / sqrt(1 - d^2) >= asin d there), pi beyond."""
    return np.where(d < 0.5, d * (1.0 + _ANGLE_C * d * d), math.pi)


def _finish_numpy(
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
        up = best + _SLACK
        lo = best - _SLACK
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(
                qe > 0, np.where(den > 0, np.sqrt(qe / np.where(den > 0, den, 1.0)), np.inf), 0.0
            )
            f = _angle_bound(d)
        up = np.max(s + f, axis=1) + eps_q + _SLACK
        lo = best - (eps_q + f[rows, bo] + _SLACK)
    sl = slice(i0, i0 + m)
    out.score[sl] = best
    out.offset[sl] = bo
    out.upper[sl] = up
    out.lower[sl] = lo


def _scan_numpy(
    feats, sqnorm, query, scale, qerr2, threads: int = 1, out: ScanResult | None = None
) -> ScanResult:
    n, H, W, C = feats.shape
    out = _alloc(n) if out is None else out
    if n == 0:
        return out
    is8 = feats.dtype.itemsize == 1
    OH, OW = H - query.h + 1, W - query.w + 1
    K = query.K
    if is8:
        qz = _quantised(query)
        qmat = qz.qi.astype(np.float64).T  # exact integer dots in float64
        wk = qz.sq.astype(np.float64)
        eps_q = qz.eps_q
        chunk = max(1, _NUMPY_CHUNK // 2)
    else:
        qmat = query.qf.T  # float32 BLAS
        wk = np.ones(K)
        eps_q = 0.0
        chunk = _NUMPY_CHUNK
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
            _finish_numpy(
                num.reshape(m, -1),
                den.reshape(m, -1),
                qe.reshape(m, -1),
                query,
                eps_q,
                is8,
                out,
                s0,
            )

    _run_split(n, threads, run, min_per_thread=chunk)
    out.eps_q = float(eps_q)
    return out


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
    """
    feats, sqnorm, scale, qerr2, is8 = _check_inputs(feats, sqnorm, query, scale, qerr2)
    if precision not in ("fast", "fine"):
        raise ValueError(f"precision must be 'fast' or 'fine', got {precision!r}")
    nthreads = _default_threads() if threads is None else max(1, int(threads))
    b = _resolve(backend)
    if b == "numpy":
        return _scan_numpy(feats, sqnorm, query, scale, qerr2, threads=nthreads)
    lib, _ = _load()
    qfmt = _qfmt(b, precision) if is8 else 0
    out = _scan_c(lib, b, feats, sqnorm, query, scale, qerr2, threads=nthreads, qfmt=qfmt)
    if qfmt and tighten_k and len(out.lower):
        k = min(int(tighten_k), len(out.lower))
        thr = max(float(tighten_floor), float(np.partition(out.lower, -k)[-k]))
        cand = np.flatnonzero(out.upper >= thr)
        if len(cand):
            sub = _scan_c(lib, b, feats[cand], sqnorm[cand], query,
                          scale[cand], None if qerr2 is None else qerr2[cand],
                          threads=nthreads, qfmt=0)  # fmt: skip
            out.score[cand], out.offset[cand] = sub.score, sub.offset
            out.upper[cand], out.lower[cand] = sub.upper, sub.lower
            out.rescanned = int(len(cand))
    return out


def score_map(feat, sqnorm, query: PreparedQuery, *, scale=None) -> np.ndarray:
    """Scores at every offset of one image (H,W,C) -> (H-h+1, W-w+1) float64 (numpy).

    Uses the unrounded query (for 8-bit features it can differ from `scan` by at
    most the query-rounding term of the bounds)."""
    feat = np.asarray(feat)
    if feat.ndim != 3:
        raise ValueError("feat must be (H,W,C)")
    H, W, C = feat.shape
    if C != query.C or query.h > H or query.w > W:
        raise ValueError("feature map does not match the query")
    x = feat.astype(np.float64)
    if feat.dtype.itemsize == 1:
        if scale is None:
            raise ValueError("scale is required for 8-bit features")
        x = x * np.asarray(scale, dtype=np.float64).reshape(H, W)[..., None]
    sn = np.asarray(sqnorm, dtype=np.float64).reshape(1, H, W)
    D = (x.reshape(H * W, C) @ query.qf.astype(np.float64).T).reshape(1, H, W, query.K)
    OH, OW = H - query.h + 1, W - query.w + 1
    num = np.zeros((1, OH, OW))
    den = np.zeros((1, OH, OW))
    m2 = query.m2.astype(np.float64)
    for k in range(query.K):
        num += _windows(D[..., k], query, OH, OW, k)
        den += m2[k] * _windows(sn, query, OH, OW, k)
    qn = float(query.qnorm)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (den > 0) & (qn > 0)
        s = np.where(ok, num / (qn * np.sqrt(np.where(ok, den, 1.0))), 0.0)
    return s[0]


def read_floor(arr, threads=None) -> None:
    """Read every byte of a C-contiguous array once, split across threads like `scan`
    (the memory-bandwidth floor for benchmarks)."""
    a = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
    if not a.flags.c_contiguous:
        raise ValueError("read_floor needs a C-contiguous array")
    nbytes = a.nbytes
    if nbytes == 0:
        return
    nthreads = _default_threads() if threads is None else max(1, int(threads))
    lib, backends = _load()
    c_levels = [b for b in backends if b in _LEVELS]
    base = a.ctypes.data
    align = 1 << 16
    t = max(1, min(nthreads, _POOL_MAX, nbytes // align or 1))
    bounds = [min(nbytes, (nbytes * i // t) // align * align) for i in range(t)] + [nbytes]

    if lib is not None and c_levels:
        level = _LEVELS[c_levels[0]]

        def run(i0: int, i1: int) -> int:
            return int(lib.vfs_read_floor(base + i0, i1 - i0, level)) if i1 > i0 else 0
    else:
        flat = a.reshape(-1).view(np.uint8)

        def run(i0: int, i1: int) -> int:
            return int(flat[i0:i1].max()) if i1 > i0 else 0

    if t == 1:
        run(0, nbytes)
        return
    pool = _get_pool()
    futs = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(t)]
    for f in futs:
        f.result()
