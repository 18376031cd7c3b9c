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
            shares = sum(s["share"] for s in ex.extra["cell_shares"])
            assert shares == pytest.approx(ex.score, abs=1e-5)
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
def planted(small_cache, tmp_path_factory):
    """A crop of one photo pasted into an unrelated photo, at the same scale; indexed with a
    128-px model input (a third of the model passes' cost at 224 px: fast tests)."""
    from vfsearch.models import load_model

    model = load_model("efficientnet-lite0", input_size=128)
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
    c = index(tmp / "imgs", tmp / "c", model=model, layers=["blocks.10"], workers=0,
              progress=False).cache
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
    ex = explain(c, q, 1, "occlusion", model=model, window=32, stride=16, auc_steps=8)
    assert _peak_in_box(c, ex, 1, pasted)
    assert ex.insertion_auc > ex.deletion_auc


def test_rise_peak_inside_pasted_box_and_deterministic(planted):
    c, q, pasted, model = planted
    kw = dict(n_masks=96, cells=7, seed=3, auc_steps=6, batch_size=32)
    a = explain(c, q, 1, "rise", model=model, use_cache=False, **kw)
    assert _peak_in_box(c, a, 1, pasted)
    few = dict(kw, n_masks=8, auc_steps=2)
    b = explain(c, q, 1, "rise", model=model, use_cache=False, **few)
    b2 = explain(c, q, 1, "rise", model=model, use_cache=False, **few)
    assert np.array_equal(b.saliency, b2.saliency)
    other = explain(c, q, 1, "rise", model=model, use_cache=False, **{**few, "seed": 4})
    assert not np.array_equal(b.saliency, other.saliency)


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


# -- LIME, the learned mask, speed-ups, progress and cancellation -------------------------------


def _peak_xy(sal):
    """Centre of the pixels at the maximum (LIME's superpixels make ties)."""
    m = sal.max()
    ys, xs = np.nonzero(sal >= m - 1e-9 * max(1.0, abs(m)))
    return ys.mean(), xs.mean()


def _peak_on(c, sal, geom, box, tol=16):
    y, x = _peak_xy(sal)
    scale = geom.size / sal.shape[0]
    px, py = geom.to_image((x + 0.5) * scale, (y + 0.5) * scale)
    return box[0] - tol <= px <= box[2] + tol and box[1] - tol <= py <= box[3] + tol


def test_lime_peak_on_the_planted_region(planted):
    c, q, pasted, model = planted
    ex = explain(c, q, 1, "lime", model=model, use_cache=False, n_samples=120, batch_size=16,
                 auc_steps=2)
    S = c.transform.size
    assert ex.space == "input" and ex.saliency.shape == (S, S) and ex.query_saliency is None
    assert _peak_on(c, ex.saliency, c.transform.geometry(*c.image_size(1)), pasted)
    assert ex.extra["superpixels"] > 20 and len(ex.extra["selected"]) == 16
    assert ex.extra["forwards"] == 120 + 2 * 3
    # each superpixel is one value; the unselected ones are 0
    sp = np.array(ex.extra["superpixel_saliency"])
    assert np.count_nonzero(sp) <= 16 and set(np.unique(ex.saliency)) <= set(sp) | {0.0}


def test_lasso_path_selects_the_features_that_matter():
    from vfsearch.explain.lime import lasso_path_select, weighted_ridge

    rng = np.random.default_rng(0)
    X = (rng.random((400, 30)) < 0.5).astype(np.float64)
    beta = np.zeros(30)
    beta[[3, 11, 17]] = [0.5, -0.3, 0.2]
    y = 0.1 + X @ beta + rng.normal(0, 0.01, 400)
    w = rng.uniform(0.2, 1.0, 400)
    sel, lams, _ = lasso_path_select(X, y, w, 3)
    assert list(sel) == [3, 11, 17] and np.all(np.diff(lams) <= 0)  # by size of effect
    coef, b, r2 = weighted_ridge(X[:, sel], y, w, alpha=0.0)
    assert np.allclose(coef, [0.5, -0.3, 0.2], atol=0.01) and abs(b - 0.1) < 0.01 and r2 > 0.99


def test_mask_objective_decreases_and_peak_on_the_planted_region(planted):
    c, q, pasted, model = planted
    ex = explain(c, q, 1, "mask", model=model, use_cache=False, iterations=20, auc_steps=2)
    obj = ex.extra["objective"]
    assert obj[-1] < obj[0] - 0.1
    S = c.transform.size
    assert ex.saliency.shape == (S, S) and 0 <= ex.saliency.min() <= ex.saliency.max() <= 1
    assert _peak_on(c, ex.saliency, c.transform.geometry(*c.image_size(1)), pasted)
    assert ex.extra["backwards"] == 20 and ex.query_saliency is None
    gone = explain(c, q, 1, "mask", model=model, use_cache=False, iterations=12, auc_steps=2,
                   objective="delete")
    assert gone.extra["objective"][-1] < gone.extra["objective"][0]
    assert _peak_on(c, gone.saliency, c.transform.geometry(*c.image_size(1)), pasted)


def test_mask_both_gives_a_query_side_map(planted):
    c, q, pasted, model = planted
    ex = explain(c, q, 1, "mask", model=model, use_cache=False, iterations=12, size=7,
                 mode="both", auc_steps=2)
    S = c.transform.size
    assert ex.query_saliency.shape == (S, S) and np.ptp(ex.query_saliency) > 0.1
    assert _peak_on(c, ex.query_saliency, q.geometry, q.box)
    assert _peak_on(c, ex.saliency, c.transform.geometry(*c.image_size(1)), pasted)
    assert len(ex.extra["mask_cells"]) == 2 and ex.extra["backwards"] == 24


def test_region_score_in_torch_equals_the_search_score():
    import torch

    from vfsearch.engine.searcher import exact_scores
    from vfsearch.explain.mask import RegionScore

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 9, 9, 16)).astype(np.float32)
    qf = rng.normal(size=(9, 9, 16)).astype(np.float32)
    w = np.zeros((9, 9), np.float32)
    w[2:5, 3:7] = rng.uniform(0.2, 1, (3, 4))
    best = exact_scores(feats, w, qf)[0]
    rs = RegionScore(w)
    filt, qn = rs.query(torch.from_numpy(qf.transpose(2, 0, 1))[None])
    got = rs(torch.from_numpy(feats.transpose(0, 3, 1, 2).copy()), filt, qn).numpy()
    assert np.allclose(got, best, atol=1e-5)


def test_occlusion_incremental_equals_the_full_recompute(planted):
    c, q, pasted, model = planted
    kw = dict(model=model, use_cache=False, window=40, stride=24, auc_steps=4, batch_size=16)
    inc = explain(c, q, 1, "occlusion", incremental=True, **kw)
    full = explain(c, q, 1, "occlusion", incremental=False, **kw)
    scale = np.ptp(full.saliency)
    S = c.transform.size
    assert inc.extra["forwards"] == full.extra["forwards"] == 25 + 2 * 5
    assert np.abs(inc.saliency - full.saliency).max() <= 1e-3 * scale
    assert np.unravel_index(inc.saliency.argmax(), (S, S)) == np.unravel_index(
        full.saliency.argmax(), (S, S))
    assert abs(inc.insertion_auc - full.insertion_auc) <= 0.02
    assert abs(inc.deletion_auc - full.deletion_auc) <= 0.02


def test_incremental_features_equal_the_full_forward_at_the_borders(model):
    import torch

    from vfsearch.explain.forward import compose, layer_net
    from vfsearch.explain.incremental import occluded_features

    net = layer_net(model, "blocks.10")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 224, 224)).astype(np.float32)
    xb = (0.3 * x + 0.1).astype(np.float32)
    inc = occluded_features(net, x, xb)
    assert inc is not None  # EfficientNet-Lite0 is a chain of local stages
    boxes = [(0, 0, 30, 30), (194, 0, 224, 30), (101, 87, 131, 117), (0, 150, 12, 224),
             (7, 7, 9, 9)]
    keep = np.ones((len(boxes), 224, 224), np.float32)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        keep[k, y0:y1, x0:x1] = 0
    full = net.features(compose(torch.from_numpy(x), torch.from_numpy(xb), torch.from_numpy(keep)))
    got = inc.features(boxes)
    assert np.abs(got - full).max() <= 1e-4 * np.abs(full).max()


def test_the_forward_stops_at_the_layer_and_matches_the_extractor(model):
    import torch

    from vfsearch.explain.forward import layer_net
    from vfsearch.extract import FeatureExtractor

    net = layer_net(model, "blocks.10")
    assert net.module is not model.module and net.folded > 0  # a private copy, BN folded
    called = []
    later = [net.module.get_submodule(n) for n in ("blocks.11", "head")]
    hs = [m.register_forward_hook(lambda *a: called.append(1)) for m in later]
    try:
        x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 224, 224))
                             .astype(np.float32))
        got = net.features(x, batch=2)
    finally:
        for h in hs:
            h.remove()
    assert not called
    with FeatureExtractor(model.module, ["blocks.10"]) as fx:
        ref = fx(x)["blocks.10"]
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert not any(p.requires_grad for p in net.module.parameters())
    assert all(p.grad is None for p in model.module.parameters())
    # hooks are gone from both modules
    assert not any(m._forward_hooks for m in net.module.modules())
    assert not any(m._forward_hooks for m in model.module.modules())


@pytest.mark.parametrize("method,kw", [
    ("occlusion", dict(window=112, stride=112)),
    ("rise", dict(n_masks=8)),
    ("lime", dict(n_samples=8, segments=20, features=4)),
    ("mask", dict(iterations=3, size=4)),
])
def test_progress_reaches_one_and_cancel_stops_it(planted, method, kw):
    import threading

    from vfsearch.errors import Cancelled

    c, q, pasted, model = planted
    seen = []
    extra = {} if method == "mask" else {"batch_size": 4}
    ex = explain(c, q, 1, method, model=model, use_cache=False, auc_steps=2,
                 progress=seen.append, **kw, **extra)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) >= 2
    assert ex.insertion_auc is not None
    stop = threading.Event()
    calls = []

    def progress(f):
        calls.append(f)
        stop.set()  # cancel as soon as the first batch is done

    with pytest.raises(Cancelled) as e:
        explain(c, q, 1, method, model=model, use_cache=False, auc_steps=2, progress=progress,
                cancel=stop, **kw, **extra)
    assert e.value.code == "cancelled" and calls and max(calls) < 1.0
    with pytest.raises(Cancelled):  # a callable works too; a cancelled run is not memoised
        explain(c, q, 1, method, model=model, cancel=lambda: True, **kw)


@pytest.mark.parametrize("method,params,param", [
    ("lime", {"n_samples": 0}, "n_samples"),
    ("lime", {"segments": 1}, "segments"),
    ("lime", {"kernel_width": -1}, "kernel_width"),
    ("mask", {"lr": -0.1}, "lr"),
    ("mask", {"iterations": 0}, "iterations"),
    ("mask", {"objective": "keep"}, "objective"),
    ("mask", {"mode": "sideways"}, "mode"),
    ("mask", {"l1": "lots"}, "l1"),
    ("lime", {"mode": "both"}, "mode"),
    ("rise", {"n_masks": 0}, "n_masks"),
    ("occlusion", {"incremental": "maybe"}, "incremental"),
])
def test_bad_parameters_name_the_parameter(small_cache, method, params, param):
    from vfsearch.errors import BadParameter
    from vfsearch.explain import check_params

    with pytest.raises(BadParameter) as e:
        check_params(method, params)
    assert e.value.param == param and param in e.value.message
    q = make_query(small_cache, 4, box=(40, 40, 200, 180))
    with pytest.raises(BadParameter) as e:
        explain(small_cache, q, 1, method, **params)
    assert e.value.param == param


def test_a_mask_larger_than_the_input_is_refused(small_cache):
    from vfsearch.errors import BadParameter

    q = make_query(small_cache, 4, box=(40, 40, 200, 180))
    with pytest.raises(BadParameter) as e:
        explain(small_cache, q, 1, "mask", size=225)
    assert e.value.param == "size" and "224" in e.value.message


def test_declarations_of_the_new_methods():
    from vfsearch.explain import check_params, method_info, needs_query_image

    info = {m["name"]: m for m in method_info()}
    assert {"lime", "mask"} <= set(info) and info["lime"]["runs_model"]
    assert {p["name"] for p in info["mask"]["params"]} >= {"size", "iterations", "lr", "l1", "tv",
                                                          "objective", "mode"}
    assert check_params("mask", {})["iterations"] == 500 and check_params("mask", {})["lr"] == 0.1
    assert check_params("lime", {})["n_samples"] == 1000
    assert needs_query_image("mask", {"mode": "both"}) and not needs_query_image("lime", {})
    # strings as a command line gives them
    p = check_params("occlusion", {"window": "40", "incremental": "false", "stride": "1e1"})
    assert p["window"] == 40 and p["incremental"] is False and p["stride"] == 10


def test_the_widget_cancels_a_running_explanation(small_cache):
    from vfsearch.errors import Cancelled
    from vfsearch.widget import SearchWidget

    sw = SearchWidget(small_cache, k=2, query=0)
    W, H = small_cache.image_size(0)
    sw.brush.set_box((W * 0.2, H * 0.2, W * 0.6, H * 0.6))
    assert "lime" in sw.explain_method.options and "mask" in sw.explain_method.options
    fut = sw.explain(1, "rise", n_masks=4000, batch_size=2, auc_steps=2)
    assert sw.explain_cancel.layout.visibility == "visible"
    sw.cancel_explain()
    with pytest.raises(Cancelled):
        fut.result(timeout=120)
    assert "cancelled" in sw.explain_view.value and sw.explanation is None
    assert sw.explain_cancel.layout.visibility == "hidden" and not sw.explain_button.disabled
    # the next one runs (a new cancel flag), with progress to the end
    ex = sw.explain(1, "lime", n_samples=6, segments=12, features=3, auc_steps=2,
                    batch_size=6).result(timeout=300)
    assert ex.method == "lime" and sw.explain_progress.value == pytest.approx(1.0)


# -- the command line ----------------------------------------------------------------------------


def _cli(*args):
    from click.testing import CliRunner

    from vfsearch.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_lists_the_declared_methods_without_torch_in_help():
    import subprocess
    import sys

    r = _cli("explain", "--list-methods")
    assert r.exit_code == 0, r.output
    for s in ("lime: ", "mask: ", "n_samples=1000", "iterations=500", "lr=0.1", "{fixed|both}",
              "incremental=True"):
        assert s in r.output
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "vfsearch.cli", "explain",
                        "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0 and "--param NAME=VALUE" in p.stdout
    assert not [ln for ln in p.stderr.splitlines() if ln.rstrip().endswith(("| torch", "| numpy"))]


def test_cli_explain_params_and_their_errors(small_cache, tmp_path):
    c = str(small_cache.path)
    base = ["explain", c, "-i", "4", "--box", "40,40,200,180", "-r", "1"]
    for extra, flag, text in (
            (["--method", "lime", "--param", "n_samples=0"], "--param", "n_samples"),
            (["--method", "lime", "--param", "n_samples"], "--param", "NAME=VALUE"),
            (["--method", "rise", "--window", "40"], "--window", "unknown parameter"),
            (["--method", "rise", "--n-masks", "0"], "--n-masks", "n_masks"),
            (["--method", "mask", "--param", "lr=-1"], "--param", "lr"),
            (["--method", "mask", "--param", "size=999"], "--param", "size"),
            (["--method", "haruspex"], "--method", "haruspex"),
            (["--method", "occlusion", "--window", "40", "--param", "window=50"], "--param",
             "given both")):
        r = _cli(*base, *extra)
        assert r.exit_code == 2, (extra, r.output)
        assert r.stderr.startswith(f"error: {flag}: ") and text in r.stderr, (extra, r.stderr)
    r = _cli(*base, "--method", "mask", "--param", "iterations=2", "--param", "size=4",
             "--param", "auc_steps=2", "--mode", "both", "-o", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    assert "objective" in r.output and "model passes" in r.output
    assert (tmp_path / "m" / "query_mask.png").exists()
    assert (tmp_path / "m" / "result_1_mask.png").exists()
