"""Queries: an image (dataset id or external file) plus a region (mask, box or whole image),
carried onto the cache's feature grid."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..cache import FeatureCache
from ..errors import BadMask, BadQuery, CacheMismatch
from ..images import load_image
from ..transforms import Geometry, mask_to_grid

__all__ = ["Query", "make_query", "load_mask", "box_mask"]


@dataclass
class Query:
    """A region query, already on a cache's feature grid."""

    features: np.ndarray  # (H, W, C) float32, the query image's feature map
    weights: np.ndarray  # (H, W) float32, mask weights on the grid (area average)
    image_size: tuple[int, int]  # query image (width, height), original pixels
    geometry: Geometry  # query image → model input
    box: tuple[float, float, float, float]  # bounding box of the mask, query image pixels
    layer: str
    model: str
    weights_hash: str
    source_id: int | None = None  # dataset id when the query image is in the cache
    mask: np.ndarray | None = None  # image-resolution mask (for drawing), float32 0–1
    label: str = ""

    @property
    def grid(self) -> tuple[int, int]:
        return self.weights.shape

    @property
    def cell_box(self) -> tuple[int, int, int, int]:
        """(row0, col0, h, w) of the mask's bounding box on the grid."""
        rows, cols = np.nonzero(self.weights > 0)
        return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)

    @property
    def n_cells(self) -> int:
        return int((self.weights > 0).sum())


def load_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask from an array, a PIL image or an image file → float32 (h, w) in [0, 1].

    Image masks use their alpha channel when they have one, otherwise their gray value / 255.
    The mask must have the query image's size (width, height).
    """
    if isinstance(mask, (str, os.PathLike)):
        p = Path(mask)
        if not p.exists():
            raise BadMask(f"mask file not found: {p}")
        try:
            with Image.open(p) as im:
                im.load()
                mask = im.copy()
        except Exception as e:  # noqa: BLE001
            raise BadMask(f"cannot read mask {p}: {e}") from None
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA"):
            a = np.asarray(mask.getchannel("A"), dtype=np.float32) / 255.0
        elif mask.mode == "1":
            a = np.asarray(mask, dtype=np.float32)
        elif mask.mode in ("I;16", "I"):
            a = np.asarray(mask, dtype=np.float32)
            a = a / max(1.0, float(a.max()))
        else:
            a = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    else:
        a = np.asarray(mask)
        if a.dtype == bool:
            a = a.astype(np.float32)
        elif a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        else:
            a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., -1] if a.shape[-1] == 4 else a.mean(axis=-1)
    if a.ndim != 2:
        raise BadMask(f"mask must be 2-D (height × width), got shape {a.shape}")
    w, h = size
    if a.shape != (h, w):
        raise BadMask(f"mask size {a.shape[1]}×{a.shape[0]} ≠ image size {w}×{h}")
    if not np.isfinite(a).all():
        raise BadMask("mask contains NaN or infinite values")
    if a.min() < 0 or a.max() > 1:
        raise BadMask(f"mask values must lie in [0, 1] (got {a.min():g}…{a.max():g})")
    if not (a > 0).any():
        raise BadMask("mask is empty: brush or box a region first")
    return a


def box_mask(box, size: tuple[int, int]) -> np.ndarray:
    """A rectangular mask from (x0, y0, x1, y1) in image pixels."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadMask(f"a box is four numbers x0,y0,x1,y1; got {box!r}") from None
    w, h = size
    if not (x1 > x0 and y1 > y0):
        raise BadMask(f"box {box} is empty (need x1 > x0 and y1 > y0)")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise BadMask(f"box {box} lies outside the {w}×{h} image")
    m = np.zeros((h, w), np.float32)
    m[max(0, int(np.floor(y0))):min(h, int(np.ceil(y1))), max(0, int(np.floor(x0))):min(w, int(np.ceil(x1)))] = 1
    return m


_EXTRA_MODELS: dict[tuple[str, str], object] = {}


def register_query_model(model) -> None:
    """Make a :class:`~vfsearch.models.LoadedModel` (e.g. from ``from_module``) available for
    external query images on caches built with it (matched by name and weights hash)."""
    _EXTRA_MODELS[(model.name, model.weights_hash)] = model


@lru_cache(maxsize=4)
def _model_for(name: str, weights: str | None = None):
    from ..models import load_model

    with contextlib.redirect_stdout(io.StringIO()):
        return load_model(name, weights)


def _registered() -> list[str]:
    from ..models import available_models

    return available_models()


def query_features(cache: FeatureCache, img: Image.Image, layer: str) -> np.ndarray:
    """Run an external image through the cache's model, layer and transform."""
    from ..extract import extract_image

    lm = _EXTRA_MODELS.get((cache.model, cache.weights_hash))
    if lm is None:
        wp = cache.meta.get("weights_path")
        if cache.model.startswith(("torchvision:", "timm:")) and not (wp and Path(wp).exists()):
            raise BadQuery(f"external query images need the weights of {cache.model} "
                           f"(recorded at {wp}, not found); query with a dataset id instead")
        if cache.model not in _registered() and not cache.model.startswith(("torchvision:", "timm:")):
            raise BadQuery(f"external query images on a {cache.model!r} cache need the model: call "
                           "vfsearch.engine.register_query_model(model) first")
        lm = _model_for(cache.model, wp)
    if lm.weights_hash != cache.weights_hash:
        raise CacheMismatch(f"installed {cache.model} weights ({lm.weights_hash}) differ from the "
                            f"cache's ({cache.weights_hash})")
    return extract_image(img, lm, layer, cache.transform)


def make_query(
    cache: FeatureCache,
    image,
    *,
    mask=None,
    box=None,
    whole: bool = False,
    layer: str | None = None,
) -> Query:
    """Build a :class:`Query` for ``cache``.

    ``image``: a dataset id (int), an image path, a PIL image, or image bytes. Give exactly one of
    ``mask`` (array/PIL/file at the image's resolution, soft values 0–1), ``box`` (x0, y0, x1, y1
    in image pixels) or ``whole=True``.
    """
    layer = layer or cache.default_layer
    info = cache.layer_info(layer)
    n_region = sum(x is not None and x is not False for x in (mask, box, whole or None))
    if n_region != 1:
        raise BadQuery("give exactly one of a mask, a box or whole=True")
    source_id = None
    label = ""
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        source_id = cache._check_id(int(image))
        if not cache.valid[source_id]:
            raise BadQuery(f"image {source_id} was not indexed ({cache.status[source_id]})")
        feats = cache.features(source_id, layer)
        size = cache.image_size(source_id)
        label = str(cache.labels[source_id])
    else:
        if isinstance(image, Image.Image):
            img = image.convert("RGB")
        elif isinstance(image, (str, os.PathLike, bytes)):
            img = load_image(image)
        elif isinstance(image, np.ndarray):
            img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
        else:
            raise BadQuery(f"unsupported query image {type(image).__name__}")
        feats = query_features(cache, img, layer)
        size = img.size
    if tuple(feats.shape[:2]) != tuple(info["grid"]):
        raise CacheMismatch(f"query features {feats.shape} do not match the cache grid {info['grid']}")
    if whole:
        m = np.ones((size[1], size[0]), np.float32)
    elif box is not None:
        m = box_mask(box, size)
    else:
        m = load_mask(mask, size)
    geom = cache.transform.geometry(*size)
    weights = mask_to_grid(m, geom, tuple(info["grid"]))
    ys, xs = np.nonzero(m > 0)
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    if whole:
        # the whole query = what the model sees of the image
        g = geom
        x0, y0 = g.to_image(0, 0)
        x1, y1 = g.to_image(g.size, g.size)
        bbox = (max(0.0, x0), max(0.0, y0), min(float(size[0]), x1), min(float(size[1]), y1))
    return Query(
        features=np.ascontiguousarray(feats, dtype=np.float32),
        weights=weights,
        image_size=(int(size[0]), int(size[1])),
        geometry=geom,
        box=bbox,
        layer=layer,
        model=cache.model,
        weights_hash=cache.weights_hash,
        source_id=source_id,
        mask=m,
        label=label,
    )


def check_query(cache: FeatureCache, q: Query) -> None:
    if q.model != cache.model or q.weights_hash != cache.weights_hash:
        raise BadQuery(f"query was made with {q.model} ({q.weights_hash}); this cache uses "
                       f"{cache.model} ({cache.weights_hash})")
    if q.layer not in cache.layers:
        raise BadQuery(f"query layer {q.layer!r} is not in this cache ({', '.join(cache.layers)})")
    if tuple(q.weights.shape) != cache.grid(q.layer) or q.features.shape[-1] != cache.layer_info(q.layer)["channels"]:
        raise BadQuery("query features do not match the cache's layer shape")

