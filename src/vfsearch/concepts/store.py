"""Concept sets: what discovery returns, how they are stored in the cache (kind ``concepts``)
and read back, their JSON form and their contact sheets.

Stored under ``derived/concepts/<layer>/<method>`` (written through
:meth:`~vfsearch.cache.CacheWriter.store`)::

    directions     (K, C) float32   unit direction of each concept in the layer's feature space
    sizes          (K,) int64       cells assigned to each concept
    offsets        (K+1,) int64     concept k's patches are rows offsets[k]:offsets[k+1] below
    patch_image    (P,) int64       image id of each patch, best first within a concept
    patch_cells    (P, 4) int32     (row0, col0, h, w) of the patch on the layer's grid
    patch_box      (P, 4) float32   the patch in original-image pixels (vfsearch.geometry)
    patch_score    (P,) float32     cosine of the patch (mean of its cells) with the direction
    image_counts   (N, K) uint16    dictionary: cells of each image assigned to each concept
    crop_*                          saliency: every salient crop (image, cells, concept, query)
    sheets         (K + 1,) bytes   PNG contact sheets (one per concept, then an overview)

Attributes: layer, method, algorithm, parameters, timings and the cache's fingerprint when it
was computed (``stale`` says whether the cache has changed since).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..errors import NotFound

__all__ = ["KIND", "METHODS", "ConceptSet", "load_concepts", "save_concepts", "sheet_png"]

KIND = "concepts"
METHODS = ("dictionary", "saliency")

_ARRAYS = ("directions", "sizes", "offsets", "patch_image", "patch_cells", "patch_box",
           "patch_score")


@dataclass
class ConceptSet:
    """Concepts of one layer: directions, sizes and patches (best first) per concept."""

    layer: str
    method: str
    directions: np.ndarray  # (K, C) float32, unit rows
    sizes: np.ndarray  # (K,) int64
    offsets: np.ndarray  # (K + 1,) int64
    patch_image: np.ndarray  # (P,) int64
    patch_cells: np.ndarray  # (P, 4) int32
    patch_box: np.ndarray  # (P, 4) float32
    patch_score: np.ndarray  # (P,) float32
    attrs: dict = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # image_counts, crop_* arrays

    def __len__(self) -> int:
        return int(len(self.directions))

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.attrs.get("grid", (0, 0)))

    def check_id(self, concept: int) -> int:
        try:
            k = int(concept)
        except (TypeError, ValueError):
            raise NotFound(f"a concept id is an integer, got {concept!r}",
                           param="concept") from None
        if not 0 <= k < len(self):
            raise NotFound(f"no concept {k} ({self.method}, {self.layer}: ids 0–{len(self) - 1})",
                           param="concept")
        return k

    def patch_rows(self, concept: int) -> slice:
        k = self.check_id(concept)
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))

    def patches(self, concept: int, cache=None) -> list[dict]:
        """Concept ``concept``'s patches, best first: image id, box (original pixels), score,
        cells (row0, col0, h, w) and, given the cache, path and label."""
        sl = self.patch_rows(concept)
        paths = cache.paths if cache is not None else None
        labels = cache.labels if cache is not None else None
        out = []
        for j in range(sl.start, sl.stop):
            i = int(self.patch_image[j])
            d = {"id": i, "box": [round(float(v), 2) for v in self.patch_box[j]],
                 "score": round(float(self.patch_score[j]), 6),
                 "cells": [int(v) for v in self.patch_cells[j]]}
            if paths is not None:
                d["path"] = str(paths[i])
                d["label"] = str(labels[i])
            out.append(d)
        return out

    def concept(self, concept: int, cache=None) -> dict:
        k = self.check_id(concept)
        return {"id": k, "size": int(self.sizes[k]), "patches": self.patches(k, cache)}

    def to_dict(self, cache=None) -> dict:
        """The ``concepts.json`` form: layer, method, parameters and every concept with its
        patches (paths and labels when ``cache`` is given)."""
        keep = ("algorithm", "params", "grid", "n_images", "n_cells", "seconds", "fingerprint")
        d = {"layer": self.layer, "method": self.method}
        d.update({k: self.attrs[k] for k in keep if k in self.attrs})
        d["concepts"] = [self.concept(k, cache) for k in range(len(self))]
        return d

    def image_concepts(self, image_id: int) -> list[tuple[int, int]]:
        """(concept, count) pairs of one image, most first: its cells per concept (dictionary) or
        its salient crops per concept (saliency)."""
        i = int(image_id)
        if "image_counts" in self.extra:
            row = np.asarray(self.extra["image_counts"][i], np.int64)
        elif "crop_image" in self.extra:
            sel = self.extra["crop_image"] == i
            row = np.bincount(self.extra["crop_concept"][sel], minlength=len(self))
        else:
            return []
        ks = np.flatnonzero(row)
        ks = ks[np.argsort(-row[ks], kind="stable")]
        return [(int(k), int(row[k])) for k in ks]


def save_concepts(cache, cs: ConceptSet, sheets: list[bytes] | None = None) -> None:
    """Store ``cs`` in ``cache`` (replacing an earlier result of the same layer and method),
    with its contact sheets when given."""
    from ..cache import CacheWriter

    w = CacheWriter.open(cache.path)
    arrays = {name: getattr(cs, name) for name in _ARRAYS}
    arrays.update(cs.extra)
    w.store(KIND, cs.layer, cs.method, arrays, {**cs.attrs, "layer": cs.layer,
                                                "method": cs.method})
    if sheets:
        w.store_blobs(KIND, cs.layer, cs.method, "sheets", sheets,
                      {"format": "png", "count": len(sheets),
                       "note": "one sheet per concept, then the overview"})


def load_concepts(cache, layer: str | None = None, method: str = "dictionary") -> ConceptSet:
    """The concepts stored in ``cache`` for ``layer`` (default: the cache's first layer) and
    ``method``; :class:`~vfsearch.errors.NotFound` when there are none."""
    from ..errors import BadParameter

    if method not in METHODS:
        raise BadParameter(f"unknown concept method {method!r}; use {' or '.join(METHODS)}",
                           param="method")
    layer = layer or cache.default_layer
    cache.layer_info(layer)
    st = cache.stored(KIND, layer, method)
    if st is None:
        raise NotFound(f"no {method} concepts are stored for layer {layer!r} of {cache.path}; "
                       "compute them first (vfsearch.concepts.discover)", param="concept")
    arrays = {name: st.array(name) for name in _ARRAYS}
    extra = {}
    for name in st.group.array_keys() if hasattr(st.group, "array_keys") else []:
        if name not in _ARRAYS and name != "sheets":
            extra[name] = st.array(name)
    attrs = {k: v for k, v in st.attrs.items() if k not in ("complete", "layer", "method")}
    attrs["stale"] = attrs.get("fingerprint") != cache.fingerprint()
    cs = ConceptSet(layer, method, **arrays, attrs=attrs, extra=extra)
    cs._stored = st  # noqa: SLF001 - the sheets are read on demand
    return cs


def sheet_png(cs: ConceptSet, concept: int | None = None) -> bytes:
    """A stored contact sheet (PNG): of ``concept``, or the overview when None."""
    st = getattr(cs, "_stored", None)
    if st is None or not st.has("sheets"):
        raise NotFound("these concepts have no stored contact sheets", param="concept")
    j = len(cs) if concept is None else cs.check_id(concept)
    return st.blob("sheets", j)


# -- contact sheets ---------------------------------------------------------------------------


def _thumb(cache, i: int):
    from PIL import Image

    data = cache.thumbnail(i)
    if not data:
        return None
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _tile(cache, i: int, box, tile: int):
    """The patch with some context around it, from the thumbnail, its box outlined."""
    from PIL import Image, ImageDraw

    th = _thumb(cache, i)
    out = Image.new("RGB", (tile, tile), (40, 40, 40))
    if th is None:
        return out
    w, h = cache.image_size(i)
    sx, sy = th.size[0] / max(1, w), th.size[1] / max(1, h)
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    side = max(x1 - x0, y1 - y0) * 2.0  # twice the patch: the patch and what surrounds it
    side = max(side, 12.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx0, cy0 = cx - side / 2, cy - side / 2
    crop = th.crop((int(round(cx0)), int(round(cy0)), int(round(cx0 + side)),
                    int(round(cy0 + side)))).resize((tile, tile), Image.Resampling.BICUBIC)
    s = tile / side
    d = ImageDraw.Draw(crop)
    d.rectangle([(x0 - cx0) * s, (y0 - cy0) * s, (x1 - cx0) * s - 1, (y1 - cy0) * s - 1],
                outline=(255, 220, 0), width=2)
    out.paste(crop)
    return out


def concept_sheet(cache, cs: ConceptSet, concept: int, n: int = 16, tile: int = 80,
                  cols: int = 8):
    """One concept's first ``n`` patches as a PIL image (rows of ``cols`` tiles)."""
    from PIL import Image, ImageDraw

    sl = cs.patch_rows(concept)
    rows_idx = list(range(sl.start, min(sl.stop, sl.start + n)))
    cols = max(1, min(cols, len(rows_idx) or 1))
    nrows = max(1, -(-len(rows_idx) // cols))
    head = 16
    img = Image.new("RGB", (cols * (tile + 2) + 2, nrows * (tile + 2) + 2 + head), (20, 20, 20))
    ImageDraw.Draw(img).text((4, 2), f"concept {concept}: {int(cs.sizes[concept])} cells",
                             fill=(230, 230, 230))
    for j, r in enumerate(rows_idx):
        t = _tile(cache, int(cs.patch_image[r]), cs.patch_box[r], tile)
        img.paste(t, (2 + (j % cols) * (tile + 2), head + 2 + (j // cols) * (tile + 2)))
    return img


def overview_sheet(cache, cs: ConceptSet, n: int = 8, tile: int = 56):
    """Every concept as one row of its first ``n`` patches."""
    from PIL import Image, ImageDraw

    lab = 44
    img = Image.new("RGB", (lab + n * (tile + 2) + 2, len(cs) * (tile + 2) + 2), (20, 20, 20))
    d = ImageDraw.Draw(img)
    for k in range(len(cs)):
        y = 2 + k * (tile + 2)
        d.text((4, y + tile // 2 - 6), f"{k}", fill=(230, 230, 230))
        sl = cs.patch_rows(k)
        for j, r in enumerate(range(sl.start, min(sl.stop, sl.start + n))):
            img.paste(_tile(cache, int(cs.patch_image[r]), cs.patch_box[r], tile),
                      (lab + j * (tile + 2), y))
    return img


def make_sheets(cache, cs: ConceptSet, n: int = 16) -> list[bytes]:
    """PNG bytes: one sheet per concept, then the overview (the order they are stored in)."""
    out = []
    for im in [*(concept_sheet(cache, cs, k, n) for k in range(len(cs))),
               overview_sheet(cache, cs)]:
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        out.append(buf.getvalue())
    return out
