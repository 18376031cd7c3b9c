"""One mask decoder for every surface, with the same rule and encoding as brush.js."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfsearch.errors import BadMask
from vfsearch.masks import (
    box_mask,
    decode_bytes,
    decode_rle,
    decode_spec,
    encode_rle,
    fit_mask,
    load_mask,
    to_array,
)

BRUSH_JS = Path(__file__).resolve().parents[1] / "src" / "vfsearch" / "static" / "brush.js"


def _brush_png(m: np.ndarray) -> bytes:
    """A mask as brush.js exports it: white pixels, alpha = mask."""
    h, w = m.shape
    rgba = np.full((h, w, 4), 255, np.uint8)
    rgba[..., 3] = np.round(m * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def _gray_png(m: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(m * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _mask() -> np.ndarray:
    m = np.zeros((30, 40), np.float32)
    m[5:20, 10:30] = 1
    m[22:26, 2:8] = 0.4
    return m


def test_brush_png_reads_its_alpha_everywhere():
    """A white brush PNG must not read as a full mask (the old widget read channel 0)."""
    m = _mask()
    png = _brush_png(m)
    from vfsearch.widget import decode_mask

    for got in (decode_bytes(png), to_array(png),
                decode_spec({"png": base64.b64encode(png).decode()}),
                decode_spec({"png": "data:image/png;base64," + base64.b64encode(png).decode()}),
                decode_mask(png)):
        assert got.shape == m.shape
        assert np.allclose(got, m, atol=1 / 255)


def test_gray_images_read_their_value():
    m = _mask()
    assert np.allclose(decode_bytes(_gray_png(m)), m, atol=1 / 255)


def test_raw_bytes_and_arrays():
    m = _mask()
    raw = np.round(m * 255).astype(np.uint8)
    assert np.allclose(decode_bytes(raw.tobytes(), 40, 30), raw / 255)
    assert np.allclose(to_array(m > 0.5), m > 0.5)
    with pytest.raises(BadMask):
        decode_bytes(b"\x00" * 11, 4, 4)  # neither raw 4×4 nor an image
    with pytest.raises(BadMask, match="empty"):
        to_array(np.zeros((4, 4)))
    assert not to_array(np.zeros((4, 4)), empty_ok=True).any()
    with pytest.raises(BadMask, match=r"\[0, 1\]"):
        to_array(np.full((4, 4), 2.0, np.float32))


def test_fit_and_load_check_sizes():
    m = _mask()
    big = fit_mask(m, (80, 60))
    assert big.shape == (60, 80) and big[25, 40] == pytest.approx(1.0)
    with pytest.raises(BadMask, match="aspect"):
        fit_mask(m, (80, 30))
    with pytest.raises(BadMask, match="≠ image size"):
        load_mask(m, (41, 30))


def test_box_mask_errors_name_the_box():
    assert box_mask((1, 2, 3, 5), (10, 10)).sum() == 2 * 3
    for bad in ((5, 5, 5, 9), (20, 20, 30, 30), ("a", 1, 2, 3), (0, 0, float("nan"), 3)):
        with pytest.raises(BadMask) as e:
            box_mask(bad, (10, 10))
        assert e.value.param == "box"


def test_rle_round_trip_and_malformed():
    m = np.zeros((17, 23), np.float32)
    m[3:9, 4:20] = 1
    m[10:12, 2:5] = 7 / 15
    assert np.allclose(decode_rle(encode_rle(m)), m)
    for bad in ("3.3.A", "3.3.A9!", "x.y.A", "2.2.Z4", "0.5.A", "9999.2.A"):
        with pytest.raises(BadMask):
            decode_rle(bad)


def _js_encode(cases: list[dict]) -> list[str]:
    """brush.js's encodeMask on each case, run by node (or Debian's chromium)."""
    script = (
        f"import {{ encodeMask }} from {json.dumps(BRUSH_JS.as_uri())};\n"
        "import { readFileSync } from 'node:fs';\n"
        "const cases = JSON.parse(readFileSync(0, 'utf8'));\n"
        "const out = cases.map((c) => encodeMask(c.u8 ? Uint8Array.from(c.data) : "
        "Float32Array.from(c.data), c.w, c.h, c.max));\n"
        "console.log(JSON.stringify(out));\n"
    )
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run brush.js outside a browser")
    r = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(cases),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_python_and_js_encoders_agree():
    rng = np.random.default_rng(3)
    cases, arrays = [], []
    for (h, w), max_side, kind in (((30, 40), 64, "soft"), ((200, 130), 64, "soft"),
                                   ((97, 301), 48, "u8"), ((64, 64), 16, "blob"),
                                   ((5, 7), 64, "soft")):
        if kind == "u8":
            a = ((rng.random((h, w)) > 0.7).astype(np.uint8)
                 * rng.integers(1, 256, (h, w)).astype(np.uint8))
        elif kind == "blob":
            yy, xx = np.mgrid[:h, :w]
            a = np.clip(1.2 - np.hypot(yy - 20, xx - 40) / 15, 0, 1).astype(np.float32)
        else:
            a = (rng.random((h, w)) * (rng.random((h, w)) > 0.5)).astype(np.float32)
        arrays.append((a, max_side))
        cases.append({"data": a.ravel().tolist(), "w": w, "h": h, "max": max_side,
                      "u8": a.dtype == np.uint8})
    js = _js_encode(cases)
    py = [encode_rle(a, max_side=ms) for a, ms in arrays]
    assert py == js
