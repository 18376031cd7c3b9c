"""Queries: an image (dataset id or external file) plus a region (mask, box or whole image),
carried onto the cache's feature grid."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..cache import FeatureCache
from ..errors import BadQuery, CacheMismatch
from ..geometry import Frame, Geometry, cell_box
from ..images import load_image
from ..masks import box_mask, load_mask

__all__ = ["MODES", "Query", "box_mask", "load_mask", "make_query", "query_from_features",
           "register_query_model"]


MODES = ("region", "whole", "global")


@dataclass
class Query:
    """A query on a cache's feature grid.

    ``mode``: "region" (a mask or box, matched at every offset), "whole" (the paper's all-ones
    mask: cell (i, j) against cell (i, j)) or "global" (cosine of mean-pooled features: similar
    images, wherever their content sits).
    """

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
    mode: str = "region"
    pooled: np.ndarray | None = None  # (C,) mean-pooled features (global mode)
    notes: tuple[str, ...] = ()  # things the user should know (e.g. a region clipped by the crop)

    @property
    def grid(self) -> tuple[int, int]:
        return self.weights.shape

    @property
    def frame(self) -> Frame:
        """The query image's geometry with this layer's grid."""
        return Frame.of(self.geometry, self.grid)

    @property
    def cell_box(self) -> tuple[int, int, int, int]:
        """(row0, col0, h, w) of the mask's bounding box on the grid."""
        return cell_box(self.weights)

    @property
    def n_cells(self) -> int:
        return int((self.weights > 0).sum())

    def with_region(self, mask: np.ndarray | None = None) -> Query:
        """This query image restricted to ``mask`` (image resolution, 0–1); ``None`` = the
        whole of what the model sees (an all-ones grid)."""
        if mask is None:
            return dataclasses.replace(self, weights=self.frame.valid_cells(),
                                       box=self.geometry.crop, mask=None, mode="whole")
        weights = self.frame.mask_weights(mask)
        ys, xs = np.nonzero(mask > 0)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        notes = []
        outside = _outside_view(mask, self.geometry.crop)
        if outside > 0.01:
            notes.append(f"{outside:.0%} of the region lies outside what the model sees of the "
                         "image (its centre crop) and is ignored; index with mode 'squash' to "
                         "see the whole image")
        return dataclasses.replace(self, weights=weights, box=box, mask=mask, mode="region",
                                   notes=tuple(notes))

    def as_global(self, pooled: np.ndarray | None = None) -> Query:
        """This query image as a global query (its mean-pooled features)."""
        from ..cache.layout import pooled as mean_pool

        view = self.frame.valid_cells()
        p = (mean_pool(self.features[None], [view.sum()])[0] if pooled is None
             else np.asarray(pooled, np.float32))
        return dataclasses.replace(self, weights=view, box=self.geometry.crop, mask=None,
                                   mode="global", pooled=p)


_EXTRA_MODELS: dict[tuple[str, str], object] = {}


def register_query_model(model) -> None:
    """Make a :class:`~vfsearch.models.LoadedModel` (e.g. from ``from_module``) available for
    external query images on caches built with it (matched by name and weights hash)."""
    _EXTRA_MODELS[(model.name, model.weights_hash)] = model


@lru_cache(maxsize=4)
def _model_for(name: str, weights: str | None = None):
    from ..models import load_model

    return load_model(name, weights)


def _registered() -> list[str]:
    from ..models import available_models

    return available_models()


def model_for_cache(cache: FeatureCache):
    """The model a cache was built with (a registered name, a registered ``nn.Module``, or a
    torchvision/timm model whose weights file is still where the cache recorded it)."""
    lm = _EXTRA_MODELS.get((cache.model, cache.weights_hash))
    if lm is None:
        wp = cache.weights_path
        if cache.model.startswith(("torchvision:", "timm:")) and not (wp and Path(wp).exists()):
            raise BadQuery(f"this needs the weights of {cache.model} (recorded at {wp}, not "
                           "found); query with a dataset id instead", param="image")
        if (cache.model not in _registered()
                and not cache.model.startswith(("torchvision:", "timm:"))):
            raise BadQuery(f"external query images on a {cache.model!r} cache need the model: "
                           "call vfsearch.engine.register_query_model(model) first",
                           param="image")
        lm = _model_for(cache.model, wp)
    if lm.weights_hash != cache.weights_hash:
        raise CacheMismatch(f"installed {cache.model} weights ({lm.weights_hash}) differ from the "
                            f"cache's ({cache.weights_hash})")
    return lm


def query_features(cache: FeatureCache, img: Image.Image, layer: str) -> np.ndarray:
    """Run an external image through the cache's model, layer and transform."""
    from ..extract import extract_image

    return extract_image(img, model_for_cache(cache), layer, cache.transform)


def query_from_features(cache: FeatureCache, features: np.ndarray, size: tuple[int, int],
                        layer: str, *, source_id: int | None = None, label: str = "") -> Query:
    """The whole-image query of an image whose ``features`` (H, W, C) on ``layer`` are known;
    restrict it to a region with :meth:`Query.with_region`."""
    size = (int(size[0]), int(size[1]))
    frame = cache.transform.frame(*size, cache.grid(layer))
    grid = frame.grid  # the cache's grid, in this image's orientation
    if tuple(features.shape[:2]) != grid:
        raise CacheMismatch(f"query features {features.shape} do not match the cache grid {grid}")
    view = frame.valid_cells()  # all ones but on a padded (full-mode) grid
    features = np.asarray(features, dtype=np.float32)
    if frame.padded:
        features = features * view[..., None]  # padding is zero, as the cache stores it
    geom = frame.geometry
    return Query(features=np.ascontiguousarray(features, dtype=np.float32),
                 weights=view, image_size=size, geometry=geom,
                 box=geom.crop, layer=layer, model=cache.model, weights_hash=cache.weights_hash,
                 source_id=source_id, mask=None, label=label, mode="whole")


def make_query(
    cache: FeatureCache,
    image,
    *,
    mask=None,
    box=None,
    whole: bool = False,
    mode: str | None = None,
    layer: str | None = None,
) -> Query:
    """Build a :class:`Query` for ``cache``.

    ``image``: a dataset id (int), an image path, a PIL image, or image bytes. ``mode``:
    "region" — give exactly one of ``mask`` (array/PIL/file at the image's resolution, soft
    values 0–1) or ``box`` (x0, y0, x1, y1 in image pixels); "whole" (``whole=True`` is an alias)
    — the paper's rigid all-ones mask; "global" — similar images by pooled features (no mask).
    """
    layer = layer or cache.default_layer
    cache.layer_info(layer)
    mode = _mode(mode, whole, mask, box)
    if mode == "global" and not cache.has(layer, "pooled"):
        from ..cache import versions

        versions.require(cache, layer, "pooled")
    source_id = None
    label = ""
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        source_id = cache._check_id(int(image))
        if not cache.valid[source_id]:
            raise BadQuery(f"image {source_id} was not indexed ({cache.status[source_id]})",
                           param="image")
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
            raise BadQuery(f"unsupported query image {type(image).__name__}", param="image")
        feats = query_features(cache, img, layer)
        size = img.size
    base = query_from_features(cache, feats, size, layer, source_id=source_id, label=label)
    if mode == "global":
        stored = cache.pooled(layer, [source_id])[0] if source_id is not None else None
        return base.as_global(stored)
    if mode == "whole":
        return dataclasses.replace(base, mask=np.ones((base.image_size[1], base.image_size[0]),
                                                      np.float32), mode="whole")
    m = box_mask(box, base.image_size) if box is not None else load_mask(mask, base.image_size)
    return base.with_region(m)


def _outside_view(mask: np.ndarray, crop) -> float:
    """The fraction of a mask's weight outside the model's view ``crop`` (image pixels)."""
    total = float(mask.sum())
    if total <= 0:
        return 0.0
    h, w = mask.shape
    x0, y0 = int(np.floor(crop[0])), int(np.floor(crop[1]))
    x1, y1 = int(np.ceil(crop[2])), int(np.ceil(crop[3]))
    inside = float(mask[max(0, y0):min(h, y1), max(0, x0):min(w, x1)].sum())
    return max(0.0, 1.0 - inside / total)


def _mode(mode: str | None, whole: bool, mask, box) -> str:
    """The query mode from the arguments, refusing contradictions."""
    if mode is not None and mode not in MODES:
        raise BadQuery(f"mode must be one of {', '.join(MODES)}, got {mode!r}", param="mode")
    if whole:
        if mode not in (None, "whole"):
            raise BadQuery(f"whole=True is the 'whole' mode; it cannot be combined with mode "
                           f"{mode!r}", param="whole")
        mode = "whole"
    regions = [name for name, v in (("mask", mask), ("box", box)) if v is not None]
    if mode in ("whole", "global"):
        if regions:
            raise BadQuery(f"a {mode} query takes the whole image: give no {regions[0]}",
                           param=regions[0])
        return mode
    if len(regions) != 1:
        raise BadQuery("give exactly one region: a mask, a box, the whole image or the global "
                       "mode", param="mask" if not regions else regions[1])
    return "region"


def check_query(cache: FeatureCache, q: Query) -> None:
    if q.model != cache.model or q.weights_hash != cache.weights_hash:
        raise BadQuery(f"query was made with {q.model} ({q.weights_hash}); this cache uses "
                       f"{cache.model} ({cache.weights_hash})")
    if q.layer not in cache.layers:
        raise BadQuery(f"query layer {q.layer!r} is not in this cache ({', '.join(cache.layers)})")
    grids = {cache.grid(q.layer)}
    if cache.padded:  # a portrait query image's grid is the layer's, transposed
        grids.add(cache.grid(q.layer)[::-1])
    if (tuple(q.weights.shape) not in grids
            or q.features.shape[-1] != cache.layer_info(q.layer)["channels"]):
        raise BadQuery("query features do not match the cache's layer shape")
    if q.mode not in MODES:
        raise BadQuery(f"query mode must be one of {', '.join(MODES)}", param="mode")
    if q.mode == "global" and q.pooled is None:
        raise BadQuery("a global query needs its pooled features (use make_query(mode='global') "
                       "or Query.as_global())", param="mode")

