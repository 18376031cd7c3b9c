"""Concepts: discovery (dictionary, saliency) on an object pasted into some images, storage in
the cache, concepts as queries, which concepts a match shares, the clustering and label metrics
on known cases, the ``concepts`` command and the ``concepts`` protocol."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vfsearch import make_query, search
from vfsearch.cli import main
from vfsearch.concepts import (
    concept_query,
    concepts_of_cells,
    discover,
    load_concepts,
    shared_concepts,
    sheet_png,
)
from vfsearch.concepts.cluster import kmeans
from vfsearch.errors import BadParameter, NotFound
from vfsearch.evaluate.concept_eval import nmi, purity


@pytest.fixture(scope="module")
def planted(tmp_path_factory, model):
    """The planted set of test_eval_boxes (an object pasted into some images), indexed once."""
    from test_eval_boxes import planted_cache

    return planted_cache(tmp_path_factory, model)


def _on_object(boxes, path, box) -> float:
    """Fraction of a patch box that lies on the pasted object."""
    b = boxes.get(str(path))
    if b is None:
        return 0.0
    ix = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
    iy = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
    return ix * iy / ((box[2] - box[0]) * (box[3] - box[1]))


def _object_concept(cs, cache, boxes, first: int = 4) -> int:
    """The concept whose first patches lie on the pasted object (asserts there is one)."""
    best, best_k = -1.0, None
    for k in range(len(cs)):
        ps = cs.patches(k, cache)[:first]
        on = np.mean([_on_object(boxes, p["path"], p["box"]) for p in ps]) if ps else 0.0
        if on > best:
            best, best_k = on, k
    assert best > 0.75, best
    return best_k


@pytest.fixture(scope="module")
def dictionary(planted):
    cache, boxes = planted
    cs = discover(cache, "blocks.10", "dictionary", n_concepts=6, seed=0)
    return cs, _object_concept(cs, cache, boxes)


def test_dictionary_concept_lies_on_the_pasted_object(planted, dictionary):
    cache, boxes = planted
    cs, k = dictionary
    patches = cs.patches(k, cache)
    assert all(_on_object(boxes, p["path"], p["box"]) > 0.5 for p in patches[:4])
    # best first, at most two patches of one image, sizes count every valid cell once
    scores = [p["score"] for p in patches]
    assert scores == sorted(scores, reverse=True)
    assert max(np.bincount([p["id"] for p in patches])) <= 2
    H, W = cache.grid("blocks.10")
    assert int(cs.sizes.sum()) == int(cache.valid.sum()) * H * W
    assert cs.extra["image_counts"].sum(1).tolist() == [H * W] * len(cache)
    # a patch box is its cell's box in original pixels (the geometry module's)
    p = patches[0]
    frame = cache.transform.frame(*cache.image_size(p["id"]), (H, W))
    assert p["box"] == pytest.approx(frame.cell_image_box(p["cells"][0], p["cells"][1]), abs=0.01)
    # every image with the object carries the object concept, in more cells than the others
    cells = {str(p): dict(cs.image_concepts(i)).get(k, 0) for i, p in enumerate(cache.paths)}
    assert min(v for p, v in cells.items() if p in boxes) >= 4
    assert min(v for p, v in cells.items() if p in boxes) > max(
        v for p, v in cells.items() if p not in boxes)


def test_dictionary_is_stored_with_sheets_and_reads_back(planted, dictionary):
    cache, _ = planted
    cs, k = dictionary
    back = load_concepts(cache, "blocks.10", "dictionary")
    assert back.attrs["stale"] is False and back.attrs["algorithm"] == "kmeans"
    assert np.array_equal(back.directions, cs.directions)
    assert back.to_dict(cache) == cs.to_dict(cache)
    d = back.to_dict(cache)
    assert d["layer"] == "blocks.10" and d["method"] == "dictionary"
    assert {"id", "size", "patches"} == set(d["concepts"][k])
    assert {"id", "path", "box", "score"} <= set(d["concepts"][k]["patches"][0])
    sheet = Image.open(io.BytesIO(sheet_png(back, k)))
    overview = Image.open(io.BytesIO(sheet_png(back)))
    assert sheet.size[0] > 80 and overview.size[1] >= len(back) * 56
    with pytest.raises(NotFound):
        back.check_id(len(back))
    with pytest.raises(NotFound):
        load_concepts(cache, "head", "saliency")


def test_concept_search_finds_the_pasted_object(planted, dictionary):
    cache, boxes = planted
    cs, k = dictionary
    q = concept_query(cache, k, layer="blocks.10", method="dictionary")
    assert q.mode == "region" and q.n_cells == 1 and q.source_id is None
    res = search(cache, q, k=len(boxes), return_scores=True)
    H, W = cache.grid("blocks.10")
    for m in res:
        assert str(m.path) in boxes  # every image with the object before any without
        assert _on_object(boxes, m.path, m.box) > 0.5
        # the matched box is exactly the matched cell's box
        frame = cache.transform.frame(*m.image_size, (H, W))
        assert m.box == pytest.approx(frame.cell_image_box(*m.offset), abs=1e-6)
        # the score is the cosine of that cell with the direction (an exact one-cell query)
        v = cache.features(m.id, "blocks.10")[m.offset]
        cos = float(v @ cs.directions[k] / np.linalg.norm(v))
        assert m.score == pytest.approx(cos, abs=1e-5)
    curve = res.sorted_scores()
    assert len(curve) == len(cache) and curve[0] == pytest.approx(res[0].score, abs=1e-6)
    # the command line
    r = CliRunner().invoke(main, ["search", str(cache.path), "--concept", str(k), "--layer",
                                  "blocks.10", "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert [m["id"] for m in got["matches"]] == res.ids[:3].tolist()
    r = CliRunner().invoke(main, ["search", str(cache.path), "--concept", "99", "-l", "blocks.10"])
    assert r.exit_code == 2 and "--concept" in r.output
    r = CliRunner().invoke(main, ["search", str(cache.path)])
    assert r.exit_code == 2 and "--image" in r.output


def test_concepts_of_cells_and_shared_concepts(planted, dictionary):
    cache, boxes = planted
    cs, k = dictionary
    paths = [str(p) for p in cache.paths]
    i = paths.index(next(iter(boxes)))
    H, W = cache.grid("blocks.10")
    frame = cache.transform.frame(*cache.image_size(i), (H, W))
    x0, y0, x1, y1 = frame.image_to_cells(boxes[paths[i]])
    centre = (int((y0 + y1) / 2), int((x0 + x1) / 2))
    got = concepts_of_cells(cache, "blocks.10", i, [centre])
    assert got[0]["cell"] == list(centre) and got[0]["concept"] == k and got[0]["score"] > 0
    assert len(concepts_of_cells(cache, "blocks.10", i)) == H * W
    # a query on the object and its best match share the object concept
    q = make_query(cache, i, box=boxes[paths[i]], layer="blocks.10")
    m = search(cache, q, k=1)[0]
    sh = shared_concepts(cache, q, m)
    assert k in [s["concept"] for s in sh["shared"]]
    assert sh["same_cells"] >= 1 and len(sh["cells"]) == q.n_cells


def test_saliency_groups_the_neighbours_of_the_object_images(planted):
    cache, boxes = planted
    obj_ids = [i for i, p in enumerate(cache.paths) if str(p) in boxes]
    cs = discover(cache, "blocks.10", "saliency", n_concepts=3, queries=obj_ids, k=5, keep=4,
                  seed=0)
    k = _object_concept(cs, cache, boxes, first=3)  # its crops lie on the object
    crops = cs.extra
    mine = crops["crop_concept"] == k
    imgs = set(crops["crop_image"][mine].tolist())
    # the neighbours of the object images, grouped: crops of several of them, of no other image
    assert imgs <= set(obj_ids) and len(imgs) >= 3
    assert set(crops["crop_query"][mine].tolist()) <= set(obj_ids)
    assert cs.attrs["params"]["search"] == "global" and cs.attrs["params"]["baseline"]
    # each neighbour's crop is crop × crop cells; the size counts their distinct cells
    assert (crops["crop_cells"][:, 2:] == 3).all()
    assert cs.sizes[k] <= mine.sum() * 9
    back = load_concepts(cache, "blocks.10", "saliency")
    assert set(back.extra) >= {"crop_image", "crop_concept", "crop_query", "query_image"}
    q = concept_query(cache, k, layer="blocks.10", method="saliency")
    assert str(search(cache, q, k=1)[0].path) in boxes


def test_bad_parameters(planted):
    cache, _ = planted
    with pytest.raises(BadParameter):
        discover(cache, "blocks.10", "dictionary", algorithm="nmf", store=False)  # signed layer
    with pytest.raises(BadParameter):
        discover(cache, "blocks.10", "nonsense", store=False)
    cs = discover(cache, "head", "dictionary", n_concepts=3, algorithm="nmf", store=False)
    assert len(cs) == 3 and cs.attrs["algorithm"] == "nmf"
    assert np.allclose(np.linalg.norm(cs.directions, axis=1), 1, atol=1e-5)


def test_concepts_command(planted, tmp_path):
    cache, _ = planted
    out = tmp_path / "c"
    r = CliRunner().invoke(main, ["concepts", str(cache.path), "--layer", "head", "--n", "4",
                                  "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "concepts.json").read_text())
    assert d["layer"] == "head" and d["method"] == "dictionary" and len(d["concepts"]) == 4
    for c in d["concepts"]:
        assert c["size"] > 0 and all(len(p["box"]) == 4 for p in c["patches"])
    assert sorted(p.name for p in out.glob("*.png")) == [
        "concept_000.png", "concept_001.png", "concept_002.png", "concept_003.png",
        "concepts.png"]
    assert load_concepts(cache, "head").to_dict(cache)["concepts"] == d["concepts"]
    r = CliRunner().invoke(main, ["concepts", str(cache.path), "--method", "saliency",
                                  "--layer", "head", "--n", "2", "--queries", "4", "-k", "3",
                                  "--no-store", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "2 saliency concepts of head" in r.output
    r = CliRunner().invoke(main, ["concepts", str(cache.path), "--algorithm", "nmf",
                                  "--layer", "blocks.10", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--algorithm" in r.output


def test_eval_concepts_protocol(planted, tmp_path):
    cache, _ = planted
    out = tmp_path / "e"
    r = CliRunner().invoke(main, ["eval", "concepts", str(cache.path), "--layer", "blocks.10",
                                  "--concepts", "2", "--n", "6", "--boot", "50", "--out", str(out),
                                  "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "concepts.json").read_text())
    got = {(x["method"], x["view"]) for x in rep["rows"]}
    assert got == {(m, v) for m in ("dictionary", "saliency", "fullframe", "random")
                   for v in ("members", "top")}
    for x in rep["rows"]:
        assert 0 <= x["nmi"] <= 1 and 0.5 <= x["purity"] <= 1  # two labels: ≥ the majority
    # obj vs plain: the full-frame clusters of this set follow the labels
    ff = next(x for x in rep["rows"] if x["method"] == "fullframe" and x["view"] == "members")
    assert ff["purity"] == 1.0
    assert (out / "concepts_summary.png").exists() and "| dictionary |" in r.output


def test_kmeans_and_label_metrics_on_known_cases():
    rng = np.random.default_rng(0)
    dirs = np.eye(8, dtype=np.float32)[:3] * 5
    x = np.concatenate([d + 0.3 * rng.standard_normal((200, 8)).astype(np.float32)
                        for d in dirs])
    centres, lab, _ = kmeans(x, 3, seed=1)
    truth = np.repeat(np.arange(3), 200)
    t = np.zeros((3, 3))
    np.add.at(t, (lab, truth), 1)
    assert purity(t) == 1.0 and nmi(t) == pytest.approx(1.0)
    assert np.allclose(np.sort(np.abs(centres @ np.eye(8)[:3].T).max(1)), 1, atol=0.02)
    assert purity(np.array([[5, 5], [5, 5]])) == 0.5 and nmi(np.array([[5, 5], [5, 5]])) == 0
    try:  # scikit-learn (not a dependency) agrees where it is installed
        from sklearn.metrics import normalized_mutual_info_score
    except ImportError:
        return
    a, b = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
    t = np.zeros((4, 3))
    np.add.at(t, (a, b), 1)
    assert nmi(t) == pytest.approx(normalized_mutual_info_score(b, a), abs=1e-9)


def test_saliency_with_fixed_rise_runs_the_model(planted):
    import torch

    cache, _ = planted
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model passes: one thread is ~10× faster on a busy machine
    try:
        cs = discover(cache, "blocks.10", "saliency", n_concepts=1, queries=[0], k=1, keep=1,
                      saliency="rise", rise={"n_masks": 2, "batch_size": 2}, store=False)
    finally:
        torch.set_num_threads(before)
    assert cs.attrs["params"]["saliency"] == "rise" and len(cs.extra["crop_image"]) == 1
    assert cs.extra["crop_query"].tolist() == [0] and cs.extra["crop_image"][0] != 0
