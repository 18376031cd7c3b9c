"""The embedded default image set: scikit-image's sample photos (they ship inside the installed
package), each with a few deterministic crops and flips, so a search finds the same object at
other positions and scales. Labels are the photo names (one folder per photo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SAMPLE_PHOTOS", "sample_images"]

SAMPLE_PHOTOS = [
    "astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "horse",
    "hubble_deep_field", "immunohistochemistry", "logo", "moon", "motorcycle", "retina", "rocket",
    "page", "text", "clock", "chessboard", "color",
]
_FILES = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png",
    "cat": "chelsea.png", "coffee": "coffee.png", "coins": "coins.png", "grass": "grass.png",
    "gravel": "gravel.png", "horse": "horse.png", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "logo": "logo.png", "moon": "moon.png",
    "motorcycle": "motorcycle_left.png", "retina": "retina.jpg", "rocket": "rocket.jpg",
    "page": "page.png", "text": "text.png", "clock": "clock_motion.png",
    "chessboard": "chessboard_RGB.png", "color": "color.png",
}


def _source_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def sample_images(dest: str | os.PathLike, variants: int = 5, seed: int = 0) -> Path:
    """Write the sample set into ``dest/<photo>/<photo>_<k>.jpg`` (idempotent) and return ``dest``.

    Variant 0 is the whole photo; the others are random crops (40–90 % of each side), some
    mirrored, resized so the shorter side is at least 256 px.
    """
    dest = Path(dest).expanduser()
    src = _source_dir()
    rng = np.random.default_rng(seed)
    for name in SAMPLE_PHOTOS:
        path = src / _FILES[name]
        if not path.exists():
            continue
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        w, h = img.size
        for k in range(variants):
            fw, fh = rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)
            fx, fy, flip = rng.random(), rng.random(), rng.random() < 0.4
            out = folder / f"{name}_{k}.jpg"
            if out.exists():
                continue
            if k == 0:
                v = img
            else:
                cw, ch = int(w * fw), int(h * fh)
                x0, y0 = int((w - cw) * fx), int((h - ch) * fy)
                v = img.crop((x0, y0, x0 + cw, y0 + ch))
                if flip:
                    v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            short = min(v.size)
            if short < 256:
                s = 256 / short
                v = v.resize((round(v.size[0] * s), round(v.size[1] * s)), Image.Resampling.BICUBIC)
            tmp = out.with_suffix(".tmp")
            v.save(tmp, format="JPEG", quality=90)
            os.replace(tmp, out)
    return dest
