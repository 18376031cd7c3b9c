"""Index mode ``full``: whole images at their own aspect on a padded grid (portraits stored
transposed), searchable everywhere, borders included — checked against a float64 reference in
each image's own orientation, and through the CLI, the web API and the explainers."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from server_schema import checked_client

import vfsearch
from vfsearch.cli import main
from vfsearch.datasets import _FILES, _source_dir
from vfsearch.engine.searcher import exact_scores
from vfsearch.errors import BadMask, BadParameter, BadQuery
from vfsearch.explain import explain
from vfsearch.extract import extract_image
from vfsearch.geometry import offset_rc

LAYER = "blocks.10"


def _photo(name: str, size=None) -> Image.Image:
    img = Image.open(_source_dir() / _FILES[name]).convert("RGB")
    return img.resize(size, Image.Resampling.BICUBIC) if size else img


@pytest.fixture(scope="module")
def full(tmp_path_factory, model):
    """A 2:1 panorama (astronaut | cat), its right half on its own, a portrait (coffee turned a
    quarter) and landscapes of other aspects, indexed in mode full through the CLI."""
    d = tmp_path_factory.mktemp("full_images")
    left, right = _photo("astronaut", (512, 512)), _photo("cat", (512, 512))
    pano = Image.new("RGB", (1024, 512))
    pano.paste(left, (0, 0))
    pano.paste(right, (512, 0))
    pano.save(d / "a_pano.png")
    right.save(d / "b_half.png")
    _photo("coffee").transpose(Image.Transpose.ROTATE_90).save(d / "c_portrait.png")  # 400×600
    _photo("coffee").save(d / "d_coffee.png")  # 600×400
    _photo("rocket").save(d / "e_rocket.png")
    _photo("motorcycle").save(d / "f_motorcycle.png")
    out = tmp_path_factory.mktemp("full_cache") / "c"
    r = CliRunner().invoke(main, ["index", str(d), "--out", str(out), "--mode", "full",
                                  "--layer", LAYER, "--layer", "head", "--workers", "0"])
    assert r.exit_code == 0, r.output
    c = vfsearch.open_cache(out)
    assert c.transform.mode == "full" and c.padded
    return c


def _id(c, stem: str) -> int:
    return [str(p) for p in c.paths].index(f"{stem}.png")


def _reference(c, q):
    """Float64 best score and offset of every image, in its own orientation."""
    best, off = np.full(len(c), -np.inf), np.zeros(len(c), np.int64)
    for i in range(len(c)):
        b, o, maps = exact_scores(c.features(i, q.layer)[None], q.weights, q.features)
        if maps[0].size:
            best[i], off[i] = b[0], o[0]
    return best, off


def test_layout_is_the_image_at_its_aspect_padded_and_turned(full, model):
    c = full
    assert c.grid(LAYER) == (16, 32)  # 256 × 512 input at stride 16
    portrait = _id(c, "c_portrait")
    assert list(np.flatnonzero(c.transposed(LAYER))) == [portrait]
    for i in range(len(c)):
        img = Image.open(c.abspath(i)).convert("RGB")
        fr = c.frame(i, LAYER)
        eager = extract_image(img, model, LAYER, c.transform)  # the image's own orientation
        assert eager.shape[:2] == fr.grid == c.image_grid(i, LAYER)
        got = c.features(i, LAYER)
        assert np.allclose(got, eager * fr.valid_cells()[..., None], atol=2e-3)
        r, k = fr.valid
        assert not got[r:].any() and not got[:, k:].any()  # padding is zero
        ref = eager[:r, :k].astype(np.float64).mean(axis=(0, 1))  # pooled: the image's cells
        assert np.allclose(c.pooled(LAYER, [i])[0], ref, atol=1e-4)
    assert c.frame(portrait, LAYER).grid == (32, 16) and c.frame(portrait, LAYER).valid == (24, 16)
    assert c.frame(_id(c, "a_pano"), LAYER).valid == (16, 32)


@pytest.mark.parametrize("source,box", [("c_portrait", (40, 300, 260, 560)),
                                        ("d_coffee", (300, 40, 600, 260)),
                                        ("a_pano", (900, 200, 1024, 400)),
                                        ("c_portrait", None), ("f_motorcycle", None)])
def test_search_equals_the_float64_reference_in_each_orientation(full, source, box):
    c = full
    kw = {"box": box} if box else {"mode": "whole"}
    res = vfsearch.search(c, _id(c, source), k=len(c), exclude_self=False, return_scores=True,
                          layer=LAYER, **kw)
    best, off = _reference(c, res.query)
    ok = np.isfinite(best)
    assert np.array_equal(np.isfinite(res.scores), ok)  # a box too big for an image: unranked
    assert np.allclose(res.scores[ok], best[ok], atol=2e-3)  # 8-bit scan scores, bounded
    w = res.query.cell_box[3]
    for m in res:
        assert m.score == pytest.approx(best[m.id], abs=1e-6)  # refined: exact
        assert m.offset == offset_rc(off[m.id], c.image_grid(m.id, LAYER), w)
    assert [m.id for m in res] == list(np.argsort(-best, kind="stable")[:ok.sum()])


def test_a_region_at_the_panorama_border_is_found_and_located(full):
    c = full
    pano, half = _id(c, "a_pano"), _id(c, "b_half")
    # the right half on its own, whole, is found in the panorama's right half
    res = vfsearch.search(c, half, box=(0, 0, 512, 512), layer=LAYER, k=3)
    assert res[0].id == pano and res[0].offset == (0, 16)
    assert np.allclose(res[0].box, (512, 0, 1024, 512), atol=1)
    # a box touching the panorama's right border is found at the half's right border
    res = vfsearch.search(c, pano, box=(900, 200, 1024, 400), layer=LAYER, k=3)
    assert res[0].id == half and res[0].score > 0.9
    x0, y0, x1, y1 = res[0].box
    assert abs(x1 - 512) <= 32 and abs(x0 - 388) <= 32 and abs(y0 - 200) <= 32
    q = vfsearch.make_query(c, pano, box=(900, 200, 1024, 400), layer=LAYER)
    assert not q.notes  # nothing clipped: full mode sees the whole image
    assert q.cell_box[1] + q.cell_box[3] == 32  # the region reaches the grid's last column
    with pytest.raises(BadMask, match="outside"):
        vfsearch.make_query(c, pano, box=(1030, 0, 1100, 50), layer=LAYER)


def test_a_whole_panorama_cannot_match_inside_a_portrait(full):
    c = full
    res = vfsearch.search(c, _id(c, "a_pano"), mode="whole", layer=LAYER, k=len(c),
                          return_scores=True)
    portrait = _id(c, "c_portrait")
    assert portrait not in res.ids and not np.isfinite(res.scores[portrait])
    assert res.score_map(portrait).size == 0


def test_global_search_uses_the_images_own_cells(full):
    c = full
    res = vfsearch.search(c, _id(c, "d_coffee"), mode="global", layer=LAYER, k=len(c),
                          return_scores=True, exclude_self=False)
    P = np.stack([c.features(i, LAYER)[:c.frame(i, LAYER).valid[0],
                                        :c.frame(i, LAYER).valid[1]].astype(np.float64)
                  .mean(axis=(0, 1)) for i in range(len(c))])
    q = P[_id(c, "d_coffee")]
    ref = P @ q / (np.linalg.norm(P, axis=1) * np.linalg.norm(q))
    assert np.allclose(res.scores, ref, atol=1e-4)
    assert res[1].id == _id(c, "c_portrait")  # the same photo turned is the most similar


def test_exact_explanation_and_refusals(full):
    c = full
    q = vfsearch.make_query(c, _id(c, "d_coffee"), box=(300, 40, 600, 260), layer=LAYER)
    portrait = _id(c, "c_portrait")
    ex = explain(c, q, portrait, "exact")
    res = vfsearch.search(c, q, k=len(c), exclude_self=False)
    m = next(m for m in res if m.id == portrait)
    assert ex.score == pytest.approx(m.score, abs=1e-6) and tuple(ex.offset) == m.offset
    assert ex.saliency.sum() == pytest.approx(ex.score, abs=1e-4)
    g = vfsearch.make_query(c, _id(c, "d_coffee"), mode="global", layer=LAYER)
    exg = explain(c, g, portrait, "exact")
    assert exg.saliency.shape == (32, 16) and not exg.saliency[24:].any()  # no share on padding
    assert exg.saliency.sum() + exg.extra["pooled_residual"] == pytest.approx(exg.score,
                                                                              abs=1e-4)
    with pytest.raises(BadQuery, match="mode 'full'"):
        explain(c, q, portrait, "occlusion")
    from vfsearch.concepts import discover

    with pytest.raises(BadParameter, match="mode 'full'"):
        discover(c, LAYER, store=False)


def test_web_api_on_a_full_cache(full):
    from vfsearch.server import create_app

    c = full
    half, pano, portrait = _id(c, "b_half"), _id(c, "a_pano"), _id(c, "c_portrait")
    with checked_client(create_app({"full": c})) as client:
        rec = client.get(f"/api/caches/full/images/{portrait}").json()
        assert rec["geometry"]["input"] == [256, 512]
        assert rec["geometry"]["cells"][LAYER] == {"rows": 24, "cols": 16,
                                                   "box": [0.0, 0.0, 400.0, 600.0]}
        r = client.post("/api/search", json={"cache": "full", "layer": LAYER, "k": 3,
                                             "image": {"id": half}, "box": [0, 0, 512, 512]})
        assert r.status_code == 200, r.text
        j = r.json()
        top = j["matches"][0]
        assert top["id"] == pano and top["offset"] == [0, 16]
        assert np.allclose(top["box"], (512, 0, 1024, 512), atol=1)
        sid = j["search_id"]
        ids = ",".join(str(i) for i in range(len(c)))
        h = client.get(f"/api/searches/{sid}/heat", params={"ids": ids}).json()
        qh, qw = j["query"]["cell_box"][2:]
        for i in range(len(c)):
            rows, cols = c.image_grid(i, LAYER)
            if rows >= qh and cols >= qw:
                assert np.array(h["maps"][str(i)]).shape == (rows - qh + 1, cols - qw + 1)
            else:
                assert str(i) not in h["maps"]  # the box does not fit: no offsets, no map
        w = client.get(f"/api/searches/{sid}/window", params={"start": 0, "stop": 6}).json()
        assert w["items"][0]["id"] == pano and w["items"][0]["offset"] == [0, 16]


def test_evaluation_regions_lie_on_each_images_own_cells(full):
    from vfsearch import evaluate as E

    c = full
    arms = [E.Arm(f"full:{x}", c, x) for x in c.layers]
    specs = E.sample_queries(arms, len(c), seed=3)
    idx = {str(p): i for i, p in enumerate(c.paths)}
    regions = [s for s in specs if s.kind == "region"]
    assert len(regions) == len(c)
    for s in regions:
        i = idx[s.path]
        w, h = c.image_size(i)
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        q = vfsearch.make_query(c, i, box=s.box, layer="head")  # the coarsest grid
        _, _, hh, ww = q.cell_box
        assert 2 <= hh <= 4 and 2 <= ww <= 4 and q.n_cells == hh * ww
    # (the rigid whole-image kind is left out: a whole landscape cannot match inside a portrait)
    lab = E.run_labels(arms, n=len(c), k=3, seed=0, n_boot=50, kinds=("region", "global"))
    assert len(lab["rows"]) == 2 * len(arms)


@pytest.mark.parametrize("backend", ["numpy", "torch", "generic"])
def test_every_backend_scans_both_orientations_alike(full, backend):
    c = full
    for src, box in (("c_portrait", (40, 300, 260, 560)), ("a_pano", (600, 100, 900, 300))):
        kw = dict(box=box, layer=LAYER, k=len(c), return_scores=True)
        want = vfsearch.search(c, _id(c, src), **kw)
        got = vfsearch.search(c, _id(c, src), backend=backend, **kw)
        assert list(got.ids) == list(want.ids) and [m.offset for m in got] == \
            [m.offset for m in want]
        assert np.allclose(got.top_scores, want.top_scores, atol=1e-6)
