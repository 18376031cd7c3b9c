"""Concepts as queries, and which concepts a match shares.

A concept's direction becomes an ordinary region :class:`~vfsearch.engine.Query`: a one-cell
mask on the layer's grid holding the direction, on a virtual query image that *is* the model
input (identity geometry). The engine then finds the best-matching cell of every image (the
cosine of one cell with the direction, at every offset), with the score curve
(``return_scores``) and each match's box from :func:`vfsearch.geometry.carry_box` — which, for
this query, is exactly the matched cell's box in the result image.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadQuery
from .store import ConceptSet, load_concepts

__all__ = ["concept_query", "concepts_of_cells", "concepts_of_features", "shared_concepts"]


def concept_query(cache, concept_id: int, *, layer: str | None = None,
                  method: str = "dictionary", concepts: ConceptSet | None = None):
    """The stored concept ``concept_id`` of ``layer`` / ``method`` as a one-cell region query
    (use it with :func:`vfsearch.search` / :func:`vfsearch.search_many`)."""
    from ..engine import Query
    from ..geometry import Frame, Geometry

    cs = concepts if concepts is not None else load_concepts(cache, layer, method)
    k = cs.check_id(concept_id)
    layer = cs.layer
    H, W = cache.grid(layer)
    C = int(cache.layer_info(layer)["channels"])
    d = np.asarray(cs.directions[k], np.float32)
    if d.shape != (C,):
        raise BadQuery(f"concept {k} has {d.shape[0]} channels; layer {layer!r} has {C}")
    feats = np.zeros((H, W, C), np.float32)
    feats[0, 0] = d
    weights = np.zeros((H, W), np.float32)
    weights[0, 0] = 1.0
    # the virtual query image is the model input itself: pixels = input pixels
    iw = ih = int(cache.transform.size)
    geom = Geometry(1.0, 1.0, 0.0, 0.0, (iw, ih), (iw, ih), (iw, ih))
    box = Frame.of(geom, (H, W)).cell_image_box(0, 0)
    return Query(features=feats, weights=weights, image_size=(iw, ih), geometry=geom, box=box,
                 layer=layer, model=cache.model, weights_hash=cache.weights_hash,
                 source_id=None, mask=None, label=f"{cs.method} concept {k}", mode="region")


def concepts_of_features(cs: ConceptSet, feats: np.ndarray, cells) -> list[dict]:
    """For each cell (row, col) of a feature map (H, W, C): its concept (the direction with the
    largest cosine — the assignment rule of discovery) and that cosine, plus the runner-up."""
    out = []
    D = np.asarray(cs.directions, np.float64)
    for r, c in cells:
        v = np.asarray(feats[int(r), int(c)], np.float64)
        n = np.linalg.norm(v)
        if n == 0 or not len(D):
            out.append({"cell": [int(r), int(c)], "concept": None, "score": 0.0})
            continue
        cos = D @ v / n
        o = np.argsort(-cos)
        d = {"cell": [int(r), int(c)], "concept": int(o[0]), "score": float(cos[o[0]])}
        if len(o) > 1:
            d["second"] = {"concept": int(o[1]), "score": float(cos[o[1]])}
        out.append(d)
    return out


def concepts_of_cells(cache, layer: str | None, image_id: int, cells=None, *,
                      method: str = "dictionary", concepts: ConceptSet | None = None) -> list[dict]:
    """The concepts of cells (row, col) of dataset image ``image_id`` (default: every cell),
    from its exact cached features: see :func:`concepts_of_features`."""
    cs = concepts if concepts is not None else load_concepts(cache, layer, method)
    i = cache.check_id(image_id)
    feats = cache.features(i, cs.layer)
    H, W = feats.shape[:2]
    if cells is None:
        cells = [(r, c) for r in range(H) for c in range(W)]
    for r, c in cells:
        if not (0 <= int(r) < H and 0 <= int(c) < W):
            raise BadQuery(f"cell ({r}, {c}) is outside the {H}×{W} grid", param="cells")
    return concepts_of_features(cs, feats, cells)


def shared_concepts(cache, query, match, *, method: str = "dictionary",
                    concepts: ConceptSet | None = None, min_score: float = 0.0) -> dict:
    """Which concepts a match shares with its query (the explain view): the concepts of the
    query's cells and of the cells they matched in the result, and those found on both sides
    (with how many cells carry them on each side). ``match`` is a
    :class:`~vfsearch.engine.Match` of a region or whole query on the concepts' layer."""
    cs = concepts if concepts is not None else load_concepts(cache, query.layer, method)
    if cs.layer != query.layer:
        raise BadQuery(f"the concepts are of layer {cs.layer!r}, the query of {query.layer!r}",
                       param="layer")
    if query.mode == "global":
        raise BadQuery("a global query matches whole images, not cells: use a region or whole "
                       "query", param="mode")
    ys, xs = np.nonzero(query.weights > 0)
    r0, c0 = ys.min(), xs.min()
    a, b = match.offset
    qc = concepts_of_features(cs, query.features, list(zip(ys.tolist(), xs.tolist(), strict=True)))
    rfeat = cache.features(match.id, query.layer)
    rc = concepts_of_features(cs, rfeat, [(int(y - r0 + a), int(x - c0 + b))
                                          for y, x in zip(ys, xs, strict=True)])

    def count(side):
        d: dict[int, int] = {}
        for e in side:
            if e["concept"] is not None and e["score"] >= min_score:
                d[e["concept"]] = d.get(e["concept"], 0) + 1
        return d

    cq, cr = count(qc), count(rc)
    shared = sorted(set(cq) & set(cr), key=lambda k: -(cq[k] + cr[k]))
    pairs = [{"query_cell": q["cell"], "result_cell": r["cell"], "query_concept": q["concept"],
              "result_concept": r["concept"], "same": q["concept"] == r["concept"]}
             for q, r in zip(qc, rc, strict=True)]
    return {"layer": cs.layer, "method": cs.method, "result_id": int(match.id),
            "shared": [{"concept": int(k), "query_cells": cq[k], "result_cells": cr[k],
                        "size": int(cs.sizes[k])} for k in shared],
            "cells": pairs,
            "same_cells": int(sum(p["same"] for p in pairs))}
