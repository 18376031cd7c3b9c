"""Explaining a whole-image ("global") match: its score is the cosine of mean-pooled vectors, so
the exact shares split that score (not a region score) and the black boxes perturb with the
pooled-cosine scorer — in the library and through the server's explain route."""

from __future__ import annotations

import numpy as np
import pytest

from vfsearch import make_query, search
from vfsearch.explain import explain

LAYER = "blocks.10"


@pytest.fixture(scope="module")
def glob(small_cache):
    q = make_query(small_cache, 4, mode="global", layer=LAYER)
    return small_cache, q, search(small_cache, q, k=3)


def test_exact_shares_sum_to_the_global_score(glob):
    c, q, res = glob
    whole = make_query(c, 4, mode="whole", layer=LAYER)
    for m in res:
        ex = explain(c, q, m.id, "exact")
        assert ex.score == pytest.approx(m.score, abs=1e-6)
        assert ex.offset == (0, 0) and ex.extra["global"]
        assert sum(s["share"] for s in ex.extra["cell_shares"]) == pytest.approx(m.score, abs=1e-6)
        assert ex.saliency.sum() == pytest.approx(m.score, abs=1e-6)
        assert ex.query_saliency.sum() == pytest.approx(m.score, abs=1e-6)
        assert ex.extra["channel_share_sum"] == pytest.approx(m.score, abs=1e-6)
        assert ex.saliency.shape == c.features(m.id, LAYER).shape[:2]
        # the float copy of the cache: the per-cell features are the pooled vector's own
        assert abs(ex.extra["pooled_residual"]) < 1e-6
        # the same pixels as a whole-image region query explain another score (not memoised
        # as the same explanation)
        w = explain(c, whole, m.id, "exact")
        assert abs(w.score - ex.score) > 1e-4


def test_pooled_shares_spread_a_residual_evenly():
    from vfsearch.engine.global_search import pooled_cosine
    from vfsearch.explain.exact import pooled_shares

    rng = np.random.default_rng(0)
    f = rng.random((5, 6, 8))
    p = f.mean(axis=(0, 1)) + rng.normal(0, 0.01, 8)  # a stored vector off the 8-bit cells
    qv = rng.random(8)
    cells, chans, resid = pooled_shares(qv, f, p)
    cos = float(pooled_cosine(p[None], qv)[0])
    assert cells.sum() == pytest.approx(cos) and chans.sum() == pytest.approx(cos)
    assert resid != 0 and np.ptp(cells - (f @ (qv / np.linalg.norm(qv))) /
                                 (30 * np.linalg.norm(p))) < 1e-12


def test_feature_occlusion_of_a_global_match(glob):
    c, q, res = glob
    m = res[0]
    ex = explain(c, q, m.id, "feature")
    assert ex.score == pytest.approx(m.score, abs=1e-6)
    f = c.features(m.id, LAYER).astype(np.float64)
    H, W = f.shape[:2]
    y, x = 2, 3
    from vfsearch.engine.global_search import pooled_cosine

    p = c.pooled(LAYER, [m.id])[0].astype(np.float64) - f[y, x] / (H * W)
    assert ex.saliency[y, x] == pytest.approx(m.score - pooled_cosine(p[None], q.pooled)[0])


def test_black_boxes_score_a_global_match_by_its_pooled_cosine(glob, model):
    from vfsearch.explain.blackbox import Scorer, image_for, input_arrays
    from vfsearch.explain.forward import layer_net

    c, q, res = glob
    m = res[0]
    sc = Scorer(layer_net(model, LAYER, c.transform.size), q, 8)
    x, xb = input_arrays(image_for(c, m.id), c.transform)
    got = sc.results(np.stack([x, xb]))
    assert got[0] == pytest.approx(m.score, abs=2e-3)  # the unperturbed result: its score
    assert got[1] < got[0]
    ref = c.pooled(LAYER, [m.id])[0]
    qx, _ = input_arrays(image_for(c, 4), c.transform)
    assert sc.queries(qx[None], ref)[0] == pytest.approx(m.score, abs=2e-3)
    ex = explain(c, q, m.id, "rise", model=model, n_masks=8, batch_size=8, auc_steps=2,
                 use_cache=False)
    assert ex.score == pytest.approx(m.score, abs=1e-6) and ex.offset == (0, 0)
    assert ex.insertion_auc is not None and ex.saliency.shape == (224, 224)


def test_the_mask_scores_a_global_query_like_the_search():
    import torch

    from vfsearch.engine.global_search import pooled_cosine
    from vfsearch.explain.mask import PooledScore

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 7, 7, 16)).astype(np.float32)
    qv = rng.normal(size=16).astype(np.float32)
    ps = PooledScore()
    got = ps(torch.from_numpy(feats.transpose(0, 3, 1, 2).copy()), *ps.vector(qv, "cpu"))
    want = pooled_cosine(feats.astype(np.float64).mean(axis=(1, 2)), qv)
    assert np.allclose(got.numpy(), want, atol=1e-5)


def test_the_server_explains_a_global_search_by_its_score(small_cache):
    from server_schema import checked_client

    from vfsearch.server import create_app

    with checked_client(create_app({"small": small_cache})) as client:
        r = client.post("/api/search", json={"cache": "small", "layer": LAYER,
                                             "image": {"id": 4}, "mode": "global", "k": 3})
        assert r.status_code == 200, r.text
        d = r.json()
        for m in d["matches"][:2]:
            r = client.post(f"/api/searches/{d['search_id']}/explain",
                            json={"id": m["id"], "method": "exact"})
            assert r.status_code == 200, r.text
            ex = r.json()["result"]
            assert ex["score"] == pytest.approx(m["score"], abs=1e-5)
            assert np.sum(ex["saliency"]) == pytest.approx(m["score"], abs=1e-4)
            assert np.sum(ex["query_saliency"]) == pytest.approx(m["score"], abs=1e-4)
