"""Explaining a match: exact shares sum to the score; occlusion and RISE find a planted crop;
RISE is deterministic with a seed; insertion/deletion behave on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vfsearch import index, make_query, search
from vfsearch.explain import ExactExplainer, FeatureOcclusionExplainer, explain, insertion_deletion


def test_exact_shares_sum_to_the_score(small_cache):
    c = small_cache
    for layer in ("blocks.15", "blocks.10"):
        q = make_query(c, 4, box=(40, 40, 200, 180), layer=layer)
        r = search(c, q, k=3)
        for m in r:
            ex = ExactExplainer(c).explain(q, m.id)
            assert ex.score == pytest.approx(m.score, abs=1e-5)
            assert sum(s["share"] for s in ex.extra["cell_shares"]) == pytest.approx(ex.score, abs=1e-5)
            assert ex.extra["channel_share_sum"] == pytest.approx(ex.score, abs=1e-5)
            assert ex.saliency.sum() == pytest.approx(ex.score, abs=1e-5)
            assert ex.query_saliency.sum() == pytest.approx(ex.score, abs=1e-5)
            # result-side heat sits on the matched window
            a, b = m.offset
            h, w = r.cell_weights().shape
            assert np.count_nonzero(ex.saliency[a:a + h, b:b + w]) == np.count_nonzero(ex.saliency)
            patches = ex.extra["top_channels"][0]["patches"]
            assert patches and all(0 <= p["id"] < len(c) for p in patches)


def test_feature_occlusion_peaks_on_the_matched_cells(small_cache):
    c = small_cache
    q = make_query(c, 4, box=(40, 40, 200, 180))
    m = search(c, q, k=1)[0]
    ex = FeatureOcclusionExplainer(c).explain(q, m.id)
    y, x = np.unravel_index(ex.saliency.argmax(), ex.saliency.shape)
    a, b = m.offset
    h, w = search(c, q, k=1).cell_weights().shape
    assert a <= y < a + h and b <= x < b + w


@pytest.fixture(scope="module")
def planted(small_cache, model, tmp_path_factory):
    """A crop of one photo pasted into an unrelated photo, at the same scale."""
    tmp = tmp_path_factory.mktemp("planted")
    src = Image.open(small_cache.abspath(4)).convert("RGB")
    w, h = src.size
    crop_box = (w // 2 - 50, h // 2 - 50, w // 2 + 50, h // 2 + 50)  # inside the centre crop
    short = min(src.size)
    canvas = Image.open(small_cache.abspath(13)).convert("RGB").resize((short, short))
    at = (short - 130, 30)
    canvas.paste(src.crop(crop_box), at)
    (tmp / "imgs").mkdir()
    src.save(tmp / "imgs" / "a_source.png")
    canvas.save(tmp / "imgs" / "b_planted.png")
    Image.open(small_cache.abspath(13)).convert("RGB").save(tmp / "imgs" / "c_other.png")
    c = index(tmp / "imgs", tmp / "c", model=model, layers=["blocks.10"], workers=0, progress=False).cache
    q = make_query(c, 0, box=crop_box)
    pasted = (at[0], at[1], at[0] + 100, at[1] + 100)
    return c, q, pasted, model


def _peak_in_box(c, ex, rid, box):
    g = c.transform.geometry(*c.image_size(rid))
    y, x = np.unravel_index(ex.saliency.argmax(), ex.saliency.shape)
    scale = g.size / ex.saliency.shape[0]
    px, py = g.to_image((x + 0.5) * scale, (y + 0.5) * scale)
    return box[0] - 16 <= px <= box[2] + 16 and box[1] - 16 <= py <= box[3] + 16


def test_occlusion_of_the_matched_region_lowers_the_score_most(planted):
    c, q, pasted, model = planted
    r = search(c, q, k=1)
    assert r[0].id == 1
    ex = explain(c, q, 1, "occlusion", model=model, window=56, stride=28, auc_steps=8)
    assert _peak_in_box(c, ex, 1, pasted)
    assert ex.insertion_auc > ex.deletion_auc


def test_rise_peak_inside_pasted_box_and_deterministic(planted):
    c, q, pasted, model = planted
    kw = dict(n_masks=96, cells=7, seed=3, auc_steps=6, batch_size=32)
    a = explain(c, q, 1, "rise", model=model, use_cache=False, **kw)
    b = explain(c, q, 1, "rise", model=model, use_cache=False, **kw)
    assert np.array_equal(a.saliency, b.saliency)
    assert _peak_in_box(c, a, 1, pasted)
    other = explain(c, q, 1, "rise", model=model, use_cache=False, **{**kw, "seed": 4})
    assert not np.array_equal(a.saliency, other.saliency)


def test_insertion_deletion_on_a_synthetic_case_with_a_known_answer():
    S = 64
    x = np.zeros((3, S, S), np.float32)
    x[:, 8:24, 40:56] = 1.0  # the only thing the score looks at
    xb = np.zeros_like(x)

    def score(batch):  # fraction of the bright square still present
        return batch[:, 0, 8:24, 40:56].mean(axis=(1, 2))

    good = np.zeros((S, S))
    good[8:24, 40:56] = 1.0
    bad = 1.0 - good
    ins_g, del_g = insertion_deletion(good, x, xb, score, steps=16)
    ins_b, del_b = insertion_deletion(bad, x, xb, score, steps=16)
    assert ins_g > 0.9 and del_g < 0.1  # right map: score appears at once / vanishes at once
    assert ins_b < 0.2 and del_b > 0.8  # wrong map: the opposite
