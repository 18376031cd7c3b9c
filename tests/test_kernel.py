"""Tests of the search kernel (vfsearch.engine.kernel) against the float64 reference."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
import zlib

import numpy as np
import pytest

from vfsearch.engine import kernel as K
from vfsearch.engine.kernel import build, dispatch, numpy_path
from vfsearch.engine.kernel import query as kq
from vfsearch.engine.reference import reference_scores
from vfsearch.engine.searcher import exact_scores
from vfsearch.errors import BackendUnavailable, BadMask, BadParameter

BACKENDS = K.available_backends()
DTYPES = ["float32", "float16", "uint8", "int8"]
TOL = {"float32": 1e-5, "float16": 1e-4, "uint8": 2e-3, "int8": 2e-3}


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def make_feats(rng, n, H, W, C, dtype):
    """Random features in `dtype` (+ scale/qerr2 for 8-bit).

    Returns (feats, sqnorm, scale, qerr2, deq, orig): deq = what the kernel sees
    (dequantised / f16-rounded, float64), orig = the unquantised float data."""
    signed = dtype != "uint8"
    x = np.array(rng.standard_normal((n, H, W, C)), dtype=np.float64)
    if not signed:
        x = np.abs(x) * (rng.random((n, H, W, C)) < 0.7)  # post-ReLU-like
    x *= rng.uniform(0.2, 3.0, (n, H, W, 1))  # varying cell norms
    x = x.astype(np.float32)
    if dtype in ("uint8", "int8"):
        qmax = 255 if dtype == "uint8" else 127
        amax = np.abs(x).max(axis=-1)
        scale = (amax / qmax).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)[..., None]
        lo = 0 if dtype == "uint8" else -127
        q = np.clip(np.rint(x / safe), lo, qmax).astype(dtype)
        deq = q.astype(np.float64) * scale[..., None].astype(np.float64)
        qerr2 = ((x.astype(np.float64) - deq) ** 2).sum(-1).astype(np.float32)
        feats = q
    else:
        feats = x.astype(dtype)
        deq = feats.astype(np.float64)
        scale = qerr2 = None
    sqnorm = (deq**2).sum(-1).astype(np.float32)
    return feats, sqnorm, scale, qerr2, deq, x.astype(np.float64)


def soft_mask(rng, H, W, box=None, density=0.7):
    """Random soft mask with values in (0, 1] inside a random (or given) box."""
    if box is None:
        h = int(rng.integers(1, H + 1))
        w = int(rng.integers(1, W + 1))
        y0 = int(rng.integers(0, H - h + 1))
        x0 = int(rng.integers(0, W - w + 1))
    else:
        y0, x0, h, w = box
    m = np.zeros((H, W))
    sub = rng.uniform(0.05, 1.0, (h, w)) * (rng.random((h, w)) < density)
    sub[0, 0] = max(sub[0, 0], 0.5)  # keep the box's corners on so the crop is (h, w)
    sub[-1, -1] = max(sub[-1, -1], 0.5)
    m[y0 : y0 + h, x0 : x0 + w] = sub
    return m


def query_feats(rng, H, W, C, dtype):
    q = rng.standard_normal((H, W, C)).astype(np.float32)
    return np.abs(q) if dtype == "uint8" else q


def unique_best(maps, margin=1e-3):
    out = []
    for m in maps:
        v = np.sort(m.reshape(-1))[::-1]
        out.append(len(v) == 1 or v[0] - v[1] > margin)
    return np.array(out, dtype=bool)


def check(res, feats_deq, orig, weights, qfeat, dtype):
    ref_s, ref_o, maps = reference_scores(feats_deq, weights, qfeat)
    # 8-bit: the score moves from the exact one on the dequantised features by at most the
    # query-rounding bound (int8 query on VNNI, int16 elsewhere), plus float rounding
    # 8-bit SIMD kernels sum per position in float32: (3K + 8) u more (see _kernel.c)
    ksl = (3 * max(int((np.asarray(weights) > 0).sum()), 16) + 8) * 2.0**-24
    tol = res.eps_q + 2e-5 + ksl if dtype in ("uint8", "int8") else TOL[dtype]
    assert res.score.dtype == np.float32 and res.offset.dtype == np.int32
    assert res.upper.dtype == np.float32 and res.lower.dtype == np.float32
    assert np.all(np.isfinite(res.score))
    np.testing.assert_allclose(res.score, ref_s, rtol=0, atol=tol)
    u = unique_best(maps, margin=max(10 * tol, 1e-3))
    np.testing.assert_array_equal(res.offset[u], ref_o[u])
    # the bounds hold the exact score: on the unquantised data for 8-bit,
    # on the data as given for float types
    exact = reference_scores(orig, weights, qfeat)[0] if dtype in ("uint8", "int8") else ref_s
    assert np.all(res.lower <= exact + 1e-6), (res.lower, exact)
    assert np.all(exact <= res.upper + 1e-6), (exact, res.upper)
    assert np.all(res.lower <= res.score) and np.all(res.score <= res.upper)


# --------------------------------------------------------------------------- #
# main agreement tests
# --------------------------------------------------------------------------- #


def test_backends_listed():
    assert "numpy" in BACKENDS
    assert BACKENDS[-1] == "numpy"
    assert set(BACKENDS) <= {"avx512", "avx2", "generic", "numpy"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [40, 112])
def test_random_vs_reference(backend, dtype, C):
    rng = np.random.default_rng(zlib.crc32(f"{backend}-{dtype}-{C}".encode()))
    n, H, W = 7, 7, 6
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, dtype)
    for _ in range(2):
        wts = soft_mask(rng, H, W)
        qfeat = query_feats(rng, H, W, C, dtype)
        q = K.PreparedQuery.from_grid(qfeat, wts)
        res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
        check(res, deq, orig, wts, qfeat, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_widths(backend, dtype):
    """C below / not a multiple of the vector width (scalar and masked tails)."""
    rng = np.random.default_rng(7)
    for C in (3, 17, 320, 37 + 32):
        feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 3, 4, 5, C, dtype)
        wts = soft_mask(rng, 4, 5, box=(0, 1, 2, 3))
        qfeat = query_feats(rng, 4, 5, C, dtype)
        q = K.PreparedQuery.from_grid(qfeat, wts)
        res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
        check(res, deq, orig, wts, qfeat, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_shapes(backend, dtype):
    rng = np.random.default_rng(11)
    C = 24
    cases = [
        (7, 6, (0, 0, 7, 6)),  # mask as large as the grid: one offset
        (1, 1, (0, 0, 1, 1)),  # 1x1 grid
        (5, 4, (2, 1, 1, 1)),  # one-cell mask
        (3, 8, (0, 0, 1, 8)),  # a full row
        (6, 5, (1, 0, 4, 1)),  # a column strip
    ]
    for H, W, box in cases:
        feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 4, H, W, C, dtype)
        wts = soft_mask(rng, H, W, box=box, density=1.0)
        qfeat = query_feats(rng, H, W, C, dtype)
        q = K.PreparedQuery.from_grid(qfeat, wts)
        assert (q.h, q.w) == box[2:]
        res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
        check(res, deq, orig, wts, qfeat, dtype)
        if (q.h, q.w) == (H, W):
            assert np.all(res.offset == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_best_at_bottom_right(backend, dtype):
    """Plant the query at the last offset; it must win there with score ~1."""
    rng = np.random.default_rng(5)
    n, H, W, C = 3, 7, 7, 48
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, dtype)
    wts = soft_mask(rng, H, W, box=(1, 2, 3, 3), density=1.0)
    qfeat = query_feats(rng, H, W, C, dtype)
    q = K.PreparedQuery.from_grid(qfeat, wts)
    # image 1: the query region copied (scaled) to the bottom-right offset
    x = orig.copy()
    x[1, H - 3 :, W - 3 :] = 2.0 * qfeat[1:4, 2:5]
    feats, sqn, scale, qerr2, deq, orig = requantise(x, dtype)
    res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
    last = (H - 3 + 1) * (W - 3 + 1) - 1
    assert res.offset[1] == last
    assert res.score[1] > 0.99
    check(res, deq, orig, wts, qfeat, dtype)


def requantise(x, dtype):
    """make_feats for given float data."""
    n, H, W, C = x.shape

    class R:  # a generator that returns x instead of random numbers
        def standard_normal(self, shape):
            return x

        def random(self, shape):
            return np.zeros(shape)

        def uniform(self, lo, hi, shape):
            return np.ones(shape)

    feats, sqn, scale, qerr2, deq, orig = make_feats(R(), n, H, W, C, dtype)
    return feats, sqn, scale, qerr2, deq, orig


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_cells_and_n0(backend, dtype):
    rng = np.random.default_rng(3)
    n, H, W, C = 4, 5, 5, 33
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, dtype)
    x = orig.copy()
    x[0] = 0.0  # a whole image of zeros: den = 0 everywhere
    x[1, 2, 2] = 0.0  # one zero cell
    x[2, :, :3] = 0.0
    feats, sqn, scale, qerr2, deq, orig = requantise(x, dtype)
    for box in ((2, 2, 1, 1), (0, 0, 2, 3)):
        wts = soft_mask(rng, H, W, box=box, density=1.0)
        qfeat = query_feats(rng, H, W, C, dtype)
        q = K.PreparedQuery.from_grid(qfeat, wts)
        res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
        for a in (res.score, res.upper, res.lower):
            assert np.all(np.isfinite(a))
        assert res.score[0] == 0.0 and res.offset[0] == 0
        check(res, deq, orig, wts, qfeat, dtype)
    # n = 0
    q = K.PreparedQuery.from_grid(query_feats(rng, H, W, C, dtype), soft_mask(rng, H, W))
    res = K.scan(feats[:0], sqn[:0], q, scale=None if scale is None else scale[:0],
                 qerr2=None if qerr2 is None else qerr2[:0], backend=backend)  # fmt: skip
    assert res.score.shape == res.offset.shape == res.upper.shape == res.lower.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_query(backend):
    rng = np.random.default_rng(4)
    feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 3, 4, 4, 16, "uint8")
    wts = soft_mask(rng, 4, 4, box=(0, 0, 2, 2))
    q = K.PreparedQuery.from_grid(np.zeros((4, 4, 16), np.float32), wts)
    assert q.qnorm == 0.0
    res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
    assert np.all(res.score == 0) and np.all(res.offset == 0)
    assert np.all(res.lower <= 0) and np.all(res.upper >= 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_8bit_is_exact_integer_arithmetic(backend, dtype):
    """The 8-bit score is the cosine of the int16-rounded query with the
    dequantised features, computed exactly (int32 dots), up to float rounding;
    extreme values must not overflow."""
    rng = np.random.default_rng(8)
    n, H, W, C = 5, 4, 4, 1024  # C*255*16383 would overflow int32 here
    hi = 255 if dtype == "uint8" else 127
    lo = 0 if dtype == "uint8" else -127
    feats = rng.integers(lo, hi + 1, (n, H, W, C)).astype(dtype)
    feats[0] = hi  # the largest possible dots
    if dtype == "int8":
        feats[0, ..., 1::2] = -127  # aligned with the query's sign pattern
        feats[1] = -128  # outside the symmetric range, still int8
    scale = rng.uniform(0.001, 0.01, (n, H, W)).astype(np.float32)
    deq = feats.astype(np.float64) * scale[..., None]
    sqn = (deq**2).sum(-1).astype(np.float32)
    wts = soft_mask(rng, H, W, box=(0, 0, 2, 3), density=1.0)
    qfeat = np.full((H, W, C), 3.0, np.float32)
    qfeat[..., ::7] = 1e-3
    if dtype == "int8":
        qfeat[..., 1::2] *= -1
    q = K.PreparedQuery.from_grid(qfeat, wts)
    qz = kq.quantised(q, kq.qfmt_for(backend))
    assert np.abs(qz.qi).max() <= (127 if qz.qfmt else min(16383, (2**31 - 1) // (C * 255)))
    res = K.scan(feats, sqn, q, scale=scale, backend=backend)
    # float64 model of the kernel with the rounded query
    OH, OW = H - q.h + 1, W - q.w + 1
    s = np.zeros((n, OH, OW))
    den = np.zeros((n, OH, OW))
    for k in range(q.K):
        y, x = q.dy[k], q.dx[k]
        cells = feats[:, y : y + OH, x : x + OW].astype(np.int64)
        idot = (cells * qz.qi[k, :C].astype(np.int64)).sum(-1)
        s += scale[:, y : y + OH, x : x + OW] * float(qz.sq[k]) * idot
        den += float(q.m2[k]) * sqn[:, y : y + OH, x : x + OW]
    s = (s / (q.qnorm * np.sqrt(den))).reshape(n, -1)
    np.testing.assert_allclose(res.score, s.max(1), rtol=0, atol=2e-6)
    assert res.score[0] > 0.5  # no int32 wrap-around
    # and the rounding term of the bound covers the difference to the exact query
    ref = reference_scores(deq, wts, qfeat)[0]
    assert np.all(np.abs(res.score - ref) <= qz.eps_q + 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_rounding_bound_is_tight(backend):
    """Features aligned with the query's rounding error: the score moves by
    (almost) exactly eps_q, and the bounds still hold."""
    rng = np.random.default_rng(17)
    H, W, C = 2, 2, 64
    wts = np.array([[0.1, 0.3], [1.0, 0.05]])
    qfeat = rng.standard_normal((H, W, C)).astype(np.float32)
    q = K.PreparedQuery.from_grid(qfeat, wts)
    qz = kq.quantised(q, kq.qfmt_for(backend))
    R = qz.sq[:, None].astype(np.float64) * qz.qi[:, :C] - q.qf.astype(np.float64)
    x = (R / q.m2[:, None].astype(np.float64)).reshape(1, H, W, C)  # worst case for the rounding
    for sign in (1.0, -1.0):
        feats, sqn, scale, _qerr2, deq, _orig = requantise(sign * x, "int8")
        res = K.scan(feats, sqn, q, scale=scale, backend=backend)
        exact = reference_scores(deq, wts, qfeat)[0]
        moved = abs(float(res.score[0]) - exact[0])
        assert 0.9 * qz.eps_q <= moved <= qz.eps_q + 1e-6
        assert res.lower[0] <= exact[0] <= res.upper[0]


# --------------------------------------------------------------------------- #
# threads, chunking, backends
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_and_chunks(backend, monkeypatch):
    """n not a multiple of the thread chunk; any thread count gives the same result."""
    monkeypatch.setattr(numpy_path, "CHUNK", 8)
    monkeypatch.setattr(dispatch, "MIN_IMAGES_PER_THREAD", 4)
    rng = np.random.default_rng(9)
    feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 53, 5, 5, 20, "uint8")
    wts = soft_mask(rng, 5, 5, box=(1, 1, 2, 3))
    q = K.PreparedQuery.from_grid(query_feats(rng, 5, 5, 20, "uint8"), wts)
    base = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, threads=1, backend=backend)
    for t in (2, 3, 8):
        r = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, threads=t, backend=backend)
        for f in ("score", "offset", "upper", "lower"):
            np.testing.assert_array_equal(getattr(r, f), getattr(base, f))
    # a memmap-like contiguous slice in the middle
    r = K.scan(
        feats[10:31],
        sqn[10:31],
        q,
        scale=scale[10:31],
        qerr2=qerr2[10:31],
        threads=2,
        backend=backend,
    )
    np.testing.assert_array_equal(r.score, base.score[10:31])
    np.testing.assert_array_equal(r.offset, base.offset[10:31])



SIMD8 = [b for b in BACKENDS if b in ("avx512", "avx2")]


@pytest.mark.parametrize("backend", SIMD8)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("path", ["auto", "offsets", "channels"])
def test_cells_a_brush_barely_touched_are_dropped_within_the_bound(backend, dtype, path,
                                                                   monkeypatch):
    """A soft stroke leaves cells with weights of 0.001 at its edge. The fast query formats
    round those rows to 0 (the kernels skip them) while their share stays under DROP_SHARE of
    the rounding bound; the scores stay within the (slightly wider) bound of the exact ones,
    the bounds hold, and the box (where the region fits) does not change."""
    rng = np.random.default_rng(zlib.crc32(f"drop-{backend}-{dtype}-{path}".encode()))
    n, H, W, C = 23, 14, 14, 112
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, dtype)
    wts = np.zeros((H, W))
    wts[5:8, 4:7] = rng.uniform(0.6, 1.0, (3, 3))
    wts[4, 3:8] = [0.002, 0.3, 0.5, 0.2, 0.004]  # the stroke's soft edge
    wts[8, 3:8] = [0.001, 0.1, 0.2, 0.15, 0.003]
    wts[5:8, 3] = 0.002
    qfeat = query_feats(rng, H, W, C, dtype)
    q = K.PreparedQuery.from_grid(qfeat, wts)
    z = kq.quantised(q, kq.qfmt_for(backend))
    light = np.flatnonzero(np.sqrt(q.m2) < 0.01)
    zero = np.flatnonzero(~z.qi.any(axis=1))
    assert len(light) == 7 and set(zero) == set(light), (light, zero)
    assert np.all(z.sq[zero] == 0) and (q.h, q.w) == (5, 5)
    monkeypatch.setattr(kq, "DROP_SHARE", 0.0)
    whole = kq.quantised(K.PreparedQuery.from_grid(qfeat, wts), kq.qfmt_for(backend))
    assert whole.qi.any(axis=1).all()
    assert whole.eps_q < z.eps_q <= 1.1 * whole.eps_q + 1e-12
    res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend, path=path)
    assert res.eps_q == pytest.approx(z.eps_q)
    check(res, deq, orig, wts, qfeat, dtype)


def test_run_split_pieces_cover_the_range_once(monkeypatch):
    """The pieces taken in turn by the threads cover [0, n) exactly once, whatever n, threads
    and pieces per thread; a slow thread leaves its share to the others."""
    import threading
    import time

    for n, threads, pieces, least in [(1000, 2, 8, 32), (100, 3, 8, 32), (7, 4, 8, 1),
                                      (64, 2, 1, 32), (5000, 8, 4, 16)]:
        monkeypatch.setattr(dispatch, "PIECES_PER_THREAD", pieces)
        got = dispatch.run_split(n, threads, lambda i0, i1: (i0, i1), min_per_thread=least)
        got.sort()
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(got, got[1:], strict=False))
        assert len(got) == max(1, min(min(threads, n // least) * pieces, n // least))
    # one thread stalls on its first piece: the other thread does every other piece meanwhile
    monkeypatch.setattr(dispatch, "PIECES_PER_THREAD", 8)
    who: dict = {}
    first = threading.Event()

    def piece(i0, i1):
        me = threading.get_ident()
        if not first.is_set():
            first.set()
            time.sleep(1.0)
        who.setdefault(me, []).append(i0)
        return i0

    assert sorted(dispatch.run_split(1600, 2, piece)) == list(range(0, 1600, 100))
    assert sorted(len(v) for v in who.values()) == [1, 15]

def test_backends_agree():
    rng = np.random.default_rng(10)
    for dtype in DTYPES:
        feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 9, 7, 7, 72, dtype)
        q = K.PreparedQuery.from_grid(
            query_feats(rng, 7, 7, 72, dtype), soft_mask(rng, 7, 7, box=(2, 1, 3, 3))
        )
        res = [K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=b, precision="fine")
               for b in BACKENDS]
        for r in res[1:]:
            np.testing.assert_allclose(r.score, res[0].score, rtol=0, atol=2e-6)
            np.testing.assert_allclose(r.upper, res[0].upper, rtol=0, atol=2e-6)
            np.testing.assert_allclose(r.lower, res[0].lower, rtol=0, atol=2e-6)
        for b in BACKENDS:  # the fast (int8-query) path moves scores by at most its bound
            fast = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=b, precision="fast")
            assert np.all(np.abs(fast.score - res[0].score) <= fast.eps_q + res[0].eps_q + 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_tighten_rescans_the_images_that_can_reach_the_top(backend, dtype):
    """tighten_k: images whose fast-path upper bound reaches the k-th best lower bound get the
    int16 query's (tight) bounds; the rest keep the fast path's; every bound still holds."""
    rng = np.random.default_rng(21)
    feats, sqn, scale, qerr2, _deq, orig = make_feats(rng, 400, 6, 6, 96, dtype)
    wts = soft_mask(rng, 6, 6, box=(1, 1, 3, 3), density=1.0)
    qfeat = query_feats(rng, 6, 6, 96, dtype)
    q = K.PreparedQuery.from_grid(qfeat, wts)
    kw = {"scale": scale, "qerr2": qerr2, "backend": backend}
    fast = K.scan(feats, sqn, q, precision="fast", **kw)
    fine = K.scan(feats, sqn, q, precision="fine", **kw)
    tight = K.scan(feats, sqn, q, precision="fast", tighten_k=5, **kw)
    exact = reference_scores(orig, wts, qfeat)[0]
    assert np.all(tight.lower <= exact + 1e-6) and np.all(exact <= tight.upper + 1e-6)
    if kq.qfmt_for(backend) == 0:  # no fast path: nothing to tighten
        assert tight.rescanned == 0
        np.testing.assert_array_equal(tight.upper, fine.upper)
        return
    thr = np.sort(fast.lower)[-5]
    cand = fast.upper >= thr
    assert tight.rescanned == cand.sum() > 0
    np.testing.assert_array_equal(tight.upper[cand], fine.upper[cand])
    np.testing.assert_array_equal(tight.lower[cand], fine.lower[cand])
    np.testing.assert_array_equal(tight.upper[~cand], fast.upper[~cand])
    # the fast path's bounds are wider, and the top 5 by exact score are all among the candidates
    assert np.median(fast.upper - fast.lower) > np.median(fine.upper - fine.lower)
    assert cand[np.argsort(-exact)[:5]].all()


@contextlib.contextmanager
def ending_at_a_guard_page(feats: np.ndarray):
    """A copy of ``feats`` whose last byte is followed by an unreadable (PROT_NONE) page: a
    kernel that reads past the features crashes."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    total = (feats.nbytes + page - 1) // page * page + page
    buf = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        guard = base + total - page
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        arr = np.frombuffer(buf, dtype=feats.dtype, count=feats.size,
                            offset=guard - feats.nbytes - base).reshape(feats.shape)
        arr[:] = feats
        assert libc.mprotect(guard, page, 0) == 0  # PROT_NONE: any read there is a crash
        try:
            yield arr
        finally:
            assert libc.mprotect(guard, page, mmap.PROT_READ | mmap.PROT_WRITE) == 0
            del arr
    finally:
        try:
            buf.close()
        except BufferError:  # an exported view is still alive; the mapping goes with the process
            pass


@pytest.mark.skipif(not hasattr(__import__("mmap"), "PROT_READ"), reason="needs mmap protections")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("precision", ["fast", "fine"])
def test_no_read_past_the_features(backend, precision):
    """Features that end right before an unreadable page: no kernel reads past them (the fast
    paths read whole 32/64-byte blocks of a cell; the last image must not overrun)."""
    rng = np.random.default_rng(5)
    n, H, W, C = 3, 3, 4, 40
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, "int8")
    with ending_at_a_guard_page(feats) as arr:
        wts = soft_mask(rng, H, W, box=(0, 1, 2, 3), density=1.0)
        qfeat = query_feats(rng, H, W, C, "int8")
        q = K.PreparedQuery.from_grid(qfeat, wts)
        for threads in (1, 2):
            res = K.scan(arr, sqn, q, scale=scale, qerr2=qerr2, backend=backend,
                         precision=precision,
                         threads=threads)
            check(res, deq, orig, wts, qfeat, "int8")


SIMD = [b for b in BACKENDS if b not in ("numpy", "generic")]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_the_interleaved_copy_scans_to_the_same_bits(dtype):
    """The offsets path reading the cell-interleaved copy instead of transposing each image:
    every output identical, on each SIMD level and precision, for odd channel counts, masks
    from one cell to the whole grid, edge boxes, and rows by id; the copy's bytes are the same
    from the compiled transposes as from numpy's."""
    if not SIMD:
        pytest.skip("no SIMD kernel on this machine")
    rng = np.random.default_rng(60)
    for H, W, C in ((14, 14, 112), (28, 28, 40), (5, 6, 13), (9, 9, 7), (4, 4, 1), (7, 7, 384)):
        feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 37, H, W, C, dtype)
        inter = K.interleave(feats)
        assert np.array_equal(inter.words, K.interleave(feats, backend="numpy").words)
        assert inter.words.ctypes.data % 64 == 0 and inter.words.shape[0] == 37
        boxes = [None, (0, 0, 1, 1), (H - 1, W - 1, 1, 1), (0, 0, H, W), (0, W - 2, H, 2)]
        for box in boxes:
            wts = soft_mask(rng, H, W, box=box)
            qfeat = query_feats(rng, H, W, C, dtype)
            q = K.PreparedQuery.from_grid(qfeat, wts)
            ids = rng.permutation(37)[:11]
            for backend in SIMD:
                for precision in ("fast", "fine"):
                    kw = dict(scale=scale, qerr2=qerr2, backend=backend, precision=precision,
                              path="offsets")
                    a = K.scan(feats, sqn, q, **kw)
                    b = K.scan(feats, sqn, q, inter=inter, **kw)
                    c = K.scan(feats, sqn, q, inter=inter, ids=ids, threads=2, **kw)
                    for f in ("score", "offset", "upper", "lower"):
                        assert np.array_equal(getattr(a, f), getattr(b, f)), (H, W, C, box, f)
                        assert np.array_equal(getattr(a, f)[ids], getattr(c, f))
                    if box is None and precision == "fine":
                        check(b, deq, orig, wts, qfeat, dtype)


def test_an_interleaved_copy_of_other_features_is_refused():
    rng = np.random.default_rng(61)
    feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 4, 5, 5, 16, "uint8")
    other = K.interleave(feats[:3])
    q = K.PreparedQuery.from_grid(query_feats(rng, 5, 5, 16, "uint8"), soft_mask(rng, 5, 5))
    with pytest.raises(ValueError, match="inter was made from"):
        K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, inter=other)
    with pytest.raises(ValueError, match="8-bit"):
        K.interleave(feats.astype(np.float32))


@pytest.mark.skipif(not hasattr(__import__("mmap"), "PROT_READ"), reason="needs mmap protections")
@pytest.mark.parametrize("backend", SIMD)
def test_no_read_past_the_interleaved_copy(backend):
    """An interleaved copy whose documented zero tail ends right before an unreadable page: the
    offsets path's shifted reads of the last image's last group stay inside it."""
    from vfsearch.engine.kernel.lanes import TAIL_WORDS, Interleaved

    rng = np.random.default_rng(62)
    for H, W, C in ((3, 4, 40), (7, 7, 13), (16, 16, 8)):
        feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 3, H, W, C, "int8")
        full = K.interleave(feats)
        flat = np.zeros(full.words.size + TAIL_WORDS, np.uint32)
        flat[:full.words.size] = full.words.reshape(-1)
        with ending_at_a_guard_page(flat) as buf:
            inter = Interleaved(buf[:full.words.size].reshape(full.words.shape), full.shape,
                                full.dtype)
            wts = soft_mask(rng, H, W, box=(H - 2, W - 3, 2, 3), density=1.0)
            qfeat = query_feats(rng, H, W, C, "int8")
            q = K.PreparedQuery.from_grid(qfeat, wts)
            for precision in ("fast", "fine"):
                res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend,
                             precision=precision, path="offsets", inter=inter)
                check(res, deq, orig, wts, qfeat, "int8")


def test_angle_bound_covers_asin_and_stays_close():
    d = np.concatenate([np.linspace(0, 0.5, 200001), [0.5, 0.7, 1.0, 3.0, np.inf]])
    f = numpy_path.angle_bound(d)
    assert np.all(f >= np.arcsin(np.minimum(d, 1.0)))  # rigorous: never below the true bound
    assert np.all(f[d >= 0.5] == np.pi)
    small = (d > 0) & (d < 0.03)  # quantisation errors are ~1e-2 of a cell
    assert np.all(f[small] / np.arcsin(d[small]) < 1.001)  # and nearly tight where it matters


def test_env_forces_backend(monkeypatch):
    rng = np.random.default_rng(12)
    feats, sqn, _scale, _qerr2, _deq, _orig = make_feats(rng, 2, 3, 3, 8, "float32")
    q = K.PreparedQuery.from_grid(query_feats(rng, 3, 3, 8, "float32"), soft_mask(rng, 3, 3))
    ran = []
    real_np, real_c = K.scan_numpy, K.scan_c
    monkeypatch.setattr(K, "scan_numpy", lambda *a, **k: ran.append("numpy") or real_np(*a, **k))
    monkeypatch.setattr(K, "scan_c",
                        lambda lib, b, *a, **k: ran.append(b) or real_c(lib, b, *a, **k))
    for env in BACKENDS:
        monkeypatch.setenv("VFSEARCH_KERNEL", env)
        assert K.resolve_backend("auto") == env
        K.scan(feats, sqn, q)
        assert ran[-1] == env
    K.scan(feats, sqn, q, backend="numpy")  # an explicit backend wins over the variable
    assert ran[-1] == "numpy"
    monkeypatch.setenv("VFSEARCH_KERNEL", "no-such-backend")
    with pytest.raises(BadParameter, match="VFSEARCH_KERNEL") as e:
        K.scan(feats, sqn, q)
    assert e.value.param is None and e.value.exit_code == 2
    monkeypatch.delenv("VFSEARCH_KERNEL")
    assert K.resolve_backend("auto") == BACKENDS[0]
    with pytest.raises(BadParameter, match="not a kernel backend") as e:
        K.scan(feats, sqn, q, backend="no-such-backend")
    assert e.value.param == "backend"


def test_unavailable_backend_is_a_backend_error(monkeypatch):
    """A known backend this machine lacks: BackendUnavailable (exit code 5) naming why."""
    state = build.load()
    names = [b for b in state.names if b != "avx512"]
    missing = {"avx512": "this CPU lacks the instructions the avx512 kernel needs"}
    monkeypatch.setattr(build, "_state", build.Backends(state.lib, names, missing))
    rng = np.random.default_rng(12)
    feats, sqn, _scale, _qerr2, _deq, _orig = make_feats(rng, 2, 3, 3, 8, "float32")
    q = K.PreparedQuery.from_grid(query_feats(rng, 3, 3, 8, "float32"), soft_mask(rng, 3, 3))
    with pytest.raises(BackendUnavailable, match="lacks the instructions") as e:
        K.scan(feats, sqn, q, backend="avx512")
    assert e.value.param == "backend" and e.value.exit_code == 5
    assert "--" not in e.value.message and "\n" not in e.value.message
    monkeypatch.setenv("VFSEARCH_KERNEL", "avx512")
    with pytest.raises(BackendUnavailable, match="VFSEARCH_KERNEL"):
        K.scan(feats, sqn, q)


def test_cli_unavailable_backend_exits_5(small_cache, monkeypatch):
    """``vfsearch search CACHE --image 0 --whole --backend avx512`` on a machine without
    AVX-512: one ``error:`` line, exit code 5, no traceback."""
    from click.testing import CliRunner

    from vfsearch.cli import main

    state = build.load()
    monkeypatch.setattr(build, "_state", build.Backends(
        state.lib, [b for b in state.names if b != "avx512"],
        {"avx512": "this CPU lacks the instructions the avx512 kernel needs"}))
    r = CliRunner().invoke(main, ["search", str(small_cache.path), "--image", "0", "--whole",
                                  "--backend", "avx512"])
    assert r.exit_code == 5, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "avx512" in lines[0], r.output
    assert "Traceback" not in r.output


def test_build_failure_falls_back_to_numpy(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_state", None)
    monkeypatch.setattr(build, "_warned", set())
    monkeypatch.setenv("VFSEARCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="numpy"):
        assert K.available_backends() == ["numpy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert K.available_backends() == ["numpy"]
        rng = np.random.default_rng(13)
        feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 3, 4, 4, 8, "uint8")
        wts = soft_mask(rng, 4, 4)
        qfeat = query_feats(rng, 4, 4, 8, "uint8")
        res = K.scan(feats, sqn, K.PreparedQuery.from_grid(qfeat, wts), scale=scale, qerr2=qerr2)
        check(res, deq, orig, wts, qfeat, "uint8")
        with pytest.raises(BackendUnavailable, match="could not be built"):
            K.scan(feats, sqn, K.PreparedQuery.from_grid(qfeat, wts), scale=scale,
                   backend="generic")


def _tiny_library(tmp_path, name, body):
    """A shared library with only ``body`` in it (a stand-in for a stale kernel build)."""
    import subprocess

    src = tmp_path / f"{name}.c"
    src.write_text(body)
    out = tmp_path / f"{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out.read_bytes()


@pytest.fixture
def fake_rebuild(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path, and a compile step that installs a copy of the current
    library instead of running the compiler (~15 s); yields (cached .so path, compile calls)."""
    if "generic" not in BACKENDS:
        pytest.skip("no C compiler: the C kernel is not built")
    name = build._library_name(build._compiler())
    good = next((d / name for d in build._cache_dirs() if (d / name).exists()), None)
    if good is None:
        pytest.skip("the current kernel library is not in the cache")
    data = good.read_bytes()
    built = []

    def fake_compile(cc, d, name):
        built.append(d)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.test{len(built)}.tmp"
        tmp.write_bytes(data)
        return tmp

    monkeypatch.setenv("VFSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_compile", fake_compile)
    monkeypatch.setattr(build, "_state", None)
    monkeypatch.setattr(build, "_warned", set())
    yield build._cache_dirs()[0] / name, built, data


@pytest.mark.parametrize("stale", ["old-abi", "no-abi-symbol", "not-a-library"])
def test_stale_library_is_refused_and_rebuilt(stale, fake_rebuild, tmp_path):
    """A cached library of another ABI version (or none, or garbage) is not used: it is
    deleted and rebuilt, and the rebuilt one is what the scan runs on."""
    so, built, good = fake_rebuild
    body = {"old-abi": "int vfs_abi_version(void) { return 1; }\n",
            "no-abi-symbol": "int vfs_cpu_level(void) { return 0; }\n"}.get(stale)
    so.parent.mkdir(parents=True)
    so.write_bytes(_tiny_library(tmp_path, stale, body) if body else b"not an ELF file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refused library is rebuilt silently
        state = build.load()
    assert built == [so.parent]
    assert so.read_bytes() == good
    assert state.lib is not None and state.names == BACKENDS
    assert int(state.lib.vfs_abi_version()) == dispatch.ABI_VERSION
    rng = np.random.default_rng(2)
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, 3, 4, 4, 8, "uint8")
    wts = soft_mask(rng, 4, 4)
    qfeat = query_feats(rng, 4, 4, 8, "uint8")
    res = K.scan(feats, sqn, K.PreparedQuery.from_grid(qfeat, wts), scale=scale, qerr2=qerr2,
                 backend="generic")
    check(res, deq, orig, wts, qfeat, "uint8")


def test_current_library_is_used_as_is(fake_rebuild):
    so, built, good = fake_rebuild
    so.parent.mkdir(parents=True)
    so.write_bytes(good)
    assert build.load().names == BACKENDS
    assert built == []  # no rebuild


def test_abi_mismatch_after_rebuild_falls_back_to_numpy(fake_rebuild, monkeypatch):
    """The Python side expecting another ABI than the freshly built C reports: one warning,
    numpy only, and the refused library is not left in the cache."""
    so, built, _good = fake_rebuild
    monkeypatch.setattr(dispatch, "ABI_VERSION", dispatch.ABI_VERSION + 1)
    with pytest.warns(RuntimeWarning, match="ABI version"):
        state = build.load()
    assert state.names == ["numpy"] and state.lib is None
    assert len(built) == 1 and not so.exists()
    assert not list(so.parent.glob("*.tmp"))


# --------------------------------------------------------------------------- #
# self-checks
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", ["generic", "avx2", "avx512"])
def test_self_check_passes(backend):
    """Each C backend this CPU can run passes its self-check (generic against a float64 model,
    SIMD against generic), and is then offered."""
    state = build.load()
    if state.lib is None:
        pytest.skip(f"no C kernel here: {state.missing.get(backend)}")
    if dispatch.LEVELS[backend] > int(state.lib.vfs_cpu_level()):
        pytest.skip(f"{backend}: {state.missing[backend]}")
    assert build.self_check(state.lib, backend) == (True, "")
    assert backend in state.names


@pytest.mark.parametrize("backend", ["generic", "avx2", "avx512"])
def test_self_check_catches_a_wrong_backend(backend, monkeypatch):
    """A backend whose scores are off by 1e-3 fails its self-check, and load() leaves it out."""
    state = build.load()
    if state.lib is None or dispatch.LEVELS[backend] > int(state.lib.vfs_cpu_level()):
        pytest.skip(f"{backend} cannot run here")
    real = build.scan_c

    def skewed(lib, name, *a, **k):
        r = real(lib, name, *a, **k)
        if name == backend:
            r.score += np.float32(1e-3)
        return r

    monkeypatch.setattr(build, "scan_c", skewed)
    ok, why = build.self_check(state.lib, backend)
    assert not ok and "score" in why
    monkeypatch.setattr(build, "_state", None)
    monkeypatch.setattr(build, "_warned", set())
    with pytest.warns(RuntimeWarning, match=f"{backend} kernel disabled"):
        names = K.available_backends()
    assert backend not in names and "numpy" in names
    if backend == "generic":  # the SIMD backends are checked against generic: none is left
        assert names == ["numpy"]
    with pytest.raises(BackendUnavailable, match="self-check"):
        K.resolve_backend(backend)


# --------------------------------------------------------------------------- #
# query preparation, exact scores, read_floor, input checks
# --------------------------------------------------------------------------- #


def test_prepared_query_from_grid():
    rng = np.random.default_rng(14)
    qfeat = rng.standard_normal((6, 7, 5)).astype(np.float32)
    wts = np.zeros((6, 7))
    wts[1, 2] = 0.5
    wts[3, 4] = 1.0
    wts[2, 3] = 0.25
    q = K.PreparedQuery.from_grid(qfeat, wts)
    assert (q.h, q.w) == (3, 3)
    np.testing.assert_array_equal(q.dy, [0, 1, 2])
    np.testing.assert_array_equal(q.dx, [0, 1, 2])
    assert q.dy.dtype == q.dx.dtype == np.int32
    np.testing.assert_allclose(q.m2, [0.25, 0.0625, 1.0])
    np.testing.assert_allclose(q.qf[1], 0.0625 * qfeat[2, 3], rtol=1e-6)
    q64 = qfeat.astype(np.float64)
    cells = [((1, 2), 0.5), ((3, 4), 1.0), ((2, 3), 0.25)]
    expect = math.sqrt(sum(w**2 * float(q64[y, x] @ q64[y, x]) for (y, x), w in cells))
    assert q.qnorm == pytest.approx(expect, rel=1e-12)
    with pytest.raises(BadMask, match="empty") as e:
        K.PreparedQuery.from_grid(qfeat, np.zeros((6, 7)))
    assert e.value.param == "weights" and e.value.exit_code == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_matches_exact_scores(backend, dtype):
    """The scan agrees with the search's float64 refine step (searcher.exact_scores) on the
    features the kernel sees: best score within the query-rounding bound, same argmax."""
    rng = np.random.default_rng(15)
    feats, sqn, scale, qerr2, deq, _orig = make_feats(rng, 12, 6, 5, 30, dtype)
    wts = soft_mask(rng, 6, 5, box=(0, 1, 3, 2))
    qfeat = query_feats(rng, 6, 5, 30, dtype)
    q = K.PreparedQuery.from_grid(qfeat, wts)
    best, off, maps = exact_scores(deq, wts, qfeat)
    res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
    tol = res.eps_q + 2e-5 if dtype in ("uint8", "int8") else TOL[dtype]
    np.testing.assert_allclose(res.score, best, rtol=0, atol=tol)
    u = unique_best(maps, margin=2 * tol)  # every score moves by <= tol: the argmax cannot
    assert u.sum() >= 2
    np.testing.assert_array_equal(res.offset[u], off[u])


def _xor_words(data: bytes) -> int:
    """The read_floor checksum, written out: XOR of the native-endian 8-byte words of the
    first len - len % 32 bytes, then of the remaining single bytes."""
    m = len(data) // 32 * 32
    acc = 0
    for i in range(0, m, 8):
        acc ^= int.from_bytes(data[i : i + 8], sys.byteorder)
    for b in data[m:]:
        acc ^= b
    return acc


@pytest.mark.parametrize("path", ["c", "numpy"])
def test_read_floor_reads_every_byte(path, monkeypatch):
    """read_floor returns a checksum of every byte: the same for any thread count and backend,
    equal to the checksum written out in Python, and changed by flipping any single byte."""
    if path == "numpy":
        monkeypatch.setattr(build, "_state", build.Backends(None, ["numpy"]))
    elif "generic" not in BACKENDS:
        pytest.skip("no C compiler: the C kernel is not built")
    rng = np.random.default_rng(18)
    for nbytes in (1, 31, 32, 129, 3 * (1 << 16) + 77, (1 << 20) + 13):
        a = rng.integers(0, 256, nbytes, dtype=np.uint8)
        ref = _xor_words(a.tobytes())
        for t in (1, 2, 3, 8):
            assert K.read_floor(a, threads=t) == ref, (nbytes, t)
        m = nbytes // 32 * 32  # first, middle, last byte; last of the words, first of the tail
        for i in sorted({0, nbytes // 2, m - 1, m, nbytes - 1} & set(range(nbytes))):
            b = a.copy()
            b[i] ^= 0x5A
            assert K.read_floor(b, threads=3) == _xor_words(b.tobytes()) != ref, (nbytes, i)
    f16 = rng.standard_normal((4, 5, 17)).astype(np.float16)  # any dtype, any shape
    assert K.read_floor(f16, threads=2) == _xor_words(f16.tobytes())
    assert K.read_floor(f16[:0]) == 0
    with pytest.raises(ValueError):
        K.read_floor(f16[:, ::2])


def test_input_checks():
    rng = np.random.default_rng(16)
    feats, sqn, scale, _qerr2, _deq, _orig = make_feats(rng, 2, 4, 4, 8, "uint8")
    q = K.PreparedQuery.from_grid(query_feats(rng, 4, 4, 8, "uint8"), soft_mask(rng, 4, 4))
    with pytest.raises(ValueError):
        K.scan(feats, sqn, q)  # 8-bit needs scale
    with pytest.raises(ValueError):
        K.scan(feats[..., :4], sqn, q, scale=scale)  # C mismatch
    with pytest.raises(ValueError):
        K.scan(feats, sqn[:1], q, scale=scale)
    with pytest.raises(TypeError):
        K.scan(feats.astype(np.float64), sqn, q)
    q_big = K.PreparedQuery.from_grid(np.ones((5, 5, 8), np.float32), np.ones((5, 5)))
    with pytest.raises(ValueError):
        K.scan(feats, sqn, q_big, scale=scale)
    for f, kw in ((feats, {"scale": scale}), (feats.astype(np.float32), {})):
        with pytest.raises(BadParameter, match="precision") as e:
            K.scan(f, sqn, q, precision="exact", **kw)
        assert e.value.param == "precision"


# --------------------------------------------------------------------------- #
# lane layouts (channels / offsets / one offset), subsets, the exact refine scorer
# --------------------------------------------------------------------------- #

SIMD = [b for b in BACKENDS if b in ("avx512", "avx2")]
PATHS = ["channels", "offsets", "single"]


def _region(H, W, box, rng, density=0.8):
    return soft_mask(rng, H, W, box=box, density=density)


def _planted_case(rng, n, H, W, C, box, dtype, plant):
    """n images of 8-bit features, a query region ``box`` (y0, x0, h, w) with soft weights and
    its query features; with ``plant``, the query region put (×1.5) at the box's last offset of
    image 1. Returns (feats, sqn, scale, qerr2, deq, orig, weights, qfeat, prepared query)."""
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, dtype)
    y0, x0, h, w = box
    wts = _region(H, W, box, rng, density=1.0 if h * w == 1 else 0.8)
    qfeat = query_feats(rng, H, W, C, dtype)
    if plant:
        x = orig.copy()
        x[1, H - h:, W - w:] = 1.5 * qfeat[y0:y0 + h, x0:x0 + w]
        feats, sqn, scale, qerr2, deq, orig = requantise(x, dtype)
    return feats, sqn, scale, qerr2, deq, orig, wts, qfeat, K.PreparedQuery.from_grid(qfeat, wts)


@pytest.mark.parametrize("backend", SIMD)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("precision", ["fast", "fine"])
def test_every_lane_layout_matches_the_reference(backend, dtype, precision):
    """Each 8-bit SIMD layout, forced, on the shapes it is chosen for and on its edge cases
    (grids of the default model's layers, odd channel counts, masks of one cell, a row, the
    whole grid, a box at the last offsets): scores, offsets and bounds as the float64 model."""
    rng = np.random.default_rng(zlib.crc32(f"{backend}{dtype}{precision}".encode()))
    cases = [  # (H, W, C, box (y0, x0, h, w))
        (14, 14, 112, (5, 5, 3, 3)), (14, 14, 112, (0, 0, 1, 1)), (14, 14, 112, (0, 0, 14, 14)),
        (28, 28, 40, (11, 12, 3, 3)), (28, 28, 40, (27, 0, 1, 28)), (7, 7, 1280, (2, 2, 3, 3)),
        (7, 7, 320, (0, 0, 7, 7)), (16, 16, 384, (3, 9, 4, 7)), (5, 6, 37, (4, 5, 1, 1)),
        (9, 3, 17, (0, 0, 9, 3)), (6, 5, 65, (0, 1, 6, 4)),
    ]
    for H, W, C, box in cases:
        n = 3 if H * W * C > 40000 else 5
        feats, sqn, scale, qerr2, deq, orig, wts, qfeat, q = _planted_case(
            rng, n, H, W, C, box, dtype, plant=box[2] * box[3] > 1)
        for path in PATHS:
            res = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend,
                         precision=precision, path=path)
            check(res, deq, orig, wts, qfeat, dtype)


@pytest.mark.parametrize("backend", SIMD)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_channels_lane_sums_at_384_channels(backend, dtype):
    """The int8-query channels layout that sums each (cell, k) dot's lanes per offset in float
    (AVX-512; AVX2 runs its own channels kernel here): transformer grids of 384 channels (and
    one ragged width), a cell at each corner, a box planted at the last offsets, the whole
    grid; scores, offsets and bounds as the float64 model, forced and chosen (auto), and an
    image scanned alone (odd n, ids) exactly as when scanned in a pair."""
    rng = np.random.default_rng(zlib.crc32(f"lsum{backend}{dtype}".encode()))
    cases = [  # (H, W, C, box (y0, x0, h, w))
        (16, 16, 384, (0, 0, 1, 1)), (16, 16, 384, (15, 15, 1, 1)), (14, 14, 384, (5, 4, 3, 3)),
        (16, 16, 384, (0, 0, 16, 16)), (14, 14, 384, (0, 2, 14, 12)), (9, 7, 389, (6, 4, 3, 3)),
    ]
    for H, W, C, box in cases:
        feats, sqn, scale, qerr2, deq, orig, wts, qfeat, q = _planted_case(
            rng, 3, H, W, C, box, dtype, plant=box[2] * box[3] > 1)
        kw = {"scale": scale, "qerr2": qerr2, "backend": backend, "precision": "fast"}
        for path in ("channels", "auto"):
            res = K.scan(feats, sqn, q, path=path, **kw)
            check(res, deq, orig, wts, qfeat, dtype)
        res = K.scan(feats, sqn, q, path="channels", **kw)
        sub = K.scan(feats, sqn, q, path="channels", ids=[2, 0, 1], **kw)
        for f in ("score", "offset", "upper", "lower"):
            np.testing.assert_array_equal(getattr(sub, f), getattr(res, f)[[2, 0, 1]])


@pytest.mark.parametrize("backend", SIMD)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("precision", ["fast", "fine"])
def test_offsets_layout_every_shift_block_and_chunk(backend, dtype, precision):
    """The offsets layout reads each position block's cells as aligned vectors and shifts them
    onto the positions by off_k % 16 lanes (AVX-512): queries whose cells cover every shift
    (boxes a full row wide, odd widths), several position blocks (28 x 28), several channel
    chunks carried in accm (16 x 16 x 150), 112 / 40 / odd channel counts, one cell at the last
    offset and the whole grid; scores, offsets and bounds as the float64 model, and a subset of
    rows by id exactly as those rows scanned with the rest."""
    rng = np.random.default_rng(zlib.crc32(f"offs{backend}{dtype}{precision}".encode()))
    cases = [  # (H, W, C, box (y0, x0, h, w))
        (14, 14, 112, (0, 0, 2, 14)), (9, 17, 37, (1, 0, 2, 17)), (28, 28, 40, (11, 12, 3, 3)),
        (16, 16, 150, (3, 2, 5, 9)), (14, 14, 112, (13, 13, 1, 1)), (12, 13, 69, (0, 0, 12, 13)),
        (7, 7, 320, (1, 1, 4, 5)), (20, 9, 23, (0, 0, 3, 9)),
    ]
    for H, W, C, box in cases:
        feats, sqn, scale, qerr2, deq, orig, wts, qfeat, q = _planted_case(
            rng, 4, H, W, C, box, dtype, plant=True)  # a box at the last offset of image 1
        _, _, h, w = box
        kw = {"scale": scale, "qerr2": qerr2, "backend": backend, "precision": precision,
              "path": "offsets"}
        res = K.scan(feats, sqn, q, **kw)
        check(res, deq, orig, wts, qfeat, dtype)
        assert res.offset[1] == (H - h + 1) * (W - w + 1) - 1
        ids = [3, 1, 1, 0]
        sub = K.scan(feats, sqn, q, ids=ids, **kw)
        for f in ("score", "offset", "upper", "lower"):
            np.testing.assert_array_equal(getattr(sub, f), getattr(res, f)[ids])


@pytest.mark.parametrize("backend", BACKENDS)
def test_scanning_a_subset_by_row_id(backend):
    """ids: the rows given (any order, repeats), as if those rows were scanned on their own."""
    rng = np.random.default_rng(31)
    feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 40, 14, 14, 40, "int8")
    q = K.PreparedQuery.from_grid(query_feats(rng, 14, 14, 40, "int8"),
                                  _region(14, 14, (4, 4, 3, 3), rng))
    full = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend)
    ids = np.array([39, 0, 17, 17, 5, 38])
    sub = K.scan(feats, sqn, q, scale=scale, qerr2=qerr2, backend=backend, ids=ids, threads=2)
    for f in ("score", "offset", "upper", "lower"):
        np.testing.assert_array_equal(getattr(sub, f), getattr(full, f)[ids])
    assert len(K.scan(feats, sqn, q, scale=scale, backend=backend, ids=ids[:0]).score) == 0
    with pytest.raises(ValueError):
        K.scan(feats, sqn, q, scale=scale, backend=backend, ids=[40])


@pytest.mark.parametrize("backend", SIMD)
def test_tighten_rescans_in_place(backend):
    """tighten_k re-scans its candidates by row id: the same bounds as a fine scan of them."""
    rng = np.random.default_rng(32)
    feats, sqn, scale, qerr2, _deq, _orig = make_feats(rng, 300, 14, 14, 112, "int8")
    q = K.PreparedQuery.from_grid(query_feats(rng, 14, 14, 112, "int8"),
                                  _region(14, 14, (5, 5, 3, 3), rng, density=1.0))
    kw = {"scale": scale, "qerr2": qerr2, "backend": backend}
    fine = K.scan(feats, sqn, q, precision="fine", **kw)
    tight = K.scan(feats, sqn, q, tighten_k=10, **kw)
    cand = tight.upper != K.scan(feats, sqn, q, **kw).upper
    assert 0 < tight.rescanned < len(feats)
    np.testing.assert_array_equal(tight.upper[cand], fine.upper[cand])


@pytest.mark.skipif(not hasattr(__import__("mmap"), "PROT_READ"), reason="needs mmap protections")
@pytest.mark.parametrize("backend", SIMD)
@pytest.mark.parametrize("C", [37, 40, 64])
def test_no_layout_reads_past_the_features(backend, C):
    """Every lane layout (masked and padded reads) on features that end at an unreadable page."""
    rng = np.random.default_rng(C)
    n, H, W = 2, 6, 5
    feats, sqn, scale, qerr2, deq, orig = make_feats(rng, n, H, W, C, "int8")
    with ending_at_a_guard_page(feats) as arr:
        for box in ((2, 1, 3, 3), (0, 0, H, W)):
            wts = _region(H, W, box, rng, density=1.0)
            qfeat = query_feats(rng, H, W, C, "int8")
            q = K.PreparedQuery.from_grid(qfeat, wts)
            for path in PATHS:
                for precision in ("fast", "fine"):
                    res = K.scan(arr, sqn, q, scale=scale, qerr2=qerr2, backend=backend,
                                 precision=precision, path=path, ids=[1, 0, 1])
                    assert np.all(np.isfinite(res.score))
                    res = K.scan(arr, sqn, q, scale=scale, qerr2=qerr2, backend=backend,
                                 precision=precision, path=path)
                    check(res, deq, orig, wts, qfeat, "int8")


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_best_is_the_float64_reference_and_ties_exactly(backend):
    """The refine scorer: float64 best score and offset as the reference; identical rows give
    identical scores wherever they sit (batch position, memory alignment)."""
    rng = np.random.default_rng(33)
    for H, W, C, box in ((14, 14, 112, (5, 5, 3, 3)), (7, 7, 1280, (0, 0, 7, 7)),
                         (5, 4, 37, (1, 1, 2, 3)), (1, 1, 3, (0, 0, 1, 1))):
        x = rng.standard_normal((9, H, W, C)).astype(np.float32)
        x[4] = x[7] = x[1]
        wts = _region(H, W, box, rng)
        qfeat = rng.standard_normal((H, W, C)).astype(np.float32)
        ref_s, ref_o, _ = reference_scores(x, wts, qfeat)
        best, off = K.exact_best(x, wts, qfeat, backend=backend)
        np.testing.assert_allclose(best, ref_s, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(off, ref_o)
        assert best[1] == best[4] == best[7]
        shifted = np.empty(x.size + 3, np.float32)[1:x.size + 1].reshape(x.shape)
        shifted[:] = x
        assert np.array_equal(K.exact_best(shifted[::-1], wts, qfeat, backend=backend)[0],
                              best[::-1])
    with pytest.raises(BadMask):
        K.exact_best(x, np.zeros((H, W)), qfeat)
