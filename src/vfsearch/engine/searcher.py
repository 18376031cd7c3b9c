"""The search engine: scan every image at every offset, keep the top k, refine 8-bit scores
exactly, and describe each match (score, offset, box in original pixels)."""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import Iterable, Sequence, TypedDict, Unpack

import numpy as np

from ..cache import FeatureCache, LayerData
from ..errors import BadQuery
from ..geometry import carry_box, offset_rc
from . import kernel
from .orient import OrientedQuery, scan_block
from .query import Query, check_query, make_query

__all__ = ["Match", "SearchResult", "exact_scores", "search", "search_many"]


@dataclass
class Match:
    id: int
    score: float
    rank: int  # 1 for the best match
    path: str
    label: str
    offset: tuple[int, int]  # (row, col) of the query box's top-left cell in the result's grid
    box: tuple[float, float, float, float]  # matched box in the result image's original pixels
    image_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "id": self.id, "rank": self.rank, "score": self.score, "path": self.path,
            "label": self.label, "offset": list(self.offset),
            "box": [round(v, 2) for v in self.box], "image_size": list(self.image_size),
        }


@dataclass
class SearchResult:
    """Top-k matches of one query (plus, on request, every image's score)."""

    query: Query
    cache: FeatureCache
    matches: list[Match]
    scores: np.ndarray | None = None  # (N,) float32, -inf for excluded/unindexed rows
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.matches)

    def __iter__(self):
        return iter(self.matches)

    def __getitem__(self, i) -> Match:
        return self.matches[i]

    @property
    def ids(self) -> np.ndarray:
        return np.array([m.id for m in self.matches], dtype=np.int64)

    @property
    def top_scores(self) -> np.ndarray:
        return np.array([m.score for m in self.matches], dtype=np.float64)

    def cell_weights(self) -> np.ndarray:
        """The query's mask weights on the grid, cropped to its box (h, w): what each match
        covers."""
        r0, c0, h, w = self.query.cell_box
        return self.query.weights[r0:r0 + h, c0:c0 + w]

    def score_map(self, i: int) -> np.ndarray:
        """Exact score at every offset of image ``i`` (rows × cols of offsets) for heat overlays;
        for a global query, each cell's share of the pooled cosine (H × W, summing to it)."""
        if self.query.mode == "global":
            from .global_search import cell_shares

            return cell_shares(self.query.pooled, self.cache.features(i, self.query.layer))[0]
        feats = self.cache.features(i, self.query.layer)[None]  # in the image's orientation
        _, _, maps = exact_scores(feats, self.query.weights, self.query.features)
        return maps[0]

    def sorted_scores(self) -> np.ndarray:
        """Scores of every indexed image, best first (the distribution curve)."""
        if self.scores is None:
            raise BadQuery("search was run without return_scores=True")
        s = self.scores[np.isfinite(self.scores)]
        return -np.sort(-s)

    def rows(self) -> list[dict]:
        """The results as table rows: rank, id, path, label, metadata columns, score, the
        matched box (x0, y0, x1, y1, original pixels), the offset (row, col), image size."""
        cols = self.cache.meta_columns
        meta = {c: self.cache.column(c) for c in cols}
        out = []
        for m in self.matches:
            r = {"rank": m.rank, "id": m.id, "path": m.path, "label": m.label}
            r.update({c: str(meta[c][m.id]) for c in cols})
            r.update({"score": m.score, "x0": m.box[0], "y0": m.box[1], "x1": m.box[2],
                      "y1": m.box[3], "row": m.offset[0], "col": m.offset[1],
                      "width": m.image_size[0], "height": m.image_size[1]})
            out.append(r)
        return out

    def to_pandas(self):
        """The results as a pandas DataFrame (the columns of :meth:`rows`; pandas is optional:
        ``pip install vfsearch[pandas]``)."""
        from .._tables import frame

        return frame(self.rows(), ints=("rank", "id", "row", "col", "width", "height"),
                     floats=("score", "x0", "y0", "x1", "y1"),
                     strings=("path", "label", *self.cache.meta_columns))

    def to_dict(self) -> dict:
        r0, c0, h, w = self.query.cell_box
        return {
            "model": self.cache.model, "layer": self.query.layer, "mode": self.query.mode,
            "query": {"id": self.query.source_id, "box": [round(v, 2) for v in self.query.box],
                      "cells": [r0, c0, h, w], "n_cells": self.query.n_cells},
            "matches": [m.to_dict() for m in self.matches],
            "stats": self.stats,
        }


# -- exact float64 scoring (refine step, heat maps) ------------------------------------------------


def exact_scores(feats: np.ndarray, weights: np.ndarray, qfeat: np.ndarray, block: int = 128):
    """Float64 region cosine of a few images: (best (m,), offset index (m,), maps (m, A, B))."""
    ys, xs = np.nonzero(weights > 0)
    r0, c0 = ys.min(), xs.min()
    h, w = ys.max() - r0 + 1, xs.max() - c0 + 1
    m, H, W, _ = feats.shape
    A, B = max(0, H - h + 1), max(0, W - w + 1)  # none where the box does not fit
    m2 = weights[ys, xs].astype(np.float64) ** 2
    q = qfeat[ys, xs].astype(np.float64)  # (K, C)
    qnorm = np.sqrt((m2 * (q * q).sum(1)).sum())
    Q = q * m2[:, None]
    maps = np.zeros((m, A, B))
    for s in range(0, m, block):
        f = feats[s:s + block].astype(np.float64)
        sq = np.einsum("nhwc,nhwc->nhw", f, f)
        num = np.zeros((len(f), A, B))
        den = np.zeros((len(f), A, B))
        for k, (y, x) in enumerate(zip(ys - r0, xs - c0, strict=True)):
            num += f[:, y:y + A, x:x + B, :] @ Q[k]
            den += m2[k] * sq[:, y:y + A, x:x + B]
        with np.errstate(invalid="ignore", divide="ignore"):
            sc = num / (qnorm * np.sqrt(den))
        sc[~np.isfinite(sc)] = 0.0
        maps[s:s + block] = sc
    flat = maps.reshape(m, -1)
    if not A * B:
        return np.full(m, -np.inf), np.zeros(m, np.int64), maps
    off = flat.argmax(axis=1) if m else np.zeros(0, np.int64)
    best = flat[np.arange(m), off] if m else np.zeros(0)
    return best, off, maps


# -- scanning --------------------------------------------------------------------------------


def _blocks(cache: FeatureCache, layer: str, memory: int | None) -> Iterable[LayerData]:
    """The whole layer in RAM, or (with a memory budget) streamed block by block with the next
    block read in a background thread while the current one is scanned."""
    if memory is None:
        yield cache.load(layer)
        return
    per_row = max(1, cache.feature_nbytes(layer) // max(1, len(cache)))
    rows = max(cache.chunk_len(), int(memory // (2 * per_row)))  # two blocks alive at once
    starts = list(range(0, len(cache), rows))
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(cache.read, layer, 0, min(len(cache), rows)) if starts else None
        for j, _s in enumerate(starts):
            data = fut.result()
            if j + 1 < len(starts):
                ns = starts[j + 1]
                fut = pool.submit(cache.read, layer, ns, min(len(cache), ns + rows))
            yield data


def _default_memory(cache: FeatureCache, layer: str) -> int | None:
    """None (load fully) when the layer fits comfortably in RAM, else a 1 GiB streaming budget."""
    return None if cache.fits_in_memory(layer) else 1 << 30


def _scan_all(cache, layer, pqs, *, memory, backend, threads, tighten_k: int | None = None):
    """Scan every block for every query (:class:`OrientedQuery`, or a plain prepared query).
    With ``tighten_k``, the images of each block that could still reach the top ``tighten_k``
    (given the best lower bounds seen so far) are re-scanned with the int16 query where the fast
    path rounded it to int8, so few need the exact refine."""
    n = len(cache)
    oqs = [OrientedQuery.of(p) for p in pqs]
    turned = cache.transposed(layer)
    turned = turned if turned.any() else None
    outs = [{k: np.empty(n, dt) for k, dt in (("score", np.float32), ("offset", np.int32),
                                                ("upper", np.float32), ("lower", np.float32))}
            for _ in oqs]
    best_lower = [np.full(0, -np.inf, np.float32) for _ in oqs]  # the top tighten_k lowers so far
    for data in _blocks(cache, layer, memory):
        sl = slice(data.start, data.start + data.n)
        for j, (oq, out) in enumerate(zip(oqs, outs, strict=True)):
            floor = -np.inf
            if tighten_k and len(best_lower[j]) >= tighten_k:
                floor = float(best_lower[j].min())
            r = oq.scan(data, None if turned is None else turned[sl],
                        lambda d, pq, ids, f=floor: scan_block(
                            d, pq, ids, backend=backend, threads=threads, tighten_k=tighten_k,
                            floor=f))
            for key in out:
                out[key][sl] = r[key]
            if tighten_k:
                lw = r["lower"][np.isfinite(r["lower"])]
                b = np.concatenate([best_lower[j], lw])
                best_lower[j] = (b if len(b) <= tighten_k
                                 else np.partition(b, -tighten_k)[-tighten_k:])
    return outs


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite values, best first, ties by the lower index (partial
    selection, no full sort)."""
    finite = np.isfinite(values)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.zeros(0, np.int64)
    v = np.where(finite, values, -np.inf)
    if k < len(v):  # argpartition picks arbitrary ones among ties: take the lowest ids
        kth = v[np.argpartition(-v, k - 1)[k - 1]]
        above = np.flatnonzero(v > kth)
        idx = np.concatenate([above, np.flatnonzero(v == kth)[:k - len(above)]])
    else:
        idx = np.arange(len(v))
    return idx[np.lexsort((idx, -v[idx]))]


def _finish(cache: FeatureCache, q: Query, out: dict, *, k: int, exclude_self: bool,
            return_scores: bool, dedup: float | None, exact: bool, backend: str = "auto",
            threads: int | None = None, oq: OrientedQuery | None = None) -> SearchResult:
    n = len(cache)
    turned = cache.transposed(q.layer)
    oq = oq or _oriented(cache, q, turned)
    valid = cache.valid & oq.fits_rows(turned)  # a region too large for an image: not ranked
    if exclude_self and q.source_id is not None:
        valid[q.source_id] = False
    score = out["score"].astype(np.float32)
    score[~valid] = -np.inf
    offset = out["offset"].copy()
    r0, c0, h, w = q.cell_box
    stats = {"refined": 0, "candidates": 0}
    want = _want(k, dedup)
    refine = exact and cache.dtype == "int8" and cache.meta.get("refine", "none") != "none"
    if refine and valid.any():
        lower = np.where(valid, out["lower"], -np.inf)
        upper = np.where(valid, out["upper"], -np.inf)
        kk = min(want, int(valid.sum()))
        L = lower[_topk(lower, kk)[-1]] if kk else -np.inf
        cand = np.flatnonzero(upper >= L)
        stats["candidates"] = int(len(cand))
        kb = backend if backend in kernel.BACKENDS else "auto"
        # exact copies are read and scored once: by their stored digests (format 4) of the
        # refine rows, together with their orientation
        groups = cache.distinct_rows(q.layer, cand)
        if groups is not None and turned[cand].any():
            groups = _split_groups(groups, turned[cand])
        read = cand if groups is None else cand[groups[0]]
        rows, _ = cache.exact_rows(q.layer, read, norms=False)  # one read per row (format 3)
        best, off = oq.exact(rows, turned[read], backend=kb, threads=threads)
        if groups is not None:
            best, off = best[groups[1]], off[groups[1]]
        stats["read"] = int(len(read))
        score[cand] = best.astype(np.float32)
        offset[cand] = off
        stats["refined"] = int(len(cand))
        # exact scores decide the top-k (ties broken by id, like the scan)
        exact_score = np.full(n, -np.inf)
        exact_score[cand] = best
        top = _topk(exact_score, want)
    else:
        top = _topk(score, want)
    if dedup:
        top = _dedup(cache, q.layer, top, dedup)[:k]
    top = top[:k]
    matches = []
    paths, labels = cache.paths, cache.labels
    qframe, origin = q.frame, (r0, c0)
    for rank, i in enumerate(top, start=1):
        a, b = offset_rc(offset[i], cache.image_grid(int(i), q.layer), w)
        size = cache.image_size(int(i))
        box = carry_box(qframe, q.box, origin, cache.frame(int(i), q.layer), (a, b))
        matches.append(Match(int(i), float(score[i]), rank, str(paths[i]), str(labels[i]), (a, b),
                             box, size))
    return SearchResult(q, cache, matches, score if return_scores else None, stats)


def _split_groups(groups: tuple[np.ndarray, np.ndarray], turned: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Groups of equal rows (first, inverse) split where their rows' orientation differs (a
    stored row scores differently upright and transposed)."""
    _, inverse = groups
    _, first, inv = np.unique(inverse * 2 + turned.astype(np.int64), return_index=True,
                              return_inverse=True)
    return first, inv.reshape(-1)


def _oriented(cache: FeatureCache, q: Query, turned: np.ndarray) -> OrientedQuery:
    """The query prepared for the scan of ``q.layer`` (upright, and transposed where the layer
    stores rows transposed)."""
    return OrientedQuery(q.features, q.weights, cache.grid(q.layer), bool(turned.any()))


def _want(k: int, dedup: float | None) -> int:
    """How many best images to rank exactly (more when near-duplicates will be dropped)."""
    return k if not dedup else max(4 * k, k + 20)


def _dedup(cache: FeatureCache, layer: str, top: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy near-duplicate suppression on mean-pooled features (cosine ≥ threshold): the
    cache's stored pooled vectors (those of global search)."""
    kept: list[int] = []
    vecs: list[np.ndarray] = []
    stored = cache.has(layer, "pooled")
    pooled = cache.pooled(layer, top) if stored and len(top) else None
    for j, i in enumerate(top):
        v = pooled[j].astype(np.float64) if pooled is not None else \
            cache.features(int(i), layer, exact=False).mean(axis=(0, 1))
        v = v / (np.linalg.norm(v) + 1e-12)
        if any(float(v @ u) >= threshold for u in vecs):
            continue
        kept.append(int(i))
        vecs.append(v)
    return np.array(kept, dtype=np.int64)


def _as_query(cache: FeatureCache, query, image, mask, box, whole, layer, mode=None) -> Query:
    if isinstance(query, Query):
        check_query(cache, query)
        return query
    if query is not None and image is None:
        image = query
    if image is None:
        raise BadQuery("give a query (dataset id, image file or Query)", param="image")
    return make_query(cache, image, mask=mask, box=box, whole=whole, mode=mode, layer=layer)


def _finish_global(cache: FeatureCache, q: Query, *, k: int, exclude_self: bool,
                   return_scores: bool, dedup: float | None) -> SearchResult:
    """Top-k by pooled cosine (exact in float64); each match is the result's whole view."""
    from .global_search import global_scores, global_top

    score = global_scores(cache, q.layer, q.pooled)
    valid = cache.valid.copy()
    if exclude_self and q.source_id is not None:
        valid[q.source_id] = False
    score[~valid] = -np.inf
    top, exact, n_checked = global_top(cache, q.layer, q.pooled, score, _want(k, dedup))
    score[top] = exact.astype(np.float32)
    best = dict(zip(top.tolist(), exact.tolist(), strict=True))
    if dedup:
        top = _dedup(cache, q.layer, top, dedup)
    top = top[:k]
    paths, labels = cache.paths, cache.labels
    matches = []
    for rank, i in enumerate(top, start=1):
        size = cache.image_size(int(i))
        box = cache.transform.geometry(*size).crop
        matches.append(Match(int(i), float(best[int(i)]), rank, str(paths[i]), str(labels[i]),
                             (0, 0), box, size))
    stats = {"refined": n_checked, "candidates": n_checked}
    return SearchResult(q, cache, matches, score if return_scores else None, stats)


class SearchOptions(TypedDict, total=False):
    """The keywords :func:`search` passes on to :func:`search_many` (the defaults are its)."""

    k: int
    exclude_self: bool
    return_scores: bool
    dedup: float | None
    exact: bool
    memory: int | None | str
    backend: str
    threads: int | None
    scheduler: str | None


def search(
    cache: FeatureCache,
    query=None,
    *,
    image=None,
    mask=None,
    box=None,
    whole: bool = False,
    mode: str | None = None,
    layer: str | None = None,
    **options: Unpack[SearchOptions],
) -> SearchResult:
    """Find the ``k`` images whose best same-shaped window is most similar to the query region.

    ``query`` is a :class:`Query`, a dataset id or an image file (then give ``mask`` or ``box``,
    or ``mode``: "whole" — the paper's rigid all-ones mask, ``whole=True`` — or "global" —
    similar images by the cosine of mean-pooled features, one product over the stored pooled
    vectors). With an 8-bit cache and its refine copy, every candidate whose score could reach
    the top k (given its quantisation error bound) is re-scored exactly, so the result equals an
    exact search. ``return_scores`` adds every image's score (for the distribution curve).
    ``memory`` bounds RAM by streaming the cache in blocks (bytes; "auto" streams only when the
    cache does not fit). ``backend``: "auto" (compiled kernel), "avx2", "generic", "numpy",
    or "torch[:DEVICE]" (e.g. "torch:cuda" on a GPU). ``dedup`` drops results whose pooled
    features have cosine ≥ ``dedup`` with a better result. ``scheduler`` (``"local:N"`` or a
    Dask address) maps the scan over the cache's chunks on Dask workers; the results are
    identical. These keywords (:class:`SearchOptions`) and their defaults are
    :func:`search_many`'s.
    """
    q = _as_query(cache, query, image, mask, box, whole, layer, mode)
    return search_many(cache, [q], **options)[0]


def search_many(
    cache: FeatureCache,
    queries: Sequence[Query],
    *,
    k: int = 10,
    exclude_self: bool = True,
    return_scores: bool = False,
    dedup: float | None = None,
    exact: bool = True,
    memory: int | None | str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    scheduler: str | None = None,
) -> list[SearchResult]:
    """Several queries with one read of the data: each block (the whole layer when it fits in
    RAM) is scanned for every query while it is in memory. Queries may use different layers;
    each layer is read once."""
    if k < 1:
        raise BadQuery("k must be at least 1", param="k")
    results: list[SearchResult | None] = [None] * len(queries)
    by_layer: dict[str, list[int]] = {}
    for j, q in enumerate(queries):
        check_query(cache, q)
        if q.mode == "global":
            results[j] = _finish_global(cache, q, k=k, exclude_self=exclude_self,
                                        return_scores=return_scores, dedup=dedup)
            continue
        by_layer.setdefault(q.layer, []).append(j)
    # images that can still reach the top `want` get tight bounds during the scan (+1: the query's
    # own image may be among them and is excluded afterwards)
    tighten = _want(k, dedup) + 1 if exact else None
    for layer, js in by_layer.items():
        mem = _default_memory(cache, layer) if memory == "auto" else memory
        turned = cache.transposed(layer)
        pqs = [_oriented(cache, queries[j], turned) for j in js]
        if scheduler:
            from ..cluster import get_client
            from .dask_backend import scan_distributed

            rows = None if mem is None else max(cache.chunk_len(), int(mem) // 4)
            outs = scan_distributed(cache, layer, pqs, get_client(scheduler), rows=rows,
                                    backend=backend, tighten_k=tighten)
        else:
            outs = _scan_all(cache, layer, pqs, memory=mem, backend=backend, threads=threads,
                             tighten_k=tighten)
        for j, out, oq in zip(js, outs, pqs, strict=True):
            results[j] = _finish(cache, queries[j], out, k=k, exclude_self=exclude_self,
                                 return_scores=return_scores, dedup=dedup, exact=exact,
                                 backend=backend, threads=threads, oq=oq)
    return results
