"""Global similarity ("similar images"): cosine of mean-pooled features, exact against a float64
reference, finding shifted views that the paper's rigid whole-image query misses."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vfsearch import BadQuery, index, make_query, search, search_many
from vfsearch.engine.global_search import cell_shares, pooled_cosine


@pytest.fixture(scope="module")
def views(tmp_path_factory, model):
    """Each sample photo cut into two views: its left 75 % and its right 75 % (the content is
    shifted by a quarter of the width between partners)."""
    from vfsearch.datasets import _FILES, SAMPLE_PHOTOS, _source_dir

    src = tmp_path_factory.mktemp("views")
    names = [n for n in SAMPLE_PHOTOS if n not in ("chessboard", "color", "logo", "page", "text")]
    for name in names:
        img = Image.open(_source_dir() / _FILES[name]).convert("RGB")
        w, h = img.size
        img.crop((0, 0, int(w * 0.75), h)).save(src / f"{name}_left.jpg", quality=92)
        img.crop((w - int(w * 0.75), 0, w, h)).save(src / f"{name}_right.jpg", quality=92)
    cache = index(src, tmp_path_factory.mktemp("vc") / "c", model=model, label_from=None,
                  label_pattern=r"^(?P<label>.+)_(left|right)\.jpg$", workers=0, progress=False,
                  batch_size=8).cache
    return cache


def _partner_first(cache, mode) -> int:
    hits = 0
    for i in range(len(cache)):
        res = search(cache, i, mode=mode, k=1)
        hits += res[0].label == cache.labels[i]
    return hits


def test_global_finds_shifted_partners_the_rigid_query_misses(views):
    n = len(views)
    glob = _partner_first(views, "global")
    rigid = _partner_first(views, "whole")
    assert glob >= 0.9 * n, (glob, rigid, n)
    assert glob > rigid


def test_global_equals_a_float64_pooled_cosine_reference(views):
    c = views
    feats = c.rows_features(c.default_layer, np.arange(len(c)))
    pooled = feats.astype(np.float64).mean(axis=(1, 2))
    for q in (0, 5, len(c) - 1):
        res = search(c, q, mode="global", k=6, return_scores=True)
        ref = pooled_cosine(pooled, pooled[q])
        ref[q] = -np.inf
        want = np.lexsort((np.arange(len(c)), -ref))[:6]
        assert list(res.ids) == list(want)
        assert np.allclose(res.top_scores, ref[want], atol=1e-9)
        assert np.allclose(res.scores[np.isfinite(res.scores)], ref[np.isfinite(ref)], atol=1e-5)
        m = res[0]
        assert m.offset == (0, 0)
        assert m.box == pytest.approx(c.transform.geometry(*m.image_size).crop)
        assert res.to_dict()["mode"] == "global"


def test_global_query_from_an_external_image_and_its_cell_shares(views, model):
    c = views
    img = Image.open(c.abspath(2))
    q = make_query(c, img, mode="global")
    assert q.mode == "global" and q.source_id is None
    assert q.pooled.shape == (c.layer_info()["channels"],)
    res = search(c, q, k=1)
    assert res[0].id == 2 and res[0].score == pytest.approx(1.0, abs=1e-5)
    cells, chans = cell_shares(q.pooled, c.features(3))
    score = search(c, q, k=len(c), return_scores=True).scores[3]
    assert cells.sum() == pytest.approx(score, abs=1e-5)
    assert chans.sum() == pytest.approx(score, abs=1e-5)
    assert np.allclose(search(c, q, k=2).score_map(3), cells)


def test_global_and_region_queries_together(views):
    c = views
    qs = [make_query(c, 1, mode="global"), make_query(c, 1, box=(20, 20, 120, 120)),
          make_query(c, 1, whole=True)]
    got = search_many(c, qs, k=3)
    assert [r.query.mode for r in got] == ["global", "region", "whole"]
    for q, r in zip(qs, got, strict=True):
        assert list(r.ids) == list(search(c, q, k=3).ids)


def test_global_with_dedup_drops_the_partner_view(views):
    c = views
    plain = search(c, 0, mode="global", k=3, exclude_self=False)
    assert plain[0].id == 0
    dedup = search(c, 0, mode="global", k=3, exclude_self=False, dedup=0.5)
    assert dedup[0].id == 0 and len(set(dedup.ids)) == len(dedup)
    assert all(c.labels[i] != c.labels[0] for i in dedup.ids[1:])


def test_bad_global_queries(views):
    c = views
    with pytest.raises(BadQuery, match="whole image") as e:
        make_query(c, 0, mode="global", box=(0, 0, 10, 10))
    assert e.value.param == "box"
    with pytest.raises(BadQuery, match="mode"):
        make_query(c, 0, mode="sideways")
    with pytest.raises(BadQuery):
        make_query(c, 0, whole=True, mode="global")


def test_search_cli_global(views):
    from vfsearch.cli import main

    r = CliRunner().invoke(main, ["search", str(views.path), "--image", "0", "--global", "-k", "2",
                                  "--json"])
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(r.output)
    assert d["mode"] == "global" and len(d["matches"]) == 2
    r = CliRunner().invoke(main, ["search", str(views.path), "--image", "0", "--global",
                                  "--box", "1,1,9,9"])
    assert r.exit_code == 2 and "--box" in r.output


def test_results_and_cache_as_dataframes(views, tmp_path):
    pd = pytest.importorskip("pandas")
    c = views
    res = search(c, 3, box=(10, 10, 90, 90), k=4)
    df = res.to_pandas()
    assert list(df.columns) == ["rank", "id", "path", "label", "score", "x0", "y0", "x1", "y1",
                                "row", "col", "width", "height"]
    assert df["id"].dtype == "int64" and df["score"].dtype == "float64"
    assert df["label"].dtype == "string" and list(df["id"]) == list(res.ids)
    assert np.allclose(df[["x0", "y0", "x1", "y1"]].to_numpy()[0], res[0].box)
    cdf = c.to_pandas()
    assert len(cdf) == len(c) and set(cdf["status"]) == {"indexed"}
    assert cdf["status"].dtype == "category" and cdf["width"].dtype == "int64"
    assert list(cdf["label"])[:2] == list(c.labels[:2])
    # the CLI's --csv writes the same table
    from vfsearch.cli import main

    out = tmp_path / "r.csv"
    r = CliRunner().invoke(main, ["search", str(c.path), "-i", "3", "--box", "10,10,90,90",
                                  "-k", "4", "--csv", str(out)])
    assert r.exit_code == 0, r.output
    back = pd.read_csv(out)
    assert list(back.columns) == list(df.columns) and list(back["id"]) == list(df["id"])
    assert np.allclose(back["score"], df["score"])


def test_a_region_partly_outside_the_crop_is_noted(views):
    c = views
    i = next(j for j in range(len(c)) if c.transform.geometry(*c.image_size(j)).crop[1] > 20)
    w, h = c.image_size(i)
    x0, y0, x1, _y1 = c.transform.geometry(w, h).crop
    inside = make_query(c, i, box=(x0 + 5, y0 + 5, x0 + 60, y0 + 60))
    assert inside.notes == ()
    half_out = (x0 + 5, 0, x0 + 60, y0 + 20)
    q = make_query(c, i, box=half_out)
    assert len(q.notes) == 1 and "outside what the model sees" in q.notes[0]
    from vfsearch.cli import main

    r = CliRunner().invoke(main, ["search", str(c.path), "-i", str(i), "--box",
                                  ",".join(str(v) for v in half_out), "-k", "1"])
    assert r.exit_code == 0 and "note:" in r.stderr
