"""vfsearch eval boxes: ground-truth boxes as queries (the paper's §4.4 face protocol) on an
object pasted into some images, the boxes file, the numpy NMS, and MTCNN on the astronaut."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vfsearch import open_cache
from vfsearch.cli import main
from vfsearch.errors import EvalError
from vfsearch.evaluate import Arm, area_bin, read_boxes, run_boxes
from vfsearch.evaluate.faces import nms

SIDE = 96  # the pasted object: 96 × 96 px = 9216 px², the "5k-20k" bin


def planted_images(dest, n_obj: int = 6, n_plain: int = 4, seed: int = 0) -> dict:
    """Smooth random backgrounds (conftest.photo), a cat's head pasted into the first
    ``n_obj`` at random places; returns {path: pasted box}."""
    import skimage.data
    from conftest import photo

    obj = Image.fromarray(skimage.data.chelsea()).crop((120, 20, 320, 220)).resize(
        (SIDE, SIDE), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    boxes = {}
    for d in ("obj", "plain"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    for j in range(n_obj + n_plain):
        img = photo(320, 256, seed=100 + j)
        if j < n_obj:
            x0, y0 = int(rng.integers(40, 320 - 40 - SIDE)), int(rng.integers(24, 256 - 24 - SIDE))
            img.paste(obj, (x0, y0))
            name = f"obj/obj_{j:02d}.png"
            boxes[name] = [x0, y0, x0 + SIDE, y0 + SIDE]
        else:
            name = f"plain/plain_{j:02d}.png"
        img.save(dest / name)
    return boxes


def planted_cache(tmp_path_factory, model):
    """The planted set indexed once per session (blocks.10 and head), shared by the concept
    and boxes tests: (cache, {path: pasted box})."""
    from vfsearch import index

    base = tmp_path_factory.getbasetemp() / "vfs_planted"
    done = base / "boxes.json"
    if not done.exists():
        shutil.rmtree(base, ignore_errors=True)
        boxes = planted_images(base / "images")
        index(base / "images", base / "cache", model=model, layers=["blocks.10", "head"],
              chunk=8, batch_size=10, workers=0, progress=False)
        done.write_text(json.dumps(boxes))
    return open_cache(base / "cache"), json.loads(done.read_text())


@pytest.fixture(scope="module")
def planted(tmp_path_factory, model):
    return planted_cache(tmp_path_factory, model)


def _boxes_csv(path, boxes: dict, header: bool = True) -> None:
    lines = ["path,x0,y0,x1,y1,label"] if header else []
    lines += [f"{p},{b[0]},{b[1]},{b[2]},{b[3]},cat" for p, b in boxes.items()]
    path.write_text("\n".join(lines) + "\n")


def test_planted_boxes_give_high_iou_in_their_bin_and_zero_without_boxes(planted):
    cache, boxes = planted
    arm = Arm("planted:blocks.10", cache, "blocks.10")
    rows = [{"path": p, "box": tuple(b), "label": "cat"} for p, b in boxes.items()]
    k = 7  # 5 other cat images + at least 2 results without a box
    rep = run_boxes([arm], rows, k=k, n_boot=200)
    assert rep["protocol"] == "boxes" and rep["k"] == k and rep["n"] == len(boxes)
    bins = {r["bin"]: r for r in rep["rows"]}
    assert set(bins) == {area_bin(SIDE * SIDE), "all"} == {"5k-20k", "all"}
    r = bins["5k-20k"]
    assert r["n"] == len(boxes) and r["lo"] <= r["mean"] <= r["hi"]
    assert r["iou_top1"] > 0.5  # the best match of a cat's head is another cat's head
    cat_ids = {i for i, p in enumerate(cache.paths) if str(p) in boxes}
    for q in rep["per_query"][arm.name]:
        for rid, v in zip(q["results"], q["ious"], strict=True):
            if rid not in cat_ids:
                assert v == 0.0  # a result image without a box scores 0
        cats = [v for rid, v in zip(q["results"], q["ious"], strict=True) if rid in cat_ids]
        assert len(cats) == len(boxes) - 1 and np.mean(cats) > 0.4
        assert q["results"][: len(cats)] == [x for x in q["results"] if x in cat_ids]
        assert 0 <= q["iou"] <= q["ceiling"] + 1e-9  # the matched box is one the grid allows
    # the mean over k counts the box-less results as 0: at most 5/7 of the cat-only mean
    assert r["mean"] <= 5 / 7 + 1e-9


def test_eval_boxes_cli_two_layers(planted, tmp_path):
    cache, boxes = planted
    csv_path = tmp_path / "boxes.csv"
    # paths relative to the image root, without a header, one row per box
    _boxes_csv(csv_path, boxes, header=False)
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["eval", "boxes", str(cache.path), "--boxes", str(csv_path),
                                    "--layer", "blocks.10", "--layer2", "head", "--k", "3",
                                    "--boot", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "boxes.json").read_text())
    assert [a["layer"] for a in rep["arms"]] == ["blocks.10", "head"]
    for row in rep["rows"]:
        assert {"arm", "layer", "bin", "n", "mean", "lo", "hi"} <= set(row)
    assert {d["bin"] for d in rep["differences"]} == {"5k-20k", "all"}
    assert (out / "boxes.md").read_text().startswith("### boxes")
    assert (out / "boxes_iou_by_bin.png").stat().st_size > 1000
    assert "5k-20k" in res.output


def test_boxes_file_and_errors(planted, tmp_path):
    cache, boxes = planted
    p = tmp_path / "b.csv"
    root = str(cache.image_root)
    p.write_text("path,x0,y0,x1,y1\n" + f"{root}/obj/obj_00.png,1,2,30,40\n"
                 "nothere.png,0,0,10,10\n")
    rows = read_boxes(p)
    assert rows[0]["box"] == (1.0, 2.0, 30.0, 40.0) and rows[0]["label"] == ""
    from vfsearch.evaluate.boxes import _resolve

    by_id, missing = _resolve(cache, rows)
    assert list(by_id) == [[str(x) for x in cache.paths].index("obj/obj_00.png")]
    assert missing == ["nothere.png"]
    for bad in ("path,x0,y0,x1,y1\na.png,1,2,3\n", "a.png,5,5,1,1\n", "a.png,a,b,c,d\n", "\n"):
        p.write_text(bad)
        with pytest.raises(EvalError):
            read_boxes(p)
    p.write_text("nothere.png,0,0,10,10\n")
    res = CliRunner().invoke(main, ["eval", "boxes", str(cache.path), "--boxes", str(p),
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "none of the boxes" in res.output
    res = CliRunner().invoke(main, ["eval", "boxes", str(cache.path), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--boxes" in res.output


def test_numpy_nms_matches_greedy_definition():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.3])
    # box 1 beats box 0 (IoU 0.68) and box 3 (IoU 0.59 > 0.5); box 2 stands alone
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]  # box 3 vs box 0: IoU 0.9 > 0.7
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_mtcnn_finds_the_astronauts_face():
    from vfsearch.evaluate.faces import detect_faces, load_mtcnn

    try:
        mtcnn = load_mtcnn()
    except EvalError as e:
        pytest.skip(f"facenet-pytorch is not usable here: {e.message}")
    import skimage.data

    from vfsearch.evaluate import iou

    faces = detect_faces(mtcnn, Image.fromarray(skimage.data.astronaut()))
    assert len(faces) == 1
    x0, y0, x1, y1, p = faces[0]
    assert p > 0.99
    assert iou((x0, y0, x1, y1), (181, 62, 268, 172)) > 0.8  # her face, measured once


def test_missing_facenet_names_the_install_command(monkeypatch):
    import sys

    from vfsearch.evaluate.faces import INSTALL, load_mtcnn

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import fails as if absent
    with pytest.raises(EvalError) as e:
        load_mtcnn()
    assert INSTALL in e.value.message and INSTALL == "pip install --no-deps facenet-pytorch"
    assert e.value.param == "detect"
