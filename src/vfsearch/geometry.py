"""Geometry: original pixels ↔ model input ↔ feature cells ↔ offsets ↔ boxes.

Everything that converts between these spaces lives here and only here; the engine, the
server, the evaluation protocols, the explainers and (through the server's JSON) the browser
all use it.

- :class:`Geometry` — where an original image lands in the model input: an axis-aligned affine
  map ``u = x * sx - left`` (``v = y * sy - top``) plus the input's size. The input need not be
  square.
- :class:`Frame` — a Geometry plus the feature grid of one layer (``rows × cols`` cells laid
  evenly on the model input; for a transformer a cell is a patch). It carries masks onto the
  grid (area average) and cell boxes back into original pixels.
- Offsets: a query's bounding box of ``h × w`` cells can sit at ``A × B`` offsets of a grid;
  offset index ``o = a * B + b`` (row ``a``, column ``b``) — :func:`offsets`,
  :func:`offset_rc`.
- :func:`carry_box` / :func:`carry_affine` — the query's own box (or mask) carried to the
  offset where it matched in another image, in that image's original pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import BadMask

__all__ = [
    "Box",
    "Frame",
    "Geometry",
    "carry_affine",
    "carry_box",
    "cell_box",
    "fit",
    "offset_rc",
    "offsets",
]

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1)


@dataclass(frozen=True)
class Geometry:
    """Affine map from original pixels to model-input pixels: ``u = x * sx - left``."""

    sx: float
    sy: float
    left: float
    top: float
    resized: tuple[int, int]  # (width, height) after the resize step
    input: tuple[int, int]  # (width, height) of the model input
    image: tuple[int, int]  # (width, height) of the original (upright) image

    @property
    def size(self) -> int:
        """Side of a square model input."""
        w, h = self.input
        if w != h:
            raise ValueError("this model input is not square: use .input (width, height)")
        return w

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        return x * self.sx - self.left, y * self.sy - self.top

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        return (u + self.left) / self.sx, (v + self.top) / self.sy

    @property
    def crop(self) -> Box:
        """What the model sees of the image, in original pixels (clipped to the image)."""
        x0, y0 = self.to_image(0, 0)
        x1, y1 = self.to_image(*self.input)
        w, h = self.image
        return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)

    def scaled(self, width: int, height: int) -> Geometry:
        """The same view of the image drawn at another size (e.g. its thumbnail)."""
        w, h = self.image
        return Geometry(self.sx * w / width, self.sy * h / height, self.left, self.top,
                        self.resized, self.input, (int(width), int(height)))

    def to_dict(self) -> dict:
        """JSON form for the browser (it never recomputes geometry)."""
        return {"sx": self.sx, "sy": self.sy, "left": self.left, "top": self.top,
                "input": list(self.input), "image": list(self.image),
                "size": self.input[0], "crop": list(self.crop)}


def fit(mode: str, size: int, resize: int, width: int, height: int, long: int = 0) -> Geometry:
    """The geometry of a preprocessing transform for a ``width × height`` image.

    ``crop``: shorter side resized to ``resize``, then the central ``size × size`` crop.
    ``squash``: the whole image resized to ``size × size`` (aspect not kept).
    ``full``: the whole image at the crop's scale (shorter side to ``resize``; scaled down
    further when the longer side would exceed ``long``), aspect kept, at the top-left of a
    padded ``long × resize`` input (``resize × long`` for a portrait image).
    """
    s = int(size)
    if mode == "squash":
        return Geometry(s / width, s / height, 0.0, 0.0, (s, s), (s, s), (width, height))
    if mode == "full":
        long = int(long) or 2 * int(resize)
        scale = min(resize / min(width, height), long / max(width, height))
        rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
        inp = (long, int(resize)) if width >= height else (int(resize), long)
        return Geometry(rw / width, rh / height, 0.0, 0.0, (rw, rh), inp, (width, height))
    scale = resize / min(width, height)
    rw = max(s, round(width * scale))
    rh = max(s, round(height * scale))
    left = round((rw - s) / 2.0)
    top = round((rh - s) / 2.0)
    return Geometry(rw / width, rh / height, float(left), float(top), (rw, rh), (s, s),
                    (width, height))


@dataclass(frozen=True)
class Frame:
    """One image's geometry plus a layer's feature grid (cells laid evenly on the input), in
    the image's own orientation.

    A layer's grid is stored in one orientation for every image (``rows ≤ cols`` for the padded
    inputs of the ``full`` mode); a portrait image's grid is stored transposed (``transposed``):
    matching its transposed cells with the transposed query gives the same score as matching
    the image with the query.
    """

    geometry: Geometry
    rows: int
    cols: int
    transposed: bool = False

    @classmethod
    def of(cls, geometry: Geometry, grid) -> Frame:
        """``grid`` as the layer stores it; turned to the image's orientation if needed."""
        r, c = int(grid[0]), int(grid[1])
        iw, ih = geometry.input
        if r != c and iw != ih and (iw < ih) != (c < r):  # only a padded input is turned
            return cls(geometry, c, r, True)
        return cls(geometry, r, c)

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def valid(self) -> tuple[int, int]:
        """(rows, cols) of the cells that hold image content (the rest is padding), from the
        top-left; the whole grid unless the input is padded (``full`` mode)."""
        g = self.geometry
        cw, ch = self.cell
        rw, rh = g.resized
        cols = min(self.cols, max(1, math.ceil(min(rw - g.left, g.input[0]) / cw - 1e-6)))
        rows = min(self.rows, max(1, math.ceil(min(rh - g.top, g.input[1]) / ch - 1e-6)))
        return rows, cols

    def stored(self, cell: tuple[int, int]) -> tuple[int, int]:
        """A (row, col) of this image's grid → where the layer stores it."""
        return (cell[1], cell[0]) if self.transposed else (int(cell[0]), int(cell[1]))

    @property
    def stored_valid(self) -> tuple[int, int]:
        """:attr:`valid` in the layer's stored orientation."""
        return self.stored(self.valid)

    @property
    def stored_grid(self) -> tuple[int, int]:
        """The layer's grid as it is stored (``grid`` transposed for a transposed image)."""
        return self.stored(self.grid)

    @property
    def padded(self) -> bool:
        """Whether part of this image's grid is padding (cells with no image content)."""
        return self.valid != self.grid

    def valid_cells(self) -> np.ndarray:
        """(rows, cols) float32: 1 on the cells that hold image content, 0 on padding."""
        m = np.zeros(self.grid, np.float32)
        r, c = self.valid
        m[:r, :c] = 1.0
        return m

    def to_stored(self, x: np.ndarray) -> np.ndarray:
        """A feature map (rows, cols, C) in this image's orientation → the layer's stored
        orientation, padding cells set to zero (what every cache of a padded layout holds)."""
        x = np.asarray(x)
        if tuple(x.shape[:2]) != self.grid:
            raise ValueError(f"features {x.shape} do not match the image's grid {self.grid}")
        if self.padded:
            r, c = self.valid
            x = x.copy()
            x[r:] = 0
            x[:, c:] = 0
        return np.ascontiguousarray(x.transpose(1, 0, 2)) if self.transposed else x

    def from_stored(self, x: np.ndarray) -> np.ndarray:
        """A stored feature map (or any per-cell array) → this image's orientation."""
        x = np.asarray(x)
        if not self.transposed:
            return x
        axes = (1, 0) + tuple(range(2, x.ndim))
        return np.ascontiguousarray(x.transpose(axes))

    @property
    def cell(self) -> tuple[float, float]:
        """(width, height) of one cell in model-input pixels."""
        return self.geometry.input[0] / self.cols, self.geometry.input[1] / self.rows

    def drawn(self) -> dict:
        """The grid as the page draws it over the image: the cells holding image content
        (``rows`` × ``cols``) and the box they cover in original pixels (not clipped: a last,
        partly filled cell of a padded grid reaches past the image's edge)."""
        r, c = self.valid
        cw, ch = self.cell
        x0, y0 = self.geometry.to_image(0, 0)
        x1, y1 = self.geometry.to_image(c * cw, r * ch)
        return {"rows": int(r), "cols": int(c),
                "box": [round(float(v), 3) for v in (x0, y0, x1, y1)]}

    def cells_to_image(self, box_cells: Box) -> Box:
        """A box in fractional cell units (x0, y0, x1, y1) → original pixels, clipped."""
        cw, ch = self.cell
        g = self.geometry
        x0, y0 = g.to_image(box_cells[0] * cw, box_cells[1] * ch)
        x1, y1 = g.to_image(box_cells[2] * cw, box_cells[3] * ch)
        w, h = g.image
        return (float(min(max(x0, 0.0), w)), float(min(max(y0, 0.0), h)),
                float(min(max(x1, 0.0), w)), float(min(max(y1, 0.0), h)))

    def cell_image_box(self, row: int, col: int, h: int = 1, w: int = 1) -> Box:
        """Original-pixel box of the ``h × w`` cells whose top-left cell is (row, col)."""
        return self.cells_to_image((col, row, col + w, row + h))

    def image_to_cells(self, box: Box) -> Box:
        """An original-pixel box → fractional cell units (not clipped)."""
        cw, ch = self.cell
        g = self.geometry
        u0, v0 = g.to_input(box[0], box[1])
        u1, v1 = g.to_input(box[2], box[3])
        return u0 / cw, v0 / ch, u1 / cw, v1 / ch

    def cell_edges(self, axis: int) -> np.ndarray:
        """Cell boundaries along x (axis 0) or y (axis 1) in original pixels, clipped."""
        n = self.cols if axis == 0 else self.rows
        step = self.cell[axis]
        g = self.geometry
        if axis == 0:
            e = [g.to_image(j * step, 0)[0] for j in range(n + 1)]
        else:
            e = [g.to_image(0, j * step)[1] for j in range(n + 1)]
        return np.clip(np.asarray(e, np.float64), 0.0, float(g.image[axis]))

    def mask_weights(self, mask: np.ndarray) -> np.ndarray:
        """Carry an image-resolution mask (values 0–1) onto the grid by area averaging.

        The mask goes through the same resize and crop as the image, then each cell gets the
        mean of the mask over the input pixels it covers (weights below 1e-4 become 0).
        """
        m = np.asarray(mask, dtype=np.float32)
        if m.ndim != 2:
            raise BadMask(f"mask must be 2-D, got shape {m.shape}", param="mask")
        if not np.isfinite(m).all():
            raise BadMask("mask contains NaN or infinite values", param="mask")
        m = np.clip(m, 0.0, 1.0)
        if not (m > 0).any():
            raise BadMask("mask is empty: brush or box a region first", param="mask")
        g = self.geometry
        iw, ih = g.input
        gh, gw = self.rows, self.cols
        im = Image.fromarray(m, mode="F").resize(g.resized, Image.Resampling.BOX)
        left, top = int(g.left), int(g.top)
        im = im.crop((left, top, left + iw, top + ih))
        a = np.asarray(im, dtype=np.float32)
        if ih % gh == 0 and iw % gw == 0:
            out = a.reshape(gh, ih // gh, gw, iw // gw).mean(axis=(1, 3))
        else:
            out = np.array(im.resize((gw, gh), Image.Resampling.BOX), dtype=np.float32)
        out[out < 1e-4] = 0.0
        if not (out > 0).any():
            raise BadMask("mask lies entirely outside the part of the image the model sees "
                          "(the crop)", param="mask")
        return out.astype(np.float32)


# -- offsets ---------------------------------------------------------------------------------------


def cell_box(weights: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, h, w) of the bounding box of a mask's non-zero cells."""
    rows, cols = np.nonzero(np.asarray(weights) > 0)
    if not len(rows):
        raise BadMask("mask is empty: brush or box a region first", param="mask")
    r0, c0 = int(rows.min()), int(cols.min())
    return r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1


def offsets(grid, h: int, w: int) -> tuple[int, int]:
    """(A, B): rows and columns of offsets where an ``h × w`` cell box fits in ``grid``."""
    return int(grid[0]) - h + 1, int(grid[1]) - w + 1


def offset_rc(index, grid, w: int) -> tuple[int, int]:
    """Offset index ``a * B + b`` → (a, b) for a box ``w`` cells wide on ``grid``."""
    a, b = divmod(int(index), int(grid[1]) - w + 1)
    return a, b


# -- carrying the query to a match ---------------------------------------------------------------


def carry_box(query: Frame, box: Box, origin: tuple[int, int], result: Frame,
              offset: tuple[int, int]) -> Box:
    """The query's box (query-image pixels) moved so that its cell box's top-left cell
    ``origin`` (row, col) lands on ``offset`` (row, col) of the result's grid, in the result
    image's original pixels (clipped)."""
    qg = query.geometry
    cw, ch = query.cell
    ux0, uy0 = qg.to_input(box[0], box[1])
    ux1, uy1 = qg.to_input(box[2], box[3])
    dx, dy = (offset[1] - origin[1]) * cw, (offset[0] - origin[0]) * ch
    cells = ((ux0 + dx) / cw, (uy0 + dy) / ch, (ux1 + dx) / cw, (uy1 + dy) / ch)
    return result.cells_to_image(cells)


def carry_affine(query: Frame, origin: tuple[int, int], result: Frame,
                 offset: tuple[int, int]) -> dict:
    """The same move as :func:`carry_box` as an affine map of query-image pixels → result-image
    pixels (``matrix`` = [a, 0, 0, d, e, f] as canvas ``setTransform`` takes it), and ``clip``:
    where the query's model view lands in the result, intersected with the result's own view."""
    qg, rg = query.geometry, result.geometry
    cw, ch = query.cell
    dx, dy = (offset[1] - origin[1]) * cw, (offset[0] - origin[0]) * ch
    a, d = qg.sx / rg.sx, qg.sy / rg.sy
    e = (dx - qg.left + rg.left) / rg.sx
    f = (dy - qg.top + rg.top) / rg.sy
    qx0, qy0 = rg.to_image(dx, dy)
    qx1, qy1 = rg.to_image(qg.input[0] + dx, qg.input[1] + dy)
    c = rg.crop
    clip = [max(qx0, c[0]), max(qy0, c[1]), min(qx1, c[2]), min(qy1, c[3])]
    return {"matrix": [a, 0.0, 0.0, d, e, f], "clip": clip}
