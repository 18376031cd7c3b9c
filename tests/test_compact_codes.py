"""Compact first-pass codes (vfsearch.engine.codes): the bounds hold the exact score of every
image, the exact top k is always among the candidates, and the re-ranked result equals a float64
brute-force search, on random features and on adversarial near-ties."""

import numpy as np
import pytest

from vfsearch.engine import codes as cd
from vfsearch.engine.searcher import _topk, exact_scores
from vfsearch.errors import BadMask, BadParameter

H = W = 6
C = 24


def _mask(rng, full=False):
    w = np.zeros((H, W), np.float32)
    if full:
        w[1:4, 2:5] = 1
    else:
        w[1:4, 2:5] = rng.uniform(0.2, 1.0, (3, 3))
        w[2, 2] = 0  # a hole: K = 8 cells
    return w


def _check(feats, weights, qfeat, basis, bits, k, exclude=None, **kw):
    truth = exact_scores(feats, weights, qfeat)[0]
    c = cd.encode(feats, basis, bits=bits, block=37, **kw)
    lower, upper = cd.bounds(c, weights, qfeat, block=29)
    assert lower.shape == upper.shape == (len(feats),)
    assert np.all(lower <= truth + 1e-7), "lower bound above the exact score"
    assert np.all(upper >= truth - 1e-7), "upper bound below the exact score"
    ref = truth.copy()
    if exclude is not None:
        ref[exclude] = -np.inf
    want = _topk(ref, k)
    cand = cd.candidates(lower, upper, k, exclude)
    assert set(want.tolist()) <= set(cand.tolist())
    ids, scores, stats = cd.search_codes(c, weights, qfeat, k, lambda i: feats[i],
                                         exclude=exclude)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(scores, truth[want])
    assert stats["candidates"] == len(cand)
    return len(cand), float(np.median(upper - lower))


@pytest.mark.parametrize("d,bits,kw", [(4, 8, {}), (12, 8, {}), (C, 8, {}), (6, 4, {}),
                                       (C, 4, {}), (C, 6, {}), (12, 5, {"qerr": True}),
                                       (C, 4, {"qerr": True}), (C, 5, {"clip": 0.9})])
@pytest.mark.parametrize("signed", [True, False])
def test_bounds_and_exact_topk_random(d, bits, kw, signed):
    rng = np.random.default_rng(d * 10 + bits + signed)
    f = rng.standard_normal((160, H, W, C)).astype(np.float32)
    if not signed:
        f = np.maximum(f - 0.3, 0)
    f *= rng.uniform(0.05, 20, (160, H, W, 1)).astype(np.float32)  # varied cell norms
    f[3, 1:4] = 0  # zero cells (den may be 0 at some offsets)
    f[4] = 0  # an all-zero image: score 0 everywhere
    basis = cd.train_basis(f[:40], d)
    np.testing.assert_allclose(basis @ basis.T, np.eye(d), atol=1e-12)
    w = _mask(rng)
    q = f[7]
    _check(f, w, q, basis, bits, k=10, exclude=[7], **kw)
    _check(f, w, rng.standard_normal((H, W, C)).astype(np.float32), basis, bits, k=5, **kw)


def test_full_dims_8bit_prunes_and_small_d_is_loose():
    """With every dimension coded at 8 bits the bounds are tight and prune; with few dims of
    random features the residual term dominates (documents the trade-off the benchmark
    measures)."""
    rng = np.random.default_rng(5)
    f = rng.standard_normal((300, H, W, C)).astype(np.float32)
    w = _mask(rng, full=True)
    q = f[11]
    n_full, width_full = _check(f, w, q, cd.train_basis(f[:50], C), 8, k=10, exclude=[11])
    n_small, width_small = _check(f, w, q, cd.train_basis(f[:50], 4), 8, k=10, exclude=[11])
    assert n_full < 60 and width_full < 0.05
    assert width_small > 10 * width_full and n_small >= n_full


@pytest.mark.parametrize("d,bits,kw", [(6, 8, {}), (C, 8, {}), (C, 4, {}), (C, 4, {"qerr": True}),
                                       (C, 6, {"clip": 0.8})])
def test_adversarial_near_ties(d, bits, kw):
    """Many near-identical images (one base map plus noise of 1e-6 .. 1e-3, exact duplicates,
    shifted copies): the codes cannot tell them apart, the re-rank must, ties broken by id."""
    rng = np.random.default_rng(40 + d + bits)
    base = rng.standard_normal((H, W, C)).astype(np.float32)
    n = 120
    f = np.repeat(base[None], n, axis=0)
    eps = np.float32([0, 1e-6, 1e-5, 1e-4, 1e-3])[rng.integers(0, 5, n)]
    f += eps[:, None, None, None] * rng.standard_normal((n, H, W, C)).astype(np.float32)
    f[10:20] = f[9]  # exact duplicates: exact ties
    f[30:40] = np.roll(f[30:40], 1, axis=2)  # shifted copies: the best offset moves
    f[50:60] *= np.float32(3.7)  # scaled copies: same cosine, other norms
    f[60:70] = rng.standard_normal((10, H, W, C)).astype(np.float32)  # unrelated images
    basis = cd.train_basis(f, d)
    w = _mask(rng)
    q = base + np.float32(1e-4) * rng.standard_normal((H, W, C)).astype(np.float32)
    for k in (1, 10, 25):
        ncand, _ = _check(f, w, q, basis, bits, k=k, **kw)
        assert ncand >= k


def test_stored_qerr_tightens_the_bound():
    """Storing each cell's quantisation error norm never loosens the bound (the min of the box
    and the Cauchy-Schwarz forms) and adds 2 bytes per cell."""
    rng = np.random.default_rng(9)
    f = rng.standard_normal((80, H, W, C)).astype(np.float32)
    w = _mask(rng, full=True)
    basis = np.eye(C)
    plain, withq = cd.encode(f, basis, bits=5), cd.encode(f, basis, bits=5, qerr=True)
    assert withq.bytes_per_image == plain.bytes_per_image + 2 * H * W
    lo0, up0 = cd.bounds(plain, w, f[3])
    lo1, up1 = cd.bounds(withq, w, f[3])
    assert np.all(up1 <= up0 + 1e-6) and np.all(lo1 >= lo0 - 1e-6)
    assert np.median(up1 - lo1) < np.median(up0 - lo0)
    with pytest.raises(BadParameter):
        cd.encode(f, basis, clip=0)


def test_errors():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((4, H, W, C)).astype(np.float32)
    with pytest.raises(BadParameter):
        cd.train_basis(f, 0)
    with pytest.raises(BadParameter):
        cd.train_basis(f, C + 1)
    basis = cd.train_basis(f, 4)
    with pytest.raises(BadParameter):
        cd.encode(f, basis, bits=9)
    with pytest.raises(BadParameter):
        cd.encode(f[..., :5], basis)
    c = cd.encode(f, basis)
    assert c.bytes_per_image == H * W * (4 + 6) and len(c) == 4 and c.d == 4
    with pytest.raises(BadMask):
        cd.bounds(c, np.zeros((H, W)), f[0])
    c4 = cd.encode(f, cd.train_basis(f, 5), bits=4)
    assert c4.codes.shape == (4, H, W, 3) and c4.unpack().shape == (4, H, W, 5)
    assert c4.bytes_per_image == H * W * (3 + 6)
    assert np.abs(c4.unpack()).max() <= 7
