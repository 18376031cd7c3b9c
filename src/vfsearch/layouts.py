"""How a layer's output lies on the feature grid.

Three layouts, always read from the model's own metadata, never guessed from a shape alone:

- ``nchw``: a convolutional feature map (N, C, H, W).
- ``nhwc``: a channels-last map (N, H, W, C), such as a Swin stage's (timm models whose
  ``output_fmt`` is ``NHWC``, torchvision's Swin, a module whose own ``output_fmt`` says so).
- ``tokens``: a token sequence (N, L, C) of a vision transformer. Its prefix tokens (class
  token, registers, distillation token: timm's ``num_prefix_tokens``) are dropped and the rest
  laid row by row on the patch grid (input / patch size, timm's ``patch_embed``); a cell is a
  patch and the stride is the patch size. A sequence of exactly the patch tokens (the patch
  embedding's output) is read with no prefix.

:func:`model_layout` reads a model once; :func:`layer_layout` says how one output is read (or
``None`` when it is no feature map); :func:`to_nchw` lays it out. :func:`as_grid` is all three
in one call, for code that hooks a layer itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .errors import BadParameter, VfsError

__all__ = [
    "Layout",
    "ModelLayout",
    "TokenSpec",
    "as_grid",
    "layer_layout",
    "model_layout",
    "to_nchw",
    "token_spec",
]

HW = tuple[int, int]

#: modules whose output is channels-first whatever the model's format
_CHANNELS_FIRST = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.GroupNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class TokenSpec:
    """How a model's token outputs lie on its patch grid: ``prefix`` tokens first (dropped), then
    the patches row by row. The grid at an input of (height, width) pixels is ``input // patch``
    (``ceil`` when the model pads its input to whole patches); with no patch size known,
    ``grid`` is fixed, or square when not given either."""

    prefix: int = 0
    patch: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    what: str = ""  # what the prefix holds, e.g. "1 class + 4 register tokens"
    pad: bool = False

    def grid_at(self, hw: Sequence[int], n_tokens: int | None = None) -> HW:
        if self.patch is not None:
            (h, w), (ph, pw) = hw, self.patch
            if self.pad:
                return -(-int(h) // ph), -(-int(w) // pw)
            return int(h) // ph, int(w) // pw
        if self.grid is not None:
            return int(self.grid[0]), int(self.grid[1])
        if n_tokens is None:
            raise VfsError("the token grid is not known without the number of tokens")
        g = math.isqrt(max(0, n_tokens - self.prefix))
        return g, g

    def describe(self) -> str:
        if not self.prefix:
            return ""
        return self.what or f"{self.prefix} prefix token{'s' if self.prefix != 1 else ''}"


@dataclass(frozen=True)
class ModelLayout:
    """What a model's outputs are: ``tokens`` (a :class:`TokenSpec`) for a vision transformer,
    ``nhwc`` when its 4-D outputs are channels-last; ``family`` names where it was read from."""

    tokens: TokenSpec | None = None
    nhwc: bool = False
    family: str = ""


@dataclass(frozen=True)
class Layout:
    """How one layer's output is read: ``kind`` is ``nchw``, ``nhwc`` or ``tokens``; for tokens,
    ``prefix`` tokens dropped (``what`` they are) and the ``grid`` they lie on."""

    kind: str = "nchw"
    prefix: int = 0
    grid: HW | None = None
    what: str = ""

    def shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(height, width, channels) of the grid of an output of ``shape``."""
        if self.kind == "tokens":
            return int(self.grid[0]), int(self.grid[1]), int(shape[2])
        if self.kind == "nhwc":
            return int(shape[1]), int(shape[2]), int(shape[3])
        return int(shape[2]), int(shape[3]), int(shape[1])

    @property
    def dropped(self) -> str:
        return self.what if self.kind == "tokens" and self.prefix else ""


def _fmt(value) -> str:
    return str(getattr(value, "value", value) or "")


def _tokens_what(module: nn.Module, prefix: int) -> str:
    """"1 class + 4 register tokens" from a timm transformer's own attributes."""
    parts = []
    if getattr(module, "cls_token", None) is not None:
        parts.append("1 class")
    if getattr(module, "dist_token", None) is not None:
        parts.append("1 distillation")
    regs = getattr(module, "reg_token", None)
    n_reg = int(getattr(module, "num_reg_tokens", 0) or (regs.shape[1] if regs is not None and
                                                         regs.dim() == 3 else 0))
    if n_reg:
        parts.append(f"{n_reg} register")
    if not parts or len(parts) - (1 if n_reg else 0) + n_reg != prefix:
        return f"{prefix} prefix token{'s' if prefix != 1 else ''}"
    return " + ".join(parts) + (" tokens" if prefix > 1 else " token")


def token_spec(prefix: int = 0, grid: Sequence[int] | None = None, patch=None,
               what: str = "", size: int | None = None) -> TokenSpec:
    """A :class:`TokenSpec` from what a user states (``from_module(tokens=...)``): ``prefix``
    tokens first, then a ``grid`` (rows, cols) at the input side ``size`` (its patch size is
    derived when the side divides evenly), or a ``patch`` size; square when neither is given."""
    prefix = int(prefix)
    if prefix < 0:
        raise BadParameter("the number of prefix tokens cannot be negative", param="tokens")
    if patch is not None:
        p = (int(patch), int(patch)) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        return TokenSpec(prefix, patch=p, what=what)
    g = None
    if grid is not None:
        g = (int(grid[0]), int(grid[1]))
        if min(g) < 1:
            raise BadParameter(f"bad token grid {g}", param="tokens")
        if size is not None and size % g[0] == 0 and size % g[1] == 0:
            return TokenSpec(prefix, patch=(size // g[0], size // g[1]), what=what)
    return TokenSpec(prefix, grid=g, what=what)


def model_layout(module: nn.Module) -> ModelLayout:
    """Read how ``module``'s outputs lie on the grid from its own metadata (see the module
    docstring); a plain convolutional network gives the default (all ``nchw``)."""
    user = getattr(module, "vfsearch_tokens", None)
    if isinstance(user, ModelLayout):
        return user
    if isinstance(user, TokenSpec):
        return ModelLayout(tokens=user, family="custom")
    pe = getattr(module, "patch_embed", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    if pe is not None and prefix is not None and hasattr(pe, "patch_size"):
        ps = pe.patch_size
        patch = (int(ps), int(ps)) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
        return ModelLayout(tokens=TokenSpec(int(prefix), patch=patch,
                                            what=_tokens_what(module, int(prefix)),
                                            pad=bool(getattr(pe, "dynamic_img_pad", False))),
                           family="timm-vit")
    if _fmt(getattr(module, "output_fmt", "")) == "NHWC":
        return ModelLayout(nhwc=True, family="timm-nhwc")
    cls = type(module)
    if cls.__module__.startswith("torchvision.models"):
        if cls.__name__ == "VisionTransformer":
            p = int(module.patch_size)
            return ModelLayout(tokens=TokenSpec(1, patch=(p, p), what="1 class token"),
                               family="torchvision-vit")
        if cls.__name__ == "SwinTransformer":
            return ModelLayout(nhwc=True, family="torchvision-swin")
    return ModelLayout()


def _last_leaf(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module


def layer_layout(ml: ModelLayout, name: str, module: nn.Module, shape: Sequence[int],
                 hw: Sequence[int]) -> Layout | None:
    """How the output of ``shape`` of the layer ``name`` (the module ``module``) is read at an
    input of ``hw`` (height, width) pixels; ``None`` when it is no feature map (a pooled vector,
    an attention map, a window-partitioned sequence, tokens that do not fill the grid)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        leaf = _last_leaf(module)
        own = _fmt(getattr(module, "output_fmt", "")) or _fmt(getattr(leaf, "output_fmt", ""))
        if own in ("NHWC", "NCHW"):
            return Layout(own.lower())
        if isinstance(leaf, _CHANNELS_FIRST):
            return Layout("nchw")
        dims = getattr(leaf, "dims", None)  # torchvision's Permute
        if type(leaf).__name__ == "Permute" and dims is not None and len(dims) == 4:
            return {(0, 3, 1, 2): Layout("nchw"), (0, 2, 3, 1): Layout("nhwc")}.get(
                tuple(int(d) for d in dims))
        if ml.nhwc:
            return Layout("nhwc")
        if ml.tokens is not None:
            return None  # inside a transformer, a 4-D output is an attention map or similar
        return Layout("nchw")
    if len(shape) == 3 and ml.tokens is not None:
        spec = ml.tokens
        _, n, _ = shape
        gh, gw = spec.grid_at(hw, n)
        if n == spec.prefix + gh * gw and gh * gw:
            return Layout("tokens", spec.prefix, (gh, gw), spec.describe())
        if n == gh * gw and gh * gw:  # the patch tokens alone (the patch embedding's output)
            return Layout("tokens", 0, (gh, gw))
    return None


def to_nchw(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The output laid out as (N, C, H, W) (a view where it can be)."""
    if layout.kind == "nchw":
        return t
    if layout.kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    gh, gw = layout.grid
    return t[:, layout.prefix:].reshape(-1, gh, gw, t.shape[-1]).permute(0, 3, 1, 2)


def _hint(ml: ModelLayout, shape) -> str:
    if len(shape) == 3 and ml.tokens is None:
        return ("; a token sequence needs its layout: from_module(net, transform, "
                "tokens={'prefix': 1, 'grid': (14, 14)})")
    if len(shape) == 3:
        return (f" ({ml.tokens.prefix} prefix token(s) + the patch grid expected; does the "
                "input size match the patch grid?)")
    return ""


def as_grid(module: nn.Module, name: str, out, hw: Sequence[int],
            ml: ModelLayout | None = None) -> torch.Tensor:
    """The output ``out`` of the layer ``name`` of ``module`` at an input of ``hw`` pixels as an
    (N, C, H, W) feature map; raises :class:`VfsError` when it is none."""
    ml = ml if ml is not None else model_layout(module)
    if not isinstance(out, torch.Tensor):
        raise VfsError(f"layer {name!r} does not output a tensor (got {type(out).__name__})")
    sub = module.get_submodule(name) if name else module
    lay = layer_layout(ml, name, sub, out.shape, hw)
    if lay is None:
        raise VfsError(f"layer {name!r} outputs {tuple(out.shape)}, not a feature map"
                       + _hint(ml, tuple(out.shape)))
    return to_nchw(out, lay)


def block_name(name: str) -> bool:
    """``blocks.N`` (a transformer block, the usual layer to search)."""
    return re.fullmatch(r"blocks\.\d+", name) is not None
