"""The forward up to the requested layers: it stops at the deepest one; every engine's features
equal the eager forward (relative error ≤ 1e-4, same top-10) on real photos; an OpenVINO export
is reused and rebuilt when the model, input size or layers change; a failing export falls back
cleanly; an interrupted OpenVINO run resumes to identical arrays."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import photo
from torch import nn

from vfsearch import Transform, from_module, index, open_cache
from vfsearch.engine.searcher import exact_scores
from vfsearch.extract import prepare_image
from vfsearch.forward import TOLERANCE, Forward, StopEarly, export_dir, relative_error

ov = pytest.importorskip("openvino", reason="the openvino engine is an optional extra")


@pytest.fixture
def exports(tmp_path, monkeypatch):
    """A private export folder."""
    monkeypatch.setenv("VFSEARCH_CACHE_DIR", str(tmp_path / "vfs-cache"))
    return export_dir()


@pytest.fixture(scope="module")
def photos(sample_dir, model):
    """The sample photos (18 real images) as model inputs."""
    files = sorted(p for p in sample_dir.rglob("*.jpg"))
    return torch.from_numpy(np.stack([prepare_image(f, model.transform)[0] for f in files]))


def _top10(feats: np.ndarray, q: int) -> list[int]:
    H, W = feats.shape[1:3]
    w = np.zeros((H, W), np.float32)
    w[H // 2 - 1:H // 2 + 2, W // 2 - 1:W // 2 + 2] = 1
    best = exact_scores(feats, w, feats[q])[0]
    return list(np.argsort(-best, kind="stable")[:10])


def _assert_same(got: dict, want: dict) -> None:
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
        assert relative_error(got[name], want[name]) <= TOLERANCE, name
        for q in (0, 5, 11):
            assert _top10(got[name], q) == _top10(want[name], q), (name, q)


class Counted(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class TinyNet(nn.Module):
    def __init__(self, seed=0, width=8):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.tail = Counted()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is exercised
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        return self.tail(self.features(x)).mean((2, 3))


def test_the_forward_stops_after_the_deepest_requested_layer():
    net = TinyNet()
    out = StopEarly(net, ["features.2", "features.0"])(torch.zeros(2, 3, 32, 32))
    assert [tuple(t.shape) for t in out] == [(2, 8, 16, 16), (2, 8, 16, 16)]
    assert net.tail.calls == 0  # nothing after features.2 ran
    assert all(not m._forward_hooks for m in net.modules())
    StopEarly(net, ["features.2"], stop=False)(torch.zeros(1, 3, 32, 32))
    assert net.tail.calls == 1


def test_default_model_every_engine_equals_eager_on_real_photos(model, photos, exports):
    layers = ["blocks.10", "head"]
    ref = Forward(model.module, layers, size=224, engine="eager")(photos)
    assert ref["blocks.10"].shape == (18, 14, 14, 112) and ref["head"].shape == (18, 7, 7, 1280)
    for engine in ("torch", "openvino"):
        notes = []
        fwd = Forward(model.module, layers, size=224, engine=engine, log=notes.append)
        assert fwd.engine_name == engine, notes
        _assert_same(fwd(photos), ref)


def test_timm_vision_transformer_through_forward_intermediates(exports):
    from vfsearch.models import _import_torchvision

    try:
        _import_torchvision()  # timm imports torchvision
    except ImportError:
        pass
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=4).eval()
    x = torch.randn(3, 3, 224, 224)
    ref = Forward(vit, ["blocks.1", "blocks.3"], size=224, engine="eager")(x)
    assert ref["blocks.1"].shape == (3, 14, 14, 192)
    # the same as the block's tokens without the class token, laid on the grid
    tokens = {}
    h = vit.blocks[1].register_forward_hook(lambda _m, _i, o: tokens.setdefault("t", o))
    with torch.inference_mode():
        vit(x)
    h.remove()
    grid = tokens["t"][:, vit.num_prefix_tokens:].reshape(3, 14, 14, 192).numpy()
    assert relative_error(ref["blocks.1"], grid) < 1e-6
    for engine in ("torch", "openvino"):
        fwd = Forward(vit, ["blocks.1", "blocks.3"], size=224, engine=engine)
        assert fwd.engine_name == engine
        got = fwd(x)
        for k in ref:
            assert relative_error(got[k], ref[k]) <= TOLERANCE


def test_custom_module_engines_equal_eager_and_batchnorm_is_folded(exports):
    net = TinyNet()
    x = torch.randn(5, 3, 64, 64)
    layers = ["features.5", "features.3"]
    ref = Forward(net, layers, size=64, engine="eager")(x)
    fast = Forward(net, layers, size=64, engine="torch")
    # features.3 is a convolution that is asked for: it keeps its own output (its BatchNorm is
    # not folded into it); the first pair is folded
    assert fast._impl.folded == 1
    for engine in ("torch", "openvino"):
        got = Forward(net, layers, size=64, engine=engine)(x)
        for k in ref:
            assert relative_error(got[k], ref[k]) <= TOLERANCE
    # odd batch sizes (each compiled once, then a dynamic shape) and another input shape
    fwd = Forward(net, ["features.5"], size=64, engine="openvino")
    for n in (1, 2, 3, 4, 7):
        xb = torch.randn(n, 3, 64, 64)
        assert relative_error(fwd(xb)["features.5"], net.features(xb).detach().permute(
            0, 2, 3, 1).numpy()) <= TOLERANCE
    xw = torch.randn(2, 3, 48, 80)
    assert fwd(xw)["features.5"].shape == (2, 12, 20, 16)
    assert len(list(exports.glob("*.xml"))) == 3  # two layer sets at 64×64, one at 48×80


def test_an_export_is_reused_and_rebuilt_when_model_size_or_layers_change(exports):
    net = TinyNet()
    first = Forward(net, ["features.2"], size=64, engine="openvino")
    assert first.engine_name == "openvino" and first.export_seconds > 0
    files = sorted(exports.glob("*.xml"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = Forward(net, ["features.2"], size=64, engine="openvino")
    assert again.export_seconds == 0 and files[0].stat().st_mtime_ns == mtime
    # auto uses an export that is on disk even for a handful of images
    assert Forward(net, ["features.2"], size=64, expected_images=3).engine_name == "openvino"
    assert Forward(net, ["features.5"], size=64, engine="openvino").export_seconds > 0
    assert Forward(net, ["features.2"], size=96, engine="openvino").export_seconds > 0
    other = TinyNet(seed=1)  # same architecture, other weights
    fo = Forward(other, ["features.2"], size=64, engine="openvino")
    assert fo.export_seconds > 0
    x = torch.randn(2, 3, 64, 64)
    assert relative_error(fo(x)["features.2"], Forward(other, ["features.2"], size=64,
                          engine="eager")(x)["features.2"]) <= TOLERANCE
    assert Forward(TinyNet(width=12), ["features.2"], size=64,
                   engine="openvino").export_seconds > 0  # other architecture
    assert len(list(exports.glob("*.xml"))) == 5
    assert not list(exports.glob("*tmp*"))


class NumpyRoundTrip(nn.Module):
    """A forward the tracer cannot follow: the numpy detour is frozen into a constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.ReLU()

    def forward(self, x):
        y = torch.from_numpy(self.conv(x).detach().numpy() * 2.0)
        return self.out(y)


def test_a_failing_export_falls_back_cleanly_and_is_not_retried(exports):
    net = NumpyRoundTrip().eval()
    x = torch.randn(2, 3, 32, 32)
    notes = []
    fwd = Forward(net, ["out"], size=32, engine="openvino", log=notes.append)
    assert fwd.engine_name == "torch"
    assert len([n for n in notes if "openvino engine unavailable" in n]) == 1
    assert "differs from the eager forward" in notes[-1] and "\n" not in notes[-1]
    ref = Forward(net, ["out"], size=32, engine="eager")(x)["out"]
    assert relative_error(fwd(x)["out"], ref) <= TOLERANCE
    rec = json.loads(next(exports.glob("*.json")).read_text())
    assert rec["ok"] is False and not list(exports.glob("*.xml"))
    notes2 = []
    t = time.perf_counter()
    again = Forward(net, ["out"], size=32, engine="openvino", log=notes2.append)
    assert again.engine_name == "torch" and again.export_seconds == 0
    assert "differs" in notes2[0] and time.perf_counter() - t < 5
    # auto does not retry a remembered failure either: one note, no export
    seen = []
    auto = Forward(net, ["out"], size=32, expected_images=10_000, log=seen.append)
    assert auto.engine_name == "torch" and auto.export_seconds == 0
    assert len(seen) == 1 and "differs" in seen[0]


def test_openvino_missing_falls_back_with_one_note(monkeypatch):
    import vfsearch.forward as fw

    def missing():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(fw, "_openvino", missing)
    notes = []
    f = Forward(TinyNet(), ["features.2"], size=32, engine="openvino", log=notes.append)
    assert f.engine_name == "torch" and len(notes) == 1 and "No module named" in notes[0]
    assert Forward(TinyNet(), ["features.2"], size=32, expected_images=10_000).engine_name == \
        "torch"


def _arrays(cache, layer):
    g = cache.root[f"layers/{layer}"]
    return {k: g[k][:] for k in g.array_keys()}


def test_openvino_index_killed_mid_run_then_rerun_equals_uninterrupted(tmp_path, model):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(24):
        photo(96 + 8 * (i % 3), 80, seed=i).save(src / f"im{i:03d}.png")
    ref = index(src, tmp_path / "ref", model=model, layers=["blocks.15"], chunk=2, batch_size=2,
                workers=0, progress=False, threads=1, engine="openvino")
    assert ref.engine == "openvino"
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vfsearch.cli", "index", str(src), "--chunk", "2",
           "--batch-size", "2", "--workers", "0", "-q", "--layer", "blocks.15", "--threads", "1",
           "--engine", "openvino", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
        try:
            done = int((open_cache(out).status != 0).sum())
        except Exception:  # noqa: BLE001 - cache not created yet
            done = 0
        if done >= 4:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 0 < done < 24, "the run should have been killed half-way"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c = open_cache(out)
    assert c.valid.all()
    a, b = _arrays(ref.cache, "blocks.15"), _arrays(c, "blocks.15")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_index_reports_engine_and_stage_speeds(tmp_path):
    t = Transform(size=64, resize=72, interpolation="bilinear")
    lm = from_module(TinyNet(), t, name="tiny")
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(5):
        photo(90, 80, seed=i).save(src / f"{i}.jpg")
    rep = index(src, tmp_path / "c", model=lm, layers=["features.5"], workers=0, progress=False,
                engine="eager")
    assert rep.engine == "eager" and rep.indexed == 5
    st = rep.stage_images_per_second()
    assert st["decode"] > 0 and st["forward"] > 0 and st["write"] > 0
    with pytest.raises(Exception, match="unknown engine"):
        index(src, tmp_path / "d", model=lm, layers=["features.5"], workers=0, progress=False,
              engine="fast")


def test_draft_decoding_keeps_the_original_size_and_close_features(tmp_path, model):
    big = photo(2048, 1536, seed=3)
    p = tmp_path / "big.jpg"
    big.save(p, quality=92)
    x_full, th_full, size_full = prepare_image(p, model.transform)
    x_draft, th_draft, size_draft = prepare_image(p, model.transform, draft=True)
    assert size_full == size_draft == (2048, 1536)
    assert not np.array_equal(x_full, x_draft)  # drafted (1/4 scale)
    fwd = Forward(model.module, ["blocks.10"], size=224, engine="eager")
    a = fwd(x_full[None])["blocks.10"].ravel()
    b = fwd(x_draft[None])["blocks.10"].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.97
    small = tmp_path / "small.jpg"
    photo(400, 300).save(small)
    assert np.array_equal(prepare_image(small, model.transform)[0],
                          prepare_image(small, model.transform, draft=True)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_features_equal_the_cpu_path(model, photos):
    ref = Forward(model.module, ["blocks.10"], size=224, engine="eager")(photos)
    for engine in ("eager", "torch"):
        module = model.module.to("cuda")
        try:
            got = Forward(module, ["blocks.10"], size=224, engine=engine, device="cuda")(photos)
        finally:
            model.module.to("cpu")
        _assert_same(got, ref)


def test_a_batch_of_mixed_input_shapes_runs_one_forward_per_shape():
    from vfsearch.extract import _forward_batch

    net = TinyNet()
    fwd = Forward(net, ["features.2"], size=64, engine="torch")
    xs = [torch.randn(3, 48, 80), torch.randn(3, 80, 48), torch.randn(3, 48, 80)]
    got = _forward_batch(fwd, xs)["features.2"]
    for a, g in zip(xs, got, strict=True):
        want = Forward(net, ["features.2"], size=64, engine="eager")(a[None])["features.2"][0]
        assert g.shape == want.shape and relative_error(g, want) <= TOLERANCE
