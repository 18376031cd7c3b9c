"""Preprocessing: a :class:`Transform` turns a PIL image into the model's input tensor.

Where every input pixel came from (and so where masks and matches go) is
:mod:`vfsearch.geometry`; ``Transform.geometry`` / ``Transform.frame`` build it for an image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import BadParameter
from .geometry import Frame, Geometry, fit

__all__ = ["MODES", "Transform"]

#: index modes: the model's centre crop, or the whole image squashed to a square
MODES = ("crop", "squash")

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
    its deprecated old name).
    """

    size: int = 224
    resize: int = 256
    mode: str = "crop"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.mode == "whole":  # the deprecated name of squash
            object.__setattr__(self, "mode", "squash")
        if self.mode not in MODES:
            raise BadParameter(f"unknown preprocessing mode {self.mode!r} (use "
                               f"{', '.join(MODES)})", param="mode")
        if self.interpolation not in _INTERP:
            raise BadParameter(f"unknown interpolation {self.interpolation!r}",
                               param="interpolation")
        if self.mode == "crop" and self.resize < self.size:
            raise BadParameter(f"resize ({self.resize}) must be at least the crop size "
                               f"({self.size})", param="resize")

    # -- metadata -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
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
        )

    def with_mode(self, mode: str) -> Transform:
        return Transform(self.size, self.resize, mode, self.interpolation, self.mean, self.std)

    # -- geometry -----------------------------------------------------------------------------
    def geometry(self, width: int, height: int) -> Geometry:
        """Where a ``width × height`` image lands in the model input."""
        return fit(self.mode, self.size, self.resize, int(width), int(height))

    def frame(self, width: int, height: int, grid) -> Frame:
        """:meth:`geometry` plus a layer's feature grid."""
        return Frame.of(self.geometry(width, height), grid)

    # -- pixels ---------------------------------------------------------------------------------
    def resize_crop(self, img: Image.Image) -> Image.Image:
        """The geometric part: PIL RGB image → ``size``×``size`` PIL image."""
        g = self.geometry(*img.size)
        out = img.resize(g.resized, _INTERP[self.interpolation])
        left, top = int(g.left), int(g.top)
        if (left, top) != (0, 0) or g.resized != g.input:
            out = out.crop((left, top, left + g.input[0], top + g.input[1]))
        return out

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL RGB image → normalised float32 CHW array."""
        a = np.asarray(self.resize_crop(img), dtype=np.float32) / 255.0
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, img: Image.Image):
        import torch

        return torch.from_numpy(self.to_array(img))
