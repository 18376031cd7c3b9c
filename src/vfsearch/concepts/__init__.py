"""Concepts: recurring visual patterns of a layer, discovered from the cached features, browsable
(each with its best patches and a contact sheet) and searchable (a concept is a direction in the
layer's feature space: a one-cell query).

Two methods:

* ``dictionary`` (:func:`~.dictionary.discover_dictionary`): directions learned from every cached
  cell — spherical k-means streamed over the cache (or online NMF on non-negative layers); a
  cell belongs to the direction it is most similar to (cosine); a concept's patches are the
  cells that express it most, at most a few per image.
* ``saliency`` (:func:`~.saliency.discover_saliency`): Plummer et al.'s attribute discovery —
  nearest neighbours of sampled queries, a saliency map over the query for each, the neighbours
  whose peaks agree, crops around their own peaks, embedded from the cached cells and clustered.

:func:`discover` runs either, :func:`save_concepts` / :func:`load_concepts` store and read the
result in the cache (kind ``"concepts"``, name = the method), :func:`concept_query` makes a
concept a :class:`~vfsearch.engine.Query`, :func:`concepts_of_cells` and
:func:`shared_concepts` say which concepts cells (or a match) carry. :func:`write_concepts`
writes ``concepts.json`` and the PNG contact sheets of a result into a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadParameter, OutputError
from .query import concept_query, concepts_of_cells, concepts_of_features, shared_concepts
from .store import (
    KIND,
    METHODS,
    ConceptSet,
    load_concepts,
    make_sheets,
    save_concepts,
    sheet_png,
)

__all__ = [
    "KIND",
    "METHODS",
    "ConceptSet",
    "concept_query",
    "concepts_of_cells",
    "concepts_of_features",
    "discover",
    "load_concepts",
    "make_sheets",
    "patch_boxes",
    "save_concepts",
    "shared_concepts",
    "sheet_png",
    "write_concepts",
]


def patch_boxes(cache, layer: str, images: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(P, 4) float32 boxes in original-image pixels of patches given as (row0, col0, h, w) cells
    of ``layer``'s grid on images ``images``."""
    grid = cache.grid(layer)
    tf = cache.transform
    out = np.zeros((len(images), 4), np.float32)
    for j, (i, cl) in enumerate(zip(images, cells, strict=True)):
        frame = tf.frame(*cache.image_size(int(i)), grid)
        out[j] = frame.cell_image_box(int(cl[0]), int(cl[1]), int(cl[2]), int(cl[3]))
    return out


def discover(cache, layer: str | None = None, method: str = "dictionary", *,
             n_concepts: int = 32, n_queries: int = 200, store: bool = True, sheets: bool = True,
             log=None, **kw) -> ConceptSet:
    """Discover ``n_concepts`` concepts of ``layer`` with ``method`` ("dictionary" or
    "saliency"; ``n_queries`` is the saliency method's number of queries; other keywords go to
    :func:`~.dictionary.discover_dictionary` or :func:`~.saliency.discover_saliency`). With
    ``store``, the result (and, with ``sheets``, its contact sheets) is stored in the cache."""
    if method not in METHODS:
        raise BadParameter(f"unknown concept method {method!r}; use {' or '.join(METHODS)}",
                           param="method")
    if cache.padded:
        raise BadParameter("concept discovery reads the layer's cells as stored and does not "
                           "support caches indexed in mode 'full' (padded, turned grids) yet; "
                           "index the images in mode 'crop' or 'squash' for concepts",
                           param="cache")
    if method == "dictionary":
        from .dictionary import discover_dictionary

        cs = discover_dictionary(cache, layer, n_concepts=n_concepts, log=log, **kw)
    else:
        from .saliency import discover_saliency

        cs = discover_saliency(cache, layer, n_concepts=n_concepts, n_queries=n_queries, log=log,
                               **kw)
    if store:
        save_concepts(cache, cs, make_sheets(cache, cs) if sheets else None)
        cs._stored = cache.stored(KIND, cs.layer, cs.method)  # noqa: SLF001
    return cs


def write_concepts(cache, cs: ConceptSet, out, sheets: list[bytes] | None = None) -> dict:
    """Write ``out/concepts.json`` and the PNG contact sheets (``concept_NNN.png`` and
    ``concepts.png``, the overview). Returns the paths written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        jpath = out / "concepts.json"
        jpath.write_text(json.dumps(cs.to_dict(cache), indent=1))
        pngs = sheets if sheets is not None else make_sheets(cache, cs)
        paths = []
        for k, png in enumerate(pngs):
            p = out / (f"concept_{k:03d}.png" if k < len(cs) else "concepts.png")
            p.write_bytes(png)
            paths.append(p)
    except OSError as e:
        raise OutputError(f"cannot write the concepts to {out}: {e.strerror or e}",
                          param="out") from None
    return {"json": jpath, "sheets": paths}
