"""Preprocessing and the geometry that ties original pixels, model input and feature cells.

A :class:`Transform` turns a PIL image into the model's input tensor and knows exactly where every
input pixel came from, so masks can be carried onto the feature grid and matches carried back into
original-image pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .errors import BadMask, VfsError

__all__ = ["Transform", "Geometry", "mask_to_grid", "cell_box_to_image"]

_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class Geometry:
    """Affine map from original pixels to model-input pixels: ``u = x * sx - left``."""

    sx: float
    sy: float
    left: float
    top: float
    resized: tuple[int, int]  # (width, height) after the resize step
    size: int  # model input side

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        return x * self.sx - self.left, y * self.sy - self.top

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        return (u + self.left) / self.sx, (v + self.top) / self.sy


@dataclass(frozen=True)
class Transform:
    """Model preprocessing.

    ``mode="crop"``: resize the shorter side to ``resize`` then centre-crop ``size`` (the usual
    ImageNet evaluation transform). ``mode="whole"``: resize the whole image to ``size``×``size``
    (keeps the borders a crop hides, distorts the aspect ratio).
    """

    size: int = 224
    resize: int = 256
    mode: str = "crop"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.mode not in ("crop", "whole"):
            raise VfsError(f"unknown preprocessing mode {self.mode!r} (use 'crop' or 'whole')")
        if self.interpolation not in _INTERP:
            raise VfsError(f"unknown interpolation {self.interpolation!r}")
        if self.mode == "crop" and self.resize < self.size:
            raise VfsError(f"resize ({self.resize}) must be at least the crop size ({self.size})")

    # -- metadata -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Transform":
        return cls(
            size=int(d["size"]),
            resize=int(d["resize"]),
            mode=d["mode"],
            interpolation=d["interpolation"],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )

    def with_mode(self, mode: str) -> "Transform":
        return Transform(self.size, self.resize, mode, self.interpolation, self.mean, self.std)

    # -- geometry -----------------------------------------------------------------------------
    def geometry(self, width: int, height: int) -> Geometry:
        s = self.size
        if self.mode == "whole":
            return Geometry(s / width, s / height, 0.0, 0.0, (s, s), s)
        scale = self.resize / min(width, height)
        rw = max(s, int(round(width * scale)))
        rh = max(s, int(round(height * scale)))
        left = int(round((rw - s) / 2.0))
        top = int(round((rh - s) / 2.0))
        return Geometry(rw / width, rh / height, float(left), float(top), (rw, rh), s)

    # -- pixels ---------------------------------------------------------------------------------
    def resize_crop(self, img: Image.Image) -> Image.Image:
        """The geometric part: PIL RGB image → ``size``×``size`` PIL image."""
        g = self.geometry(*img.size)
        out = img.resize(g.resized, _INTERP[self.interpolation])
        if self.mode == "crop":
            left, top = int(g.left), int(g.top)
            out = out.crop((left, top, left + self.size, top + self.size))
        return out

    def to_array(self, img: Image.Image) -> np.ndarray:
        """PIL RGB image → normalised float32 CHW array."""
        a = np.asarray(self.resize_crop(img), dtype=np.float32) / 255.0
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, img: Image.Image):
        import torch

        return torch.from_numpy(self.to_array(img))


def mask_to_grid(mask: np.ndarray, geometry: Geometry, grid: tuple[int, int]) -> np.ndarray:
    """Carry an image-resolution mask (values 0–1) onto the feature grid by area averaging.

    The mask goes through the same resize and crop as the image, then each feature cell gets
    the mean of the mask over the input pixels it covers.
    """
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise BadMask(f"mask must be 2-D, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise BadMask("mask contains NaN or infinite values")
    m = np.clip(m, 0.0, 1.0)
    if not (m > 0).any():
        raise BadMask("mask is empty: brush or box a region first")
    gh, gw = grid
    s = geometry.size
    im = Image.fromarray(m, mode="F").resize(geometry.resized, Image.Resampling.BOX)
    left, top = int(geometry.left), int(geometry.top)
    im = im.crop((left, top, left + s, top + s))
    a = np.asarray(im, dtype=np.float32)
    if s % gh == 0 and s % gw == 0:
        out = a.reshape(gh, s // gh, gw, s // gw).mean(axis=(1, 3))
    else:
        out = np.asarray(im.resize((gw, gh), Image.Resampling.BOX), dtype=np.float32)
    out[out < 1e-4] = 0.0
    if not (out > 0).any():
        raise BadMask("mask lies entirely outside the part of the image the model sees (the crop)")
    return out.astype(np.float32)


def cell_box_to_image(
    box_cells: tuple[float, float, float, float],
    geometry: Geometry,
    grid: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[float, float, float, float]:
    """A box in fractional feature-cell units (x0, y0, x1, y1) → original-image pixels, clipped."""
    gh, gw = grid
    cw, ch = geometry.size / gw, geometry.size / gh
    x0, y0 = geometry.to_image(box_cells[0] * cw, box_cells[1] * ch)
    x1, y1 = geometry.to_image(box_cells[2] * cw, box_cells[3] * ch)
    w, h = image_size
    return (
        float(min(max(x0, 0.0), w)),
        float(min(max(y0, 0.0), h)),
        float(min(max(x1, 0.0), w)),
        float(min(max(y1, 0.0), h)),
    )
