"""Drawing saliency maps over images (PNG overlays for the CLI and the widget)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..cache import FeatureCache
from ..images import load_image

__all__ = ["render_on_thumbnail", "render_overlay"]


def render_overlay(img: Image.Image, saliency: np.ndarray, geometry,
                   alpha: float = 0.6) -> Image.Image:
    """Draw a saliency map (feature grid or model-input pixels) over the region of ``img`` that
    the model sees: red = raises the score, blue = lowers it."""
    sal = np.asarray(saliency, np.float32)
    x0, y0 = geometry.to_image(0, 0)
    x1, y1 = geometry.to_image(*geometry.input)
    box = tuple(int(round(v)) for v in (x0, y0, x1, y1))
    w, h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    resample = Image.Resampling.NEAREST if sal.shape[0] < 32 else Image.Resampling.BILINEAR
    heat = np.asarray(Image.fromarray(sal).resize((w, h), resample))
    top = float(np.abs(heat).max()) or 1.0
    pos, neg = np.clip(heat / top, 0, 1), np.clip(-heat / top, 0, 1)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 255 * (pos > 0)
    rgba[..., 2] = 255 * (neg > 0)
    rgba[..., 3] = (255 * alpha * np.maximum(pos, neg)).astype(np.uint8)
    out = img.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    layer.paste(Image.fromarray(rgba, "RGBA"), box[:2])
    return Image.alpha_composite(out, layer).convert("RGB")


def render_on_thumbnail(cache: FeatureCache, i: int, saliency: np.ndarray, geometry=None,
                        alpha: float = 0.6) -> Image.Image:
    """:func:`render_overlay` on image ``i``'s cached thumbnail (no image file needed)."""
    th = load_image(cache.thumbnail(int(i)))
    g = geometry or cache.transform.geometry(*cache.image_size(int(i)))
    return render_overlay(th, saliency, g.scaled(th.width, th.height), alpha)
