"""End to end on vision transformers: a DINOv2-style ViT with 4 register tokens and a Swin, with
weights from a file and from a local Hugging Face cache (built here, found offline):
``vfsearch index`` (the CLI), the cached features against timm's own ``forward_intermediates``,
search (region, whole image, global), explain (exact, and RISE through the model reloaded from
the cache's record), the dataset map, ``vfsearch eval labels`` and the web app (search, an
uploaded query image, explain exact and a RISE job).

Tiny configurations with random weights (fixed seeds, from :mod:`test_transformers`); a few
small images, one of them twice (``dup/``), so that every search has a known answer."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image

from vfsearch.models import _import_torchvision

try:
    _import_torchvision()  # timm imports torchvision
except ImportError:
    pass
timm = pytest.importorskip("timm")

from test_transformers import (  # noqa: E402 - registers the tiny test architectures
    REL,
    TINY_SWIN,
    TINY_VIT,
    _hf_repo,
    _intermediates,
    _reference,
)

from vfsearch import make_query, open_cache, search  # noqa: E402
from vfsearch.forward import relative_error  # noqa: E402

#: (registered test arch, the real arch an HF repo names, its repo id, tiny args, seed, layer,
#:  timm block index, input size, grid, what was dropped)
CASES = {
    "vit-reg4": ("vfs_tiny_dinov2", "vit_small_patch14_reg4_dinov2",
                 "timm/vit_small_patch14_reg4_dinov2.lvd142m", TINY_VIT, 0, "blocks.1", 1, 112,
                 (8, 8), "1 class + 4 register tokens"),
    "swin": ("vfs_tiny_swin", "swin_tiny_patch4_window7_224", "timm/swin_tiny_patch4_window7_224"
             ".ms_in1k", TINY_SWIN, 2, "layers.2", 2, 128, (8, 8), ""),
}
BOX = (24, 16, 88, 80)  # a region of image 0 (original pixels)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images (3 labels × 3, plus a copy of image 0 under ``dup/``), each model's weights in a
    file, the same weights in a Hugging Face cache (``HF_HOME``), and no network."""
    root = tmp_path_factory.mktemp("e2e")
    imgs = root / "imgs"
    for c in range(3):
        (imgs / f"c{c}").mkdir(parents=True)
        for i in range(3):
            photo(128 + 16 * i, 128, seed=20 * c + i).save(imgs / f"c{c}" / f"{i}.png")
    (imgs / "dup").mkdir()
    shutil.copy(imgs / "c0" / "0.png", imgs / "dup" / "0.png")
    refs, files = {}, {}
    for n, (arch, real, repo, args, seed, *_rest) in CASES.items():
        refs[n] = _reference(arch, seed=seed)
        files[n] = root / f"{n}.pth"
        torch.save({"state_dict": refs[n].state_dict()}, files[n])
        _hf_repo(root / "hf", repo, refs[n], real, args, f"{seed + 1:x}" * 40, linked=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "hf"))
        mp.delenv("HF_HUB_CACHE", raising=False)

        def no_network(*a, **k):
            raise AssertionError("network access")

        mp.setattr(socket.socket, "connect", no_network)
        yield {"root": root, "imgs": imgs, "refs": refs, "files": files}


def _cli(*args):
    from click.testing import CliRunner

    from vfsearch.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def _timm_features(world, n: str, cache, block: int) -> np.ndarray:
    """timm's own forward_intermediates of the cached images, at the cache's input size."""
    ref = world["refs"][n]
    arch = CASES[n][0]
    if cache.transform.size != ref.pretrained_cfg["input_size"][-1]:  # as load_model builds it
        dyn = _reference(arch, dynamic_img_size=True)
        dyn.load_state_dict(ref.state_dict())
        ref = dyn
    root = world["imgs"]
    x = torch.stack([cache.transform(Image.open(root / p).convert("RGB")) for p in cache.paths])
    return _intermediates(ref, x, block)


@pytest.mark.parametrize("source", ["file", "hf"])
@pytest.mark.parametrize("n", list(CASES))
def test_end_to_end(world, tmp_path, n, source):
    arch, _real, repo, _a, _s, layer, block, size, grid, dropped = CASES[n]
    # -- index (the CLI), weights from a file or from the Hugging Face cache ------------------
    model = ["-m", f"timm:{arch}", "--weights", world["files"][n]] if source == "file" else [
        "-m", f"timm:hf-hub:{repo}"]
    # the default engine (auto: its checks cost seconds) once; eager, the reference, otherwise
    engine = [] if (n, source) == ("vit-reg4", "file") else ["--engine", "eager"]
    out = tmp_path / "c"
    _cli("index", world["imgs"], "-o", out, *model, *engine, "--input-size", size, "-l", layer,
         "--workers", 0, "-q")
    c = open_cache(out)
    li = c.layer_info(layer)
    assert (tuple(li["grid"]), li["layout"], li.get("dropped", "")) == (
        grid, "tokens" if n == "vit-reg4" else "nhwc", dropped)
    assert c.transform.size == size and len(c) == 10 and c.valid.all()
    if source == "hf":
        assert f"models--{repo.replace('/', '--')}" in c.weights_path
    # the features equal timm's own (the f32 refine copy of the default 8-bit cache)
    got = np.stack([c.features(i, layer) for i in range(len(c))])
    assert relative_error(got, _timm_features(world, n, c, block)) <= REL
    paths = [str(p) for p in c.paths]
    i0, dup = paths.index("c0/0.png"), paths.index("dup/0.png")

    # -- search: a region, the whole image, similar images -----------------------------------
    r = search(c, i0, box=BOX, layer=layer, k=4)
    assert r[0].id == dup and r[0].score == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(r[0].box, BOX, atol=1e-3)  # the same box in the copy
    assert all(a.score >= b.score for a, b in zip(r, r[1:], strict=False))
    assert search(c, i0, whole=True, layer=layer, k=1)[0].id == dup
    g = search(c, i0, mode="global", layer=layer, k=2)
    assert g[0].id == dup and g[0].score == pytest.approx(1.0, abs=1e-4)

    # -- explain: exact (from the cache) and RISE (the model reloaded from the cache's record;
    #    here with file weights, through the web app with the Hugging Face cache's) ------------
    from vfsearch.explain import explain

    q = make_query(c, i0, box=BOX, layer=layer)
    other = r[1]
    ex = explain(c, q, other.id, "exact")
    assert ex.saliency.shape == grid
    assert float(ex.saliency.sum()) == pytest.approx(other.score, abs=2e-3)
    if source == "file":
        rise = explain(c, q, other.id, "rise", n_masks=12, cells=4, auc_steps=2, batch_size=6)
        assert rise.space == "input" and rise.saliency.shape == (size, size)
        assert np.isfinite(rise.saliency).all() and rise.saliency.std() > 0
        # its unperturbed score comes from the reloaded model's forward: the search's score
        assert rise.score == pytest.approx(other.score, abs=2e-3)

    # -- the dataset map ------------------------------------------------------------------------
    from vfsearch.embed import compute_map, load_map

    m = compute_map(c, layer, method="tsne", perplexity=3, progress=False)
    assert len({tuple(x) for x in m.cell.tolist()}) == len(c)  # one grid cell per image
    assert np.array_equal(load_map(c, layer, "tsne").cell, m.cell)

    # -- eval (the CLI): distinct labels in the top-k ------------------------------------------
    ev = tmp_path / "ev"
    figures = [] if (n, source) == ("vit-reg4", "file") else ["--no-figures"]  # once is enough
    _cli("eval", "labels", out, "-l", layer, "--n", 4, "-k", 2, "--boot", 20, "-o", ev, *figures)
    rep = json.loads((ev / "labels.json").read_text())
    assert rep["rows"] and all(1 <= row["mean"] <= 2 for row in rep["rows"])
    assert bool(list(ev.glob("*.png"))) == (not figures)

    # -- serve: the web app ---------------------------------------------------------------------
    _serve(c, layer, i0, dup, grid, size, world["imgs"] / "c0" / "0.png", rise=source == "hf")


def _serve(c, layer, i0, dup, grid, size, image_file, rise: bool):
    from server_schema import checked_client, poll_job

    from vfsearch.server import create_app

    with checked_client(create_app({"t": c})) as cl:
        r = cl.post("/api/search", json={"cache": "t", "layer": layer, "image": {"id": i0},
                                         "box": list(BOX), "k": 3})
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["matches"][0]["id"] == dup and tuple(s["query"]["grid"]) == grid
        url = f"/api/searches/{s['search_id']}/explain"
        rid = s["matches"][1]["id"]
        e = cl.post(url, json={"id": rid, "method": "exact"})
        assert e.status_code == 200, e.text
        assert np.array(e.json()["result"]["saliency"]).shape == grid
        if rise:  # a model-running method: a background job
            job = cl.post(url, json={"id": rid, "method": "rise",
                                     "params": {"n_masks": 8, "cells": 4, "auc_steps": 2}})
            assert job.status_code in (200, 202), job.text
            j = poll_job(cl, job.json()["job"], timeout=60)
            assert j["status"] == "done", j
            assert np.array(j["result"]["saliency"]).shape == (size, size)
            assert j["result"]["score"] == pytest.approx(s["matches"][1]["score"], abs=2e-3)
        # an uploaded query image runs through the model the cache records
        up = cl.post("/api/uploads", files={"file": ("q.png", image_file.read_bytes(),
                                                     "image/png")})
        assert up.status_code == 200, up.text
        r = cl.post("/api/search", json={"cache": "t", "layer": layer, "whole": True, "k": 2,
                                         "image": {"upload": up.json()["upload"]}})
        assert r.status_code == 200, r.text
        top = r.json()["matches"]
        assert {m["id"] for m in top} == {i0, dup}
        assert top[0]["score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("n,size,min_hit", [("vit-reg4", 224, 0.75), ("swin", 128, 0.5)])
def test_planted_crop_localisation_protocol(world, tmp_path, n, size, min_hit):
    """``eval localize`` (through the library: the CLI has no model option): crops of 4 source
    images planted into distractors are found by a search of the crop, on token grids as on
    convolutional ones. Random weights: the found share is loose, the bookkeeping exact."""
    from vfsearch import load_model
    from vfsearch.evaluate.localize import run_localize

    arch, layer = CASES[n][0], CASES[n][5]
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        photo(320, 280, seed=100 + i).save(src / f"{i}.png")
    lm = load_model(f"timm:{arch}", str(world["files"][n]), input_size=size)
    rep = run_localize(src, tmp_path / "work", layers=[layer], n=4, pool=6, k=3, n_boot=20,
                       sides=(40, 120), model=lm, progress=False,
                       index_kw={"engine": "eager", "workers": 0})
    assert rep["images_in_cache"] == 14  # 4 sources, 6 distractors, 4 planted
    row = next(r for r in rep["rows"] if r["bin"] == "all")
    assert row["n"] == 4 and row["hit@1"] >= min_hit and row["hit@3"] >= row["hit@1"]
    assert 0 < row["iou"] <= 1 and len(rep["plants"]) == 4
