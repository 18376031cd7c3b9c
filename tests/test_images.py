"""Robust decoding: every bad input from the foundation issue is handled, none aborts a run."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from vfsearch.errors import BadImage, DatasetError
from vfsearch.images import discover, load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_zero_byte_file_is_refused_with_reason(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        load_image(p)


def test_truncated_jpeg_is_refused(tmp_path):
    p = _save(photo(), tmp_path / "full.jpg", quality=90)
    data = p.read_bytes()
    t = tmp_path / "trunc.jpg"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated|corrupt"):
        load_image(t)


def test_text_file_named_jpg_is_refused(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 10)
    with pytest.raises(BadImage, match="not a recognised image"):
        load_image(p)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = _save(photo().convert("CMYK"), tmp_path / "cmyk.jpg")
    assert Image.open(p).mode == "CMYK"
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (320, 240)
    ref = np.asarray(photo(), dtype=float)
    assert np.abs(np.asarray(img, dtype=float) - ref).mean() < 20


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    a = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    img = load_image(p)
    g = np.asarray(img)[..., 0].astype(int)
    assert img.mode == "RGB" and g[0, 0] == 0 and g[-1, -1] == 255
    assert abs(int(g[24, 32]) - 128) < 3


def test_palette_png_with_transparency_composites_on_white(tmp_path):
    img = Image.new("P", (40, 30), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    for x in range(20):
        for y in range(30):
            img.putpixel((x, y), 1)
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    out = np.asarray(load_image(p))
    assert tuple(out[5, 30]) == (255, 255, 255)  # transparent red → white
    assert tuple(out[5, 5]) == (0, 0, 255)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    base = Image.new("RGB", (60, 40), (0, 0, 0))
    base.paste((255, 255, 255), (0, 0, 30, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    base.save(p, exif=exif.tobytes(), quality=95)
    img = load_image(p)
    assert img.size == (40, 60)
    a = np.asarray(img).mean(axis=2)
    assert a[:25].mean() > 200 and a[35:].mean() < 50  # white half is now on top


def test_one_pixel_image_loads(tmp_path):
    p = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "one.png")
    img = load_image(p)
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)


def _png_header_only(w, h) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + chunk(b"IEND", b""))


def test_pixel_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(30000, 30000))  # 900 Mpx declared in a tiny file
    with pytest.raises(BadImage, match="pixels|bomb"):
        load_image(p)
    with pytest.raises(BadImage, match="exceeds the cap"):
        load_image(_save(photo(), tmp_path / "ok.png"), max_pixels=1000)


def test_grayscale_and_rgba_load_as_rgb(tmp_path):
    g = load_image(_save(photo().convert("L"), tmp_path / "g.png"))
    a = load_image(_save(photo().convert("RGBA"), tmp_path / "a.png"))
    assert g.mode == a.mode == "RGB"


def test_image_bytes_load(tmp_path):
    buf = io.BytesIO()
    photo().save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (320, 240)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nope")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images found"):
        discover(tmp_path / "empty")


def test_discover_folder_labels_from_parent_and_pattern(tmp_path):
    for rel in ["cats/a.jpg", "dogs/b.png", "dogs/sub/c.jpeg", "n01440764_tench.JPEG"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        photo(32, 32).save(p, format="PNG")
    (tmp_path / "skip.txt").write_text("x")
    s = discover(tmp_path)
    assert [(i.path, i.label) for i in s.items] == [
        ("n01440764_tench.JPEG", ""), ("cats/a.jpg", "cats"), ("dogs/b.png", "dogs"),
        ("dogs/sub/c.jpeg", "sub")]
    s2 = discover(tmp_path, label_pattern=r"^n\d+_(?P<label>.+)\.\w+$")
    assert s2.items[0].label == "tench"


def test_discover_csv_with_metadata_and_list_file(tmp_path):
    for name in ("a.png", "b.png"):
        photo(32, 32).save(tmp_path / name)
    (tmp_path / "list.csv").write_text("path,label,domain\na.png,cat,cam1\nb.png,dog,cam2\n")
    s = discover(tmp_path / "list.csv")
    assert s.meta_columns == ["domain"]
    assert [(i.path, i.label, i.meta["domain"]) for i in s.items] == [("a.png", "cat", "cam1"),
                                                                       ("b.png", "dog", "cam2")]
    (tmp_path / "list.txt").write_text("# images\nb.png\n" + str(tmp_path / "a.png") + "\n")
    assert [i.path for i in discover(tmp_path / "list.txt").items] == ["b.png", "a.png"]
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match="'path' column"):
        discover(tmp_path / "bad.csv")
