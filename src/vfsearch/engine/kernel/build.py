"""Building and loading the C kernel: compile ``_kernel.c`` once per (source, compiler, flags,
machine) into a cache directory, open it, refuse a library whose ABI version is not the one
:mod:`.dispatch` declares (and rebuild it), and self-check each SIMD level against the generic
C path before offering it. Any failure leaves the numpy backend, with a one-time warning."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import dispatch
from .dispatch import LEVELS, scan_c
from .query import PreparedQuery, qfmt_for

__all__ = ["Backends", "load", "self_check"]

SRC = Path(__file__).with_name("_kernel.c")
CFLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]


@dataclass
class Backends:
    """What this process can run: the opened library (None without a C kernel), the usable
    backends best first (always ending in "numpy"), and why each C backend is missing."""

    lib: ctypes.CDLL | None
    names: list[str]
    missing: dict[str, str] = field(default_factory=dict)


class StaleLibrary(Exception):
    """A cached library that cannot be used (unloadable, or another ABI version)."""


_load_lock = threading.Lock()
_state: Backends | None = None
_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _cache_dirs() -> list[Path]:
    root = os.environ.get("VFSEARCH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "vfsearch"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [base / "kernels", Path(tempfile.gettempdir()) / f"vfsearch-kernels-{uid}"]


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _library_name(cc: list[str]) -> str:
    """``_kernel-<hash>.so``: the hash covers the source, compiler version, flags and machine."""
    ver = subprocess.run(
        cc + ["--version"], check=False, capture_output=True, text=True, timeout=60
    )
    if ver.returncode != 0:
        raise RuntimeError(f"{cc[0]} --version failed: {ver.stderr.strip()}")
    h = hashlib.sha256()
    for part in (
        SRC.read_bytes(),
        ver.stdout.encode(),
        " ".join(cc + CFLAGS).encode(),
        platform.machine().encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return f"_kernel-{h.hexdigest()[:20]}.so"


def _compile(cc: list[str], d: Path, name: str) -> Path:
    """Compile into a fresh temp file in ``d`` (OSError if ``d`` is unwritable); returns it."""
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        res = subprocess.run(
            cc + CFLAGS + [str(SRC), "-o", str(tmp), "-lm"],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SRC.name} failed:\n{res.stderr.strip()[-2000:]}")
    return tmp


def _remove_stale_temps(d: Path, age_s: float = 3600.0) -> None:
    """Temp files left by builds that were killed half-way (best effort)."""
    now = time.time()
    for p in d.glob("._kernel-*.tmp"):
        try:
            if now - p.stat().st_mtime > age_s:
                p.unlink()
        except OSError:
            pass


def _open(path: Path) -> ctypes.CDLL:
    """dlopen + ABI check + signatures; StaleLibrary if it is not a library of this ABI."""
    try:
        lib = ctypes.CDLL(str(path))
        version = int(lib.vfs_abi_version())  # untyped call: int() -> int is the C default
    except (OSError, AttributeError) as e:
        raise StaleLibrary(f"{path.name}: {e}") from None
    if version != dispatch.ABI_VERSION:
        raise StaleLibrary(
            f"{path.name} has ABI version {version}, this package needs {dispatch.ABI_VERSION}"
        )
    dispatch.bind(lib)
    return lib


def _build_and_open() -> ctypes.CDLL:
    """The cached library for the current source, (re)built when missing or stale."""
    cc = _compiler()
    name = _library_name(cc)
    last_err: Exception | None = None
    for d in _cache_dirs():
        so = d / name
        if so.exists():
            try:
                return _open(so)
            except StaleLibrary:
                so.unlink(missing_ok=True)  # refuse it; rebuild below
        try:
            tmp = _compile(cc, d, name)
        except OSError as e:  # unwritable cache dir: try the next one
            last_err = e
            continue
        try:
            # opened under its temp name, so a refused library of the same final name that
            # this process already opened cannot be handed back by the dynamic loader
            lib = _open(tmp)
            os.replace(tmp, so)
        except StaleLibrary as e:
            raise RuntimeError(f"freshly built kernel refused: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        _remove_stale_temps(d)
        return lib
    raise RuntimeError(f"cannot write the kernel cache: {last_err}")


def load() -> Backends:
    """Build/open the kernel once per process; what it offers (see :class:`Backends`)."""
    global _state
    if _state is not None:
        return _state
    with _load_lock:
        if _state is not None:
            return _state
        try:
            lib = _build_and_open()
        except Exception as e:  # noqa: BLE001 - any failure -> numpy fallback
            _warn_once(
                "build",
                f"vfsearch: C search kernel unavailable ({e}); using the slow numpy backend",
            )
            first = (str(e) or type(e).__name__).splitlines()[0]
            why = f"the C kernel could not be built ({first})"
            _state = Backends(None, ["numpy"], {b: why for b in LEVELS})
            return _state
        level = int(lib.vfs_cpu_level())
        names = ["numpy"]
        missing = {}
        for name in ("generic", "avx2", "avx512"):  # generic first: the others check against it
            if LEVELS[name] > level:
                missing[name] = f"this CPU lacks the instructions the {name} kernel needs"
                continue
            if name != "generic" and "generic" not in names:
                missing[name] = "the generic C kernel it is checked against failed its self-check"
                continue
            ok, why = self_check(lib, name)
            if ok:
                names.insert(0, name)
            else:
                missing[name] = f"its self-check failed ({why})"
                _warn_once(
                    f"check-{name}",
                    f"vfsearch: {name} kernel disabled, self-check failed: {why}",
                )
        _state = Backends(lib if "generic" in names else None, names, missing)
        return _state


def self_check(lib: ctypes.CDLL, name: str) -> tuple[bool, str]:
    """Run one C backend against a float64 model (generic) or the generic C path (SIMD) on
    small random cases of every dtype and query format; (ok, what differed)."""
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
                    np.ones((H, W)),  # the whole grid: one offset
                ):
                    wts = np.array(wts)
                    wts[2, 3] = 0.7
                    qfeat = rng.standard_normal((H, W, C)).astype(np.float32)
                    if dt == np.uint8:
                        qfeat = np.abs(qfeat)
                    q = PreparedQuery.from_grid(qfeat, wts)
                    fmts = (0, qfmt_for(name)) if scale is not None else (0,)
                    # 8-bit SIMD: every lane layout (the one-offset one on a grid-sized box)
                    paths = ("channels", "offsets", "single") \
                        if scale is not None and name != "generic" else ("auto",)
                    for qfmt in fmts:
                        if name == "generic":
                            b = scan_c(lib, name, feats, sqn, q, scale, qerr2, qfmt=qfmt)
                            pairs = [("score", _model_scores(deq, sqn, q), b.score)]
                        else:
                            a = scan_c(lib, "generic", feats, sqn, q, scale, qerr2, qfmt=qfmt)
                            pairs = []
                            for path in paths:
                                b = scan_c(lib, name, feats, sqn, q, scale, qerr2, qfmt=qfmt,
                                           path=path)
                                pairs += [(f"{path} {f}", getattr(a, f), getattr(b, f))
                                          for f in ("score", "upper", "lower")]
                        for f, x, y in pairs:
                            if not np.allclose(x, y, rtol=0, atol=1e-4):
                                return False, f"{np.dtype(dt).name} C={C} q{qfmt}: {f} {x} != {y}"
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    return True, ""


def _model_scores(deq: np.ndarray, sqn: np.ndarray, q: PreparedQuery) -> np.ndarray:
    """Best score per image in float64 with the unrounded query (what generic must match to
    within the query rounding, far below the check's 1e-4 for these sizes)."""
    n, H, W, _ = deq.shape
    OH, OW = H - q.h + 1, W - q.w + 1
    num = np.zeros((n, OH, OW))
    den = np.zeros((n, OH, OW))
    for k in range(q.K):
        y, x = int(q.dy[k]), int(q.dx[k])
        num += deq[:, y : y + OH, x : x + OW] @ q.qf[k].astype(np.float64)
        den += float(q.m2[k]) * sqn[:, y : y + OH, x : x + OW]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(den > 0, num / (q.qnorm * np.sqrt(den)), 0.0)
    return s.reshape(n, -1).max(axis=1)
