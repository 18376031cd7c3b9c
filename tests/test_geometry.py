"""The geometry module: one place for original pixels ↔ model input ↔ cells ↔ offsets ↔ boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vfsearch.errors import BadMask
from vfsearch.geometry import Frame, Geometry, carry_affine, carry_box, cell_box, offset_rc, offsets
from vfsearch.transforms import Transform


def test_crop_geometry_maps_the_centre_crop():
    g = Transform(size=224, resize=256).geometry(512, 384)
    # shorter side 384 → 256, so 512 → 341 (rounded), crop 224 centred
    assert g.resized == (341, 256) and g.input == (224, 224)
    assert (g.left, g.top) == (round((341 - 224) / 2), 16)
    x0, y0, x1, y1 = g.crop
    assert x0 == pytest.approx(g.left / g.sx) and y0 == pytest.approx(16 * 1.5)
    assert x1 - x0 == pytest.approx(224 / g.sx) and y1 - y0 == pytest.approx(224 * 1.5)
    u, v = g.to_input(*g.to_image(37.5, 101.25))
    assert (u, v) == pytest.approx((37.5, 101.25))


def test_squash_geometry_sees_the_whole_image():
    g = Transform(mode="whole").geometry(640, 200)
    assert g.crop == pytest.approx((0.0, 0.0, 640.0, 200.0))
    assert g.sx == pytest.approx(224 / 640) and g.sy == pytest.approx(224 / 200)


def test_frame_cells_on_a_non_square_input():
    g = Geometry(1.0, 1.0, 0.0, 0.0, (320, 160), (320, 160), (320, 160))
    f = Frame.of(g, (10, 20))
    assert f.cell == (16.0, 16.0)
    assert f.cell_image_box(2, 3) == (48.0, 32.0, 64.0, 48.0)
    assert f.cells_to_image((19, 9, 25, 12)) == (304.0, 144.0, 320.0, 160.0)  # clipped
    assert f.image_to_cells((48, 32, 64, 48)) == pytest.approx((3, 2, 4, 3))
    m = np.zeros((160, 320), np.float32)
    m[32:48, 48:64] = 1
    w = f.mask_weights(m)
    assert w.shape == (10, 20) and w[2, 3] == 1 and w.sum() == 1
    assert cell_box(w) == (2, 3, 1, 1)


def test_mask_weights_area_average_and_errors():
    f = Transform().frame(224, 224, (7, 7))  # scale 256/224, crop 16 px on each side
    m = np.zeros((224, 224), np.float32)
    m[:, :112] = 1
    w = f.mask_weights(m)
    assert w.shape == (7, 7)
    assert np.allclose(w[:, :3], 1) and np.all(w[:, 4:] == 0) and 0 < w[0, 3] < 1
    with pytest.raises(BadMask) as e:
        f.mask_weights(np.zeros((224, 224)))
    assert e.value.param == "mask"
    edge = np.zeros((224, 224), np.float32)
    edge[:, :4] = 1  # inside the part the crop cuts off
    with pytest.raises(BadMask, match="outside"):
        f.mask_weights(edge)


def test_offsets_round_trip():
    A, B = offsets((14, 14), 3, 4)
    assert (A, B) == (12, 11)
    for o in (0, 5, 11, 12 * 11 - 1):
        a, b = offset_rc(o, (14, 14), 4)
        assert a * B + b == o and 0 <= a < A and 0 <= b < B


@pytest.mark.parametrize("qsize,rsize", [((512, 384), (300, 450)), ((224, 224), (1000, 250))])
def test_carry_affine_agrees_with_carry_box(qsize, rsize):
    t = Transform()
    qf, rf = t.frame(*qsize, (14, 14)), t.frame(*rsize, (14, 14))
    box = (qsize[0] * 0.4, qsize[1] * 0.45, qsize[0] * 0.6, qsize[1] * 0.6)
    origin = cell_box(qf.mask_weights(_box_mask(box, qsize)))[:2]
    for offset in ((0, 0), (5, 9), (11, 2)):
        got = carry_box(qf, box, origin, rf, offset)
        aff = carry_affine(qf, origin, rf, offset)
        a, _, _, d, e, f = aff["matrix"]
        x0, y0, x1, y1 = a * box[0] + e, d * box[1] + f, a * box[2] + e, d * box[3] + f
        w, h = rsize
        clipped = (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))
        assert got == pytest.approx(clipped, abs=1e-6)
        cx0, cy0, cx1, cy1 = aff["clip"]
        assert cx0 >= rf.geometry.crop[0] - 1e-9 and cx1 <= rf.geometry.crop[2] + 1e-9


def test_carry_to_the_same_offset_is_the_identity():
    t = Transform()
    qf = t.frame(640, 480, (14, 14))
    box = (200.0, 150.0, 320.0, 260.0)
    origin = (4, 5)
    assert carry_box(qf, box, origin, qf, origin) == pytest.approx(box)
    assert carry_affine(qf, origin, qf, origin)["matrix"] == pytest.approx([1, 0, 0, 1, 0, 0])


def _box_mask(box, size):
    from vfsearch.masks import box_mask

    return box_mask(box, size)


def test_full_mode_keeps_the_whole_image_at_the_crop_scale():
    t = Transform(mode="full")  # resize 256, long side 512
    g = t.geometry(640, 480)
    assert g.input == (512, 256) and g.resized == (341, 256) and (g.left, g.top) == (0, 0)
    assert g.sx == pytest.approx(256 / 480, rel=2e-3) and g.crop == pytest.approx((0, 0, 640, 480))
    crop = Transform().geometry(640, 480)
    assert g.sx == pytest.approx(crop.sx)  # the same scale as the centre crop
    f = Frame.of(g, (16, 32))
    assert not f.transposed and f.cell == (16.0, 16.0) and f.valid == (16, 22)
    assert f.cell_image_box(0, 21) == pytest.approx((21 * 16 / g.sx, 0, 640, 16 / g.sy))
    # a portrait image: padded the other way; the layer's landscape grid is turned
    p = Frame.of(t.geometry(300, 600), (16, 32))
    assert p.geometry.input == (256, 512) and p.transposed and p.grid == (32, 16)
    assert p.valid == (32, 16) and p.stored_valid == (16, 32) and p.stored((5, 2)) == (2, 5)
    # a panorama longer than the long side is scaled down to fit
    q = t.geometry(2000, 400)
    assert q.resized == (512, 102) and q.sx == pytest.approx(512 / 2000)
    assert Frame.of(q, (16, 32)).valid == (7, 32)
    x = t.to_array(Image.new("RGB", (640, 480), (255, 0, 0)))
    assert x.shape == (3, 256, 512) and x[0, 0, 0] == pytest.approx(1.0)
    assert np.all(x[:, :, 341:] == 0)  # padding is zero after normalisation


def test_full_mode_masks_carry_onto_the_valid_cells():
    t = Transform(mode="full")
    f = Frame.of(t.geometry(640, 480), (16, 32))
    m = np.zeros((480, 640), np.float32)
    m[:, 600:] = 1  # the right border, which a centre crop would cut away
    w = f.mask_weights(m)
    assert w.shape == (16, 32) and w[:, 22:].sum() == 0 and w[:, 20:22].sum() > 0
    assert Transform(mode="full").to_dict()["long"] == 512
    assert "long" not in Transform().to_dict()
    assert Transform.from_dict(Transform(mode="full", long=640).to_dict()).long == 640
