"""Query masks: one decoder for every surface (Python, CLI, web API, widget).

A mask is a float32 (height, width) array in [0, 1] at the query image's resolution. Sources:

- arrays (bool, uint8 0–255, or floats 0–1);
- images (a file, a PIL image or encoded bytes such as PNG): the **alpha channel when the image
  has one, otherwise the gray value / 255** — the rule of ``brush.js``, whose PNGs are white
  with alpha = mask;
- raw uint8 bytes of ``width × height`` (row-major), as the widget sends them;
- the compact run-length text of share URLs (``"<w>.<h>.<runs>"``, :func:`encode_rle`, the
  same format and rounding as ``brush.js``'s ``encodeMask``);
- a box (x0, y0, x1, y1) in image pixels (:func:`box_mask`).

A mask at another resolution than the image is resized when its aspect ratio matches within
2 % (:func:`fit_mask`).
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadMask

__all__ = [
    "ASPECT_TOLERANCE",
    "box_mask",
    "decode_bytes",
    "decode_rle",
    "decode_spec",
    "encode_rle",
    "fit_mask",
    "load_mask",
    "resize_mask",
    "to_array",
]

ASPECT_TOLERANCE = 0.02
MAX_MASK_PIXELS = 64_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _from_pil(im: Image.Image) -> np.ndarray:
    """The one image rule: alpha when there is one, else gray / 255."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    if im.mode == "1":
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("I;16", "I"):
        a = np.asarray(im, dtype=np.float32)
        return a / max(1.0, float(a.max()))
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _open_image_bytes(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_MASK_PIXELS:
                raise BadMask("mask image is too large", param="mask")
            im.load()
            return im.copy()
    except BadMask:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure is a bad mask
        raise BadMask("mask image cannot be decoded", param="mask") from None


def _check(a: np.ndarray, empty_ok: bool = False) -> np.ndarray:
    if a.ndim != 2:
        raise BadMask(f"mask must be 2-D (height × width), got shape {a.shape}", param="mask")
    if a.size == 0:
        raise BadMask("mask has no pixels", param="mask")
    if not np.isfinite(a).all():
        raise BadMask("mask contains NaN or infinite values", param="mask")
    if a.min() < 0 or a.max() > 1:
        raise BadMask(f"mask values must lie in [0, 1] (got {a.min():g}…{a.max():g})",
                      param="mask")
    if not empty_ok and not (a > 0).any():
        raise BadMask("mask is empty: brush or box a region first", param="mask")
    return a.astype(np.float32, copy=False)


def to_array(mask, *, empty_ok: bool = False) -> np.ndarray:
    """Any mask source (array, PIL image, image file, image bytes) → float32 (h, w) in [0, 1]
    (an all-zero mask is refused unless ``empty_ok``)."""
    if isinstance(mask, (str, os.PathLike)):
        p = Path(mask)
        if not p.exists():
            raise BadMask(f"mask file not found: {p}", param="mask")
        mask = _open_image_bytes(p.read_bytes())
    elif isinstance(mask, (bytes, bytearray, memoryview)):
        mask = _open_image_bytes(bytes(mask))
    if isinstance(mask, Image.Image):
        a = _from_pil(mask)
    else:
        a = np.asarray(mask)
        if a.dtype == bool:
            a = a.astype(np.float32)
        elif a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        elif a.dtype.kind in "fiu":
            a = a.astype(np.float32)
        else:
            raise BadMask(f"mask must hold numbers, got {a.dtype}", param="mask")
        if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
            a = a[..., -1] if a.shape[-1] == 4 else a.mean(axis=-1)
    return _check(a, empty_ok)


def load_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask at exactly the image's ``size`` (width, height) → float32 (h, w) in [0, 1]."""
    a = to_array(mask)
    w, h = size
    if a.shape != (h, w):
        raise BadMask(f"mask size {a.shape[1]}×{a.shape[0]} ≠ image size {w}×{h}", param="mask")
    return a


def fit_mask(a: np.ndarray, size: tuple[int, int], *, empty_ok: bool = False) -> np.ndarray:
    """Resize a mask to the image's ``size`` (w, h) when their aspect ratios agree within 2 %."""
    w, h = size
    mh, mw = a.shape
    if (mw, mh) == (w, h):
        return a
    if abs((mw / mh) / (w / h) - 1.0) > ASPECT_TOLERANCE:
        raise BadMask(f"mask is {mw}×{mh} but the image is {w}×{h}: aspect ratios differ by "
                      "more than 2 %", param="mask")
    return _check(resize_mask(a, size), empty_ok)


def resize_mask(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask resampled to ``size`` (w, h): area average when shrinking, bilinear when growing."""
    w, h = size
    if (a.shape[1], a.shape[0]) == (w, h):
        return a
    resample = Image.Resampling.BOX if a.shape[1] > w else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(a, mode="F").resize((w, h), resample), np.float32)
    return np.clip(out, 0.0, 1.0)


def decode_bytes(data: bytes, width: int = 0, height: int = 0, *,
                 empty_ok: bool = False) -> np.ndarray:
    """Mask bytes → float32 (h, w): raw uint8 of ``width × height`` (row-major) when the length
    says so, otherwise an encoded image (PNG, …; the image rule)."""
    data = bytes(data)
    if width > 0 and height > 0 and len(data) == width * height and data[:8] != _PNG_MAGIC:
        return to_array(np.frombuffer(data, np.uint8).reshape(height, width), empty_ok=empty_ok)
    return to_array(_open_image_bytes(data), empty_ok=empty_ok)


def decode_spec(spec: dict) -> np.ndarray:
    """A mask from the web API: ``{"png": base64 | data URL}``, ``{"u8": base64, "width",
    "height"}``, ``{"data": [[...]]}`` (0–1, or 0–255) or ``{"rle": "w.h.runs"}``."""
    if not isinstance(spec, dict):
        raise BadMask("mask must be an object with 'png', 'u8', 'data' or 'rle'", param="mask")
    if spec.get("png"):
        text = str(spec["png"])
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            raw = base64.b64decode(text, validate=False)
        except Exception:  # noqa: BLE001
            raise BadMask("mask PNG is not valid base64", param="mask") from None
        return to_array(_open_image_bytes(raw))
    if spec.get("u8"):
        try:
            w, h = int(spec["width"]), int(spec["height"])
            raw = base64.b64decode(str(spec["u8"]))
        except Exception:  # noqa: BLE001
            raise BadMask("raw mask needs base64 'u8', 'width' and 'height'",
                          param="mask") from None
        if w <= 0 or h <= 0 or len(raw) != w * h:
            raise BadMask(f"raw mask has {len(raw)} bytes, expected width×height = {w}×{h}",
                          param="mask")
        return to_array(np.frombuffer(raw, np.uint8).reshape(h, w))
    if spec.get("data") is not None:
        try:
            arr = np.asarray(spec["data"], dtype=np.float32)
        except (TypeError, ValueError):
            raise BadMask("mask 'data' must be a 2-D array of numbers", param="mask") from None
        if arr.ndim != 2 or arr.size == 0:
            raise BadMask(f"mask 'data' must be 2-D, got shape {arr.shape}", param="mask")
        if np.isfinite(arr).all() and 1.0 < arr.max() <= 255.0:
            arr = arr / 255.0
        return to_array(arr)
    if spec.get("rle"):
        return to_array(decode_rle(str(spec["rle"])))
    raise BadMask("mask must have 'png', 'u8', 'data' or 'rle'", param="mask")


def box_mask(box, size: tuple[int, int]) -> np.ndarray:
    """A rectangular mask from (x0, y0, x1, y1) in image pixels."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadMask(f"a box is four numbers x0,y0,x1,y1; got {box!r}", param="box") from None
    if not all(np.isfinite((x0, y0, x1, y1))):
        raise BadMask(f"a box is four finite numbers x0,y0,x1,y1; got {box!r}", param="box")
    w, h = size
    if not (x1 > x0 and y1 > y0):
        raise BadMask(f"box {tuple(box)} is empty (need x1 > x0 and y1 > y0)", param="box")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise BadMask(f"box {tuple(box)} lies outside the {w}×{h} image", param="box")
    m = np.zeros((h, w), np.float32)
    m[max(0, int(np.floor(y0))):min(h, int(np.ceil(y1))),
      max(0, int(np.floor(x0))):min(w, int(np.ceil(x1)))] = 1
    return m


# -- compact run-length text (share URLs) ----------------------------------------------------------

_RLE_RE = re.compile(r"([A-P])([0-9a-z]*)")
MAX_RLE_SIDE = 4096


def encode_rle(mask: np.ndarray, max_side: int = 64) -> str:
    """A 2-D mask (values 0–1, or uint8 0–255) → ``"<w>.<h>.<runs>"``, exactly as ``brush.js``'s
    ``encodeMask``: area-averaged down to at most ``max_side`` on the longest side, 16 levels
    (a non-zero value is at least level 1), each run a letter A–P followed by its length in
    base 36 (omitted when 1)."""
    m = np.asarray(mask)
    k = 1.0 / 255.0 if m.dtype == np.uint8 else 1.0
    m = m.astype(np.float64)
    height, width = m.shape
    s = min(1.0, max_side / max(width, height))
    w, h = max(1, _js_round(width * s)), max(1, _js_round(height * s))
    q = np.zeros(w * h, np.int64)
    for y in range(h):
        ya = (y * height) // h
        yb = max(ya + 1, ((y + 1) * height) // h)
        for x in range(w):
            xa = (x * width) // w
            xb = max(xa + 1, ((x + 1) * width) // w)
            v = float(m[ya:yb, xa:xb].mean()) * k
            q[y * w + x] = max(1, _js_round(v * 15)) if v > 0 else 0
    out = []
    i, n = 0, len(q)
    while i < n:
        j = i
        while j < n and q[j] == q[i]:
            j += 1
        run = j - i
        out.append(chr(65 + int(q[i])) + ("" if run == 1 else np.base_repr(run, 36).lower()))
        i = j
    return f"{w}.{h}." + "".join(out)


def _js_round(x: float) -> int:
    """JavaScript's Math.round (halves go up), not Python's round-half-even."""
    return int(np.floor(x + 0.5))


def decode_rle(text: str) -> np.ndarray:
    """``"<w>.<h>.<runs>"`` → float32 (h, w) with 16 levels."""
    try:
        ws, hs, runs = str(text).split(".", 2)
        w, h = int(ws), int(hs)
    except ValueError:
        raise BadMask("run-length mask must look like '<w>.<h>.<runs>'", param="mask") from None
    if not (0 < w <= MAX_RLE_SIDE and 0 < h <= MAX_RLE_SIDE):
        raise BadMask(f"run-length mask size {w}×{h} is out of range", param="mask")
    vals = np.zeros(w * h, np.float32)
    pos = consumed = 0
    for mt in _RLE_RE.finditer(runs):
        if mt.start() != consumed:
            break
        consumed = mt.end()
        level = ord(mt.group(1)) - 65
        run = int(mt.group(2), 36) if mt.group(2) else 1
        if pos + run > w * h:
            raise BadMask("run-length mask is longer than its size", param="mask")
        vals[pos:pos + run] = level / 15.0
        pos += run
    if consumed != len(runs) or pos != w * h:
        raise BadMask("run-length mask is malformed or does not fill its size", param="mask")
    return vals.reshape(h, w)
