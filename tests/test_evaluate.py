"""vfsearch eval: metrics on hand-made cases with known answers, the protocols on the small real
cache, the planted-crop localisation on real photos, and the command line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from vfsearch import Transform, make_query, search_many
from vfsearch import evaluate as E
from vfsearch.cli import main

# -- metrics on hand-made cases --------------------------------------------------------------------


def test_distinct_labels_known_answers():
    labels = np.array(["a", "a", "b", "c", "c"], dtype=object)
    got = E.distinct_labels([[0, 1], [0, 2, 3], [1], [3, 4, 2, 0]], labels)
    assert got.tolist() == [1, 3, 1, 3]


def test_overlap_fraction_ids_and_paths():
    assert E.overlap_fraction([[1, 2, 3]], [[3, 2, 9]], 3).tolist() == pytest.approx([2 / 3])
    got = E.overlap_fraction([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [7, 8, 9]], 3)
    assert got.tolist() == [1.0, 0.0]
    assert E.overlap_fraction([["x.jpg", "y.jpg"]], [["y.jpg", "z.jpg"]], 2).tolist() == [0.5]
    with pytest.raises(ValueError):
        E.overlap_fraction([[1]], [[1], [2]], 1)


def test_precision_and_same_value_fraction():
    labels = np.array(["cat", "cat", "dog", "dog", "cat"], dtype=object)
    res = [[1, 2, 4], [0, 1, 4], [0, 1]]
    p = E.precision_at_k(res, labels, ["cat", "dog", "dog"], k=3)
    assert p.tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    # without k the denominator is the list length
    assert E.same_value_fraction([[2, 3]], labels, ["dog"]).tolist() == [1.0]
    domain = np.array(["d1", "d2", "d1", "d1", "d2"], dtype=object)
    assert E.same_value_fraction([[0, 1, 2, 3]], domain, ["d1"], k=4).tolist() == [0.75]


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(3)
    v = rng.integers(1, 6, 150)
    a = E.bootstrap_ci(v, n_boot=500, seed=7)
    b = E.bootstrap_ci(v, n_boot=500, seed=7)
    c = E.bootstrap_ci(v, n_boot=500, seed=8)
    assert a == b
    assert a["lo"] <= a["mean"] <= a["hi"]
    assert a["mean"] == pytest.approx(v.mean())
    assert a["n"] == 150
    assert a["hi"] - a["lo"] < 1.0  # ~ ±2 standard errors of a 1–5 uniform mean over 150 values
    assert (c["lo"], c["hi"]) != (a["lo"], a["hi"]) or c == a
    # wider with fewer values
    small = E.bootstrap_ci(v[:15], n_boot=500, seed=7)
    assert small["hi"] - small["lo"] > a["hi"] - a["lo"]
    const = E.bootstrap_ci([2.0] * 10)
    assert const["lo"] == const["mean"] == const["hi"] == 2.0
    assert math.isnan(E.bootstrap_ci([])["mean"])
    assert E.bootstrap_ci([0.3])["lo"] == 0.3


def test_iou_and_area_bins():
    assert E.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert E.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert E.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert E.area_bin(999) == "<1k"
    assert E.area_bin(1000) == "1k-5k"
    assert E.area_bin(19999.9) == "5k-20k"
    assert E.area_bin(20000) == ">20k"


def test_cell_ceiling_aligned_and_offset():
    tf = Transform()  # resize 256, centre crop 224
    g = tf.geometry(256, 256)  # scale 1, crop offset 16 px: a 14×14 grid has 16 px cells
    aligned = (16 + 2 * 16, 16 + 3 * 16, 16 + 6 * 16, 16 + 5 * 16)
    assert E.cell_ceiling(aligned, g, (14, 14), (256, 256)) == pytest.approx(1.0)
    off = tuple(v + 8 for v in aligned)
    c = E.cell_ceiling(off, g, (14, 14), (256, 256))
    assert 0.4 < c < 1.0
    # a coarser grid cannot do better than a finer one that refines it
    assert E.cell_ceiling(off, g, (7, 7), (256, 256)) <= c + 1e-9
    # non-square image: cells map back through the resize (scale 256/384) and the crop
    g2 = tf.geometry(512, 384)
    x0, y0 = g2.to_image(32, 64)
    x1, y1 = g2.to_image(96, 160)
    assert E.cell_ceiling((x0, y0, x1, y1), g2, (7, 7), (512, 384)) == pytest.approx(1.0)
    assert E.cell_ceiling((x0 + 10, y0 + 10, x1 + 10, y1 + 10), g2, (7, 7), (512, 384)) < 1.0


# -- protocols on the small real cache -------------------------------------------------------------


def test_match_box_reproduces_the_engine(small_cache):
    c = small_cache
    layer = "blocks.10"
    w, h = c.image_size(0)
    q = make_query(c, 0, box=(w * 0.3, h * 0.3, w * 0.6, h * 0.55), layer=layer)
    r = search_many(c, [q], k=3)[0]
    for m in r:
        g = c.transform.geometry(*m.image_size)
        assert (E.match_box(q, m.offset, g, c.grid(layer), m.image_size)
                == pytest.approx(m.box, abs=1e-6))
    # the query's own box is one of the shifts: the shift ceiling of the query on itself is 1
    assert E.shift_ceiling(q, q.box, q.geometry, c.grid(layer), q.image_size) == pytest.approx(1.0)


def test_sample_queries_reproducible_and_cell_aligned(small_cache):
    c = small_cache
    arms = [E.Arm("s:" + x, c, x) for x in c.layers]
    a = E.sample_queries(arms, 8, seed=1)
    assert a == E.sample_queries(arms, 8, seed=1)
    assert a != E.sample_queries(arms, 8, seed=2)
    whole = [s for s in a if s.kind == "whole"]
    region = [s for s in a if s.kind == "region"]
    assert len(whole) == len(region) == 8
    assert [s.path for s in whole] == [s.path for s in region]  # paired: same images
    idx = {str(p): i for i, p in enumerate(c.paths)}
    for s in region:
        q = make_query(c, idx[s.path], box=s.box, layer="blocks.15")  # coarsest grid (7×7)
        _, _, hh, ww = q.cell_box
        assert 2 <= hh <= 4 and 2 <= ww <= 4
        assert q.n_cells == hh * ww
        assert q.weights.max() == pytest.approx(1.0, abs=0.02)


def test_protocols_on_small_cache(small_cache, tmp_path):
    c = small_cache
    arms = [E.Arm("s:" + x, c, x) for x in c.layers]
    lab = E.run_labels(arms, n=6, k=3, seed=0, n_boot=200)
    assert ({(r["arm"], r["queries"]) for r in lab["rows"]}
            == {(a.name, k) for a in arms for k in ("whole", "region")})
    for r in lab["rows"]:
        assert 1 <= r["lo"] <= r["mean"] <= r["hi"] <= 3
    assert len(lab["differences"]) == 2
    # a layer compared with itself overlaps completely
    same = E.run_overlap(arms[0], E.Arm("again", c, arms[0].layer), n=6, k=3, n_boot=100)
    assert all(r["mean"] == 1.0 for r in same["rows"])
    ov = E.run_overlap(arms[0], arms[1], n=6, k=3, n_boot=100)
    assert all(0.0 <= r["lo"] <= r["mean"] <= r["hi"] <= 1.0 for r in ov["rows"])
    pr = E.run_precision(arms, n=6, k=2, n_boot=100, column="label")
    # the label column analysis is precision itself
    assert [r["mean"] for r in pr["column_rows"]] == [r["mean"] for r in pr["rows"]]
    assert {r["label"] for r in pr["per_label"]} <= set(c.labels.tolist())
    for s in pr["spread"]:
        assert sum(s["fractions"].values()) == pytest.approx(1.0)
    with pytest.raises(E.EvalError):
        E.run_precision(arms, n=4, k=2, column="no_such_column")
    res = E.write_report(pr, tmp_path / "out", figures=False)
    assert json.loads(res["json"].read_text())["protocol"] == "precision"
    assert "| label |" in res["markdown"].read_text()


def test_figures(small_cache, tmp_path):
    pytest.importorskip("matplotlib")
    c = small_cache
    arms = [E.Arm("s:" + x, c, x) for x in c.layers]
    rep = E.run_labels(arms, n=4, k=3, n_boot=50)
    figs = E.make_figures(rep, tmp_path)
    assert figs and all(p.exists() and p.stat().st_size > 1000 for p in figs)


# -- planted-crop localisation on real photos ------------------------------------------------------


def test_plant_crops_geometry(sample_dir, tmp_path):
    photos = sorted(sample_dir.glob("*/*.jpg"))
    src, dis = photos[:8], photos[8:]
    tf = Transform()
    plants = E.plant_crops(src, dis, tmp_path, seed=0, transform=tf, sides=(24, 150))
    assert len(plants) == 8
    assert [p["source"] for p in plants] == [p.name for p in src]  # each source once
    assert {p["distractor"] for p in plants} <= {p.name for p in dis}
    assert {p["bin"] for p in plants} == {"<1k", "1k-5k", "5k-20k", ">20k"}
    with pytest.raises(E.EvalError):
        E.plant_crops(src, src[:1], tmp_path, transform=tf)
    byname = {p.name: p for p in src}
    from PIL import Image

    for p in plants:
        s_img, d_img = Image.open(byname[p["source"]]), Image.open(tmp_path / p["planted"])
        sg, dg = tf.geometry(*s_img.size), tf.geometry(*d_img.size)
        for box, g in ((p["crop"], sg), (p["pasted"], dg)):
            u0, v0 = g.to_input(box[0], box[1])
            u1, v1 = g.to_input(box[2], box[3])
            assert 0 <= u0 < u1 <= 224 and 0 <= v0 < v1 <= 224  # inside the centre crop
        # same size in model-input pixels (up to rounding of the sides)
        ss = (p["crop"][2] - p["crop"][0]) * sg.sx
        ds = (p["pasted"][2] - p["pasted"][0]) * dg.sx
        assert ss == pytest.approx(ds, abs=1.5 * max(sg.sx, dg.sx))
        assert E.area_bin(p["area"]) == p["bin"]
        # the pasted pixels are the crop's
        crop = np.asarray(s_img.convert("RGB").crop(tuple(p["crop"])).resize(
            (p["pasted"][2] - p["pasted"][0],) * 2, Image.Resampling.BICUBIC), dtype=np.int16)
        pasted = np.asarray(d_img.convert("RGB").crop(tuple(p["pasted"])), dtype=np.int16)
        assert np.abs(crop - pasted).max() == 0


def test_localize_finds_large_pasted_crops(sample_dir, model, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for f in sorted(sample_dir.glob("*/*_0.jpg")):
        shutil.copy(f, images / f.name)
    rep = E.run_localize(images, tmp_path / "work", layers=["blocks.10"], n=3, pool=3, k=3, seed=0,
                         n_boot=100, sides=(110, 150), model=model, progress=False,
                         index_kw={"workers": 0, "batch_size": 8})
    recs = rep["per_plant"]["blocks.10"]
    assert len(recs) == 3
    for r in recs:
        assert r["top1"], r
        assert r["iou"] > 0.5 * r["ceiling_cells"], r
        assert 0 < r["ceiling_cells"] <= 1 and 0 < r["ceiling_shift"] <= 1
    assert any(r["bin"] == "all" for r in rep["rows"])
    md = E.to_markdown(rep)
    assert "cell ceiling" in md and "blocks.10" in md
    # resumable: same settings reuse the planted set; other settings are refused
    again = E.run_localize(images, tmp_path / "work", layers=["blocks.10"], n=3, pool=3, k=3,
                           seed=0, n_boot=100, sides=(110, 150), model=model, progress=False,
                           index_kw={"workers": 0, "batch_size": 8})
    assert again["rows"] == rep["rows"]
    with pytest.raises(E.EvalError):
        E.run_localize(images, tmp_path / "work", layers=["blocks.10"], n=2, pool=3, seed=0,
                       sides=(110, 150), model=model, progress=False)


# -- command line ----------------------------------------------------------------------------------


def test_cli(small_cache, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ev"
    r = runner.invoke(main, ["eval", "labels", str(small_cache.path), "--n", "4", "--k", "3",
                             "--boot", "50", "--out", str(out), "--no-figures", "-q"])
    assert r.exit_code == 0, r.output
    assert (out / "labels.json").exists() and (out / "labels.md").exists()
    assert "blocks.15" in r.stdout and "blocks.10" in r.stdout
    assert r.stderr == ""  # -q: no progress messages
    r = runner.invoke(main, ["eval", "overlap", str(small_cache.path), "--layer", "blocks.10",
                             "--layer2", "blocks.15", "--n", "4", "--k", "3", "--boot", "50",
                             "--out", str(out), "--no-figures", "--queries", "whole"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "overlap.json").read_text())
    assert [a["layer"] for a in rep["arms"]] == ["blocks.10", "blocks.15"]
    assert [r["queries"] for r in rep["rows"]] == ["whole"]
    # without -q the timings and the written files go to stderr, the table to stdout
    assert "queries in" in r.stderr and "wrote" in r.stderr and "|" not in r.stderr
    bad = runner.invoke(main, ["eval", "labels", str(small_cache.path), "--layer", "nope",
                               "--out", str(out)])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --layer: ")
    assert "no layer 'nope'" in bad.stderr
    bad = runner.invoke(main, ["eval", "overlap", str(small_cache.path), "--layer", "blocks.10",
                               "--layer2", "blocks.10", "--out", str(out)])
    assert bad.exit_code == 2 and "error: --layer2: " in bad.stderr and "itself" in bad.stderr
    bad = runner.invoke(main, ["eval", "localize", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --work: ")
    missing = runner.invoke(main, ["eval", "labels", str(tmp_path / "none"), "--out", str(out)])
    assert missing.exit_code == 3 and missing.stderr.startswith("error: ")
    assert isinstance(missing.exception, SystemExit)  # mapped, not a traceback


def test_protocols_log_instead_of_printing(small_cache, capfd):
    """The library prints nothing; progress messages go to the ``log`` it is given."""
    arms = [E.Arm("small:blocks.15", small_cache, "blocks.15")]
    E.run_labels(arms, n=3, k=2, n_boot=20, kinds=("whole",))
    assert capfd.readouterr() == ("", "")
    lines = []
    E.run_labels(arms, n=3, k=2, n_boot=20, kinds=("whole",), log=lines.append)
    assert capfd.readouterr() == ("", "")
    assert len(lines) == 1 and lines[0].startswith("  small:blocks.15: 3 queries in")


def test_metadata_column_and_two_caches(sample_dir, small_cache, model, tmp_path):
    """A CSV cache of the same images: overlap with the other cache is complete (results are
    matched by path), and a column equal to the label reproduces precision."""
    from vfsearch import index

    rows = ["path,label,domain,site"]
    for f in sorted(sample_dir.glob("*/*.jpg")):
        rows.append(f"{f},{f.parent.name},{f.parent.name},one")
    csv = tmp_path / "images.csv"
    csv.write_text("\n".join(rows) + "\n")
    other = index(csv, tmp_path / "csvcache", model=model, layers=["blocks.15"],
                  image_root=sample_dir, workers=0, batch_size=8, progress=False).cache
    a, b = E.Arm("small", small_cache, "blocks.15"), E.Arm("csv", other, "blocks.15")
    ov = E.run_overlap(a, b, n=6, k=3, n_boot=50)
    assert all(r["mean"] == 1.0 for r in ov["rows"])
    pr = E.run_precision([b], n=6, k=2, n_boot=50, column="domain")
    assert [r["mean"] for r in pr["column_rows"]] == [r["mean"] for r in pr["rows"]]
    site = E.run_precision([b], n=6, k=2, n_boot=50, column="site", kinds=("whole",))
    assert [r["mean"] for r in site["column_rows"]] == [1.0]
    assert "Fraction of the top-2 with the query's own `site`" in E.to_markdown(site)


def test_global_queries_in_the_protocols(small_cache):
    """`--queries global` runs the protocols with the pooled-feature cosine; the same images as
    the other kinds (paired)."""
    c = small_cache
    arms = [E.Arm("s", c, "blocks.10")]
    specs = E.sample_queries(arms, 5, seed=3, kinds=("whole", "global"))
    assert [s.kind for s in specs] == ["whole", "global"] * 5
    assert [s.path for s in specs[::2]] == [s.path for s in specs[1::2]]
    lab = E.run_labels(arms, n=5, k=3, seed=3, n_boot=100, kinds=("global",))
    assert [r["queries"] for r in lab["rows"]] == ["global"]
    ids = E.run_arm(arms[0], [s for s in specs if s.kind == "global"], k=2)
    from vfsearch import search

    for s, got in zip([s for s in specs if s.kind == "global"], ids, strict=True):
        i = list(c.paths).index(s.path)
        assert list(got) == list(search(c, i, mode="global", layer="blocks.10", k=2).ids)
