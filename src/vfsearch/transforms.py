"""Preprocessing: a :class:`Transform` turns a PIL image into the model's input tensor.

Where every input pixel came from (and so where masks and matches go) is
:mod:`vfsearch.geometry`; ``Transform.geometry`` / ``Transform.frame`` build it for an image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import BadParameter
from .geometry import Frame, Geometry, fit

__all__ = ["MODES", "Transform"]

#: index modes: the model's centre crop, the whole image squashed to a square, or the whole
#: image at its own aspect on a padded input
MODES = ("crop", "squash", "full")

_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class Transform:
    """Model preprocessing.

    ``mode="crop"``: resize the shorter side to ``resize`` then centre-crop ``size`` (the usual
    ImageNet evaluation transform). ``mode="squash"``: resize the whole image to
    ``size``×``size`` (keeps the borders a crop hides, distorts the aspect ratio; ``"whole"`` is
    its deprecated old name). ``mode="full"``: the whole image at the crop's scale (shorter side
    ``resize``), aspect kept, on a padded ``long × resize`` input (``long`` defaults to twice
    ``resize``; longer images are scaled down to fit); padding is zero after normalisation.
    """

    size: int = 224
    resize: int = 256
    mode: str = "crop"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    long: int = 0  # full mode: the padded input's long side (0: twice ``resize``)

    def __post_init__(self):
        if self.mode == "whole":  # the deprecated name of squash
            object.__setattr__(self, "mode", "squash")
        if self.mode not in MODES:
            raise BadParameter(f"unknown preprocessing mode {self.mode!r} (use "
                               f"{', '.join(MODES)})", param="mode")
        if self.interpolation not in _INTERP:
            raise BadParameter(f"unknown interpolation {self.interpolation!r}",
                               param="interpolation")
        if self.mode == "full" and not self.long:
            object.__setattr__(self, "long", 2 * int(self.resize))
        if self.mode == "full" and self.long < self.resize:
            raise BadParameter(f"the long side ({self.long}) must be at least resize "
                               f"({self.resize})", param="long")
        if self.mode == "crop" and self.resize < self.size:
            raise BadParameter(f"resize ({self.resize}) must be at least the crop size "
                               f"({self.size})", param="resize")

    # -- metadata -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.mode != "full":
            del d["long"]  # as caches of the other modes always recorded it
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        return cls(
            size=int(d["size"]),
            resize=int(d["resize"]),
            mode=d["mode"],
            interpolation=d["interpolation"],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            long=int(d.get("long", 0)),
        )

    def with_mode(self, mode: str, long: int | None = None) -> Transform:
        """This transform in another index mode (``long``: the full mode's long side)."""
        return dataclasses.replace(self, mode=mode, long=self.long if long is None else long)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the model input for a landscape image (portrait: swapped)."""
        if self.mode == "full":
            return int(self.resize), int(self.long)
        return int(self.size), int(self.size)

    # -- geometry -----------------------------------------------------------------------------
    def geometry(self, width: int, height: int) -> Geometry:
        """Where a ``width × height`` image lands in the model input."""
        return fit(self.mode, self.size, self.resize, int(width), int(height), self.long)

    def frame(self, width: int, height: int, grid) -> Frame:
        """:meth:`geometry` plus a layer's feature grid."""
        return Frame.of(self.geometry(width, height), grid)

    # -- pixels ---------------------------------------------------------------------------------
    def resize_crop(self, img: Image.Image) -> Image.Image:
        """The geometric part: PIL RGB image → the model's view of it (``size``×``size``; in
        ``full`` mode the resized image, without its padding)."""
        g = self.geometry(*img.size)
        out = img.resize(g.resized, _INTERP[self.interpolation])
        left, top = int(g.left), int(g.top)
        if self.mode != "full" and ((left, top) != (0, 0) or g.resized != g.input):
            out = out.crop((left, top, left + g.input[0], top + g.input[1]))
        return out

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL RGB image → normalised float32 CHW array (``full``: zero-padded to the input)."""
        a = np.asarray(self.resize_crop(img), dtype=np.float32) / 255.0
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        a = a.transpose(2, 0, 1)
        if self.mode == "full":
            iw, ih = self.geometry(*img.size).input
            out = np.zeros((3, ih, iw), np.float32)
            out[:, :a.shape[1], :a.shape[2]] = a
            return out
        return np.ascontiguousarray(a)

    def __call__(self, img: Image.Image):
        import torch

        return torch.from_numpy(self.to_array(img))
