"""The geometry module: one place for original pixels ↔ model input ↔ cells ↔ offsets ↔ boxes."""

from __future__ import annotations

import numpy as np
import pytest

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
