"""The dataset map: every image of a cache on one square grid of thumbnails, laid out by similarity.

Pipeline (``compute_map``), after deepviz's "gridified t-SNE":

1. **Pooled features** — per image, the mean over the feature grid of the dequantised features
   (``features * scale[..., None]`` for 8-bit caches), L2-normalised; computed streaming over
   ``cache.read`` blocks (bounded memory), then reduced to ≤ 50 dimensions by PCA.
2. **2-D embedding** — openTSNE (default) or UMAP, seeded.
3. **Gridify** — the 2-D points are min-max normalised to the unit square and assigned one-to-one
   to the cells of a ``side × side`` grid, ``side = ceil(sqrt(n))``, minimising the total squared
   distance (an exact linear assignment) for n ≤ ``EXACT_MAX``. Beyond that a balanced k-d split
   cuts the grid into rectangles of ≤ ``LEAF`` cells and the points into groups of exactly as many
   points as their rectangle has cells (empty cells are shared out proportionally), and every
   rectangle is solved exactly; memory and time grow about linearly in n.
4. **Atlas** (``build_atlas``) — square thumbnail tiles pasted in grid order onto JPEG pages.

Stored format (inside the cache's Zarr v3 store, so it travels with the cache)::

    CACHE/map/<layer>/<method>/           group, <method> = "tsne" | "umap"
        xy      (N, 2) float32   2-D embedding of row i (NaN for rows that are not indexed)
        cell    (N, 2) int32     grid cell of row i as (col, row), 0 ≤ col,row < side; (-1, -1)
                                 for rows that are not indexed
        grid    (side, side) int32  image id (row of the cache) at grid[row, col]; -1 = empty cell
        atlas   (P,) bytes       optional: JPEG page p (one Zarr chunk per page)

    N is ``len(cache)`` when the map was computed (image ids are cache rows, as everywhere).
    Group attributes: ``method``, ``layer``, ``seed``, ``side``, ``n`` (images placed), ``rows``
    (N), ``perplexity`` (t-SNE) or ``n_neighbors`` (UMAP), ``pca``, ``normalize``, ``gridify``
    ("exact" | "tiled"), ``seconds`` (total) and ``timings`` (per stage), ``knn_preservation``
    ({"embedding", "grid"}: mean fraction of each image's 10 nearest neighbours in pooled-feature
    space (after PCA) that are among its 10 nearest on the 2-D embedding / grid; sampled),
    ``fingerprint`` (of the cache's rows; ``load_map`` sets ``stale`` when it no longer matches),
    ``complete`` (written last: a map without it is ignored).

Atlas page layout (attributes of ``atlas``: ``tile`` (px), ``page_tiles`` (P_t), ``pages_x``,
``pages_y``, ``side``, ``format`` "jpeg", ``background``): the grid is cut into blocks of
``P_t × P_t`` cells; page ``p = py * pages_x + px`` holds cells ``row ∈ [py·P_t, (py+1)·P_t)``,
``col ∈ [px·P_t, (px+1)·P_t)`` (clipped to ``side``, so the last page row/column is smaller:
``min(P_t, side - px·P_t) · tile`` px wide). The tile of cell (col, row) lies at pixel
``((col - px·P_t) · tile, (row - py·P_t) · tile)`` of its page, i.e. the pages laid side by side
form one ``side·tile`` px square picture of the whole grid; the image shown in cell (col, row) is
``grid[row, col]`` (empty cells are filled with ``background``). A tile is the centre square crop
of the cache's thumbnail. Defaults: tile 32 px, 64 × 64 tiles = 2048 px pages, so 50k images are
a 224 × 224 grid on 16 pages.

Use ``load_map(cache, layer, method)`` (→ :class:`MapResult` or None) and
``load_atlas``/``atlas_page`` to read it back.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import BackendUnavailable, CacheError, NotFound, VfsError

__all__ = [
    "EXACT_MAX",
    "LEAF",
    "MapResult",
    "atlas_page",
    "build_atlas",
    "compute_map",
    "embed",
    "gridify",
    "knn_preservation",
    "load_atlas",
    "load_map",
    "pooled_features",
]

METHODS = ("tsne", "umap")
#: largest n solved as one exact assignment (dense n × side² cost matrix, roughly cubic time:
#: ~1 s at 1000 points, ~10 s at 2000 on one core); beyond it the tiled assignment is used.
EXACT_MAX = 2048
#: most cells per tile of the tiled assignment.
LEAF = 1024
FORMAT = 1


def _open(cache):
    from .cache import FeatureCache, open_cache

    return cache if isinstance(cache, FeatureCache) else open_cache(cache)


def _bar(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kw)


# -- pooled features ------------------------------------------------------------------------------


def pooled_features(cache, layer: str | None = None, normalize: bool = True,
                    block_bytes: int = 64 << 20, progress: bool = False,
                    stop: int | None = None, stored: bool = True) -> np.ndarray:
    """(N, C) float32: each row's features averaged over the feature grid — the cache's stored
    pooled vectors (format 2), else the dequantised features streamed in blocks of about
    ``block_bytes`` (as float32), so memory stays bounded whatever N. Rows that are not indexed
    come back as zeros. ``normalize`` L2-normalises rows. ``stop``: only rows [0, stop).
    """
    c = _open(cache)
    layer = layer or c.default_layer
    info = c.layer_info(layer)
    if stored and c.has(layer, "pooled"):
        out = np.array(c.pooled(layer)[:stop], dtype=np.float32)
        if normalize:
            nrm = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, nrm, out=out, where=nrm > 0)
        return out
    h, w = info["grid"]
    ch = info["channels"]
    n = len(c) if stop is None else max(0, min(len(c), int(stop)))
    chunk = c.chunk_len()
    per = h * w * ch * 4 * 2
    rows = max(chunk, (block_bytes // per) // chunk * chunk)
    out = np.zeros((n, ch), np.float32)
    bar = _bar(progress, total=n, unit="img", desc=f"pooling {layer}")
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d = c.read(layer, s, e)
        f = d.features.reshape(e - s, h * w, ch)
        if d.scale is not None:  # 8-bit: Σ_cells q·scale as a batched (1 × HW) @ (HW × C)
            sc = d.scale.reshape(e - s, 1, h * w).astype(np.float32)
            out[s:e] = np.matmul(sc, f.astype(np.float32))[:, 0] / (h * w)
        else:
            out[s:e] = f.astype(np.float32).mean(axis=1)
        bar.update(e - s)
    bar.close()
    if normalize:
        nrm = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, nrm, out=out, where=nrm > 0)
    return out


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Deterministic PCA (eigen-decomposition of the covariance; signs fixed)."""
    if dims <= 0 or x.shape[1] <= dims or x.shape[0] <= dims:
        return x.astype(np.float32)
    mu = x.mean(axis=0, dtype=np.float64)
    xc = x - mu.astype(np.float32)
    cov = (xc.T.astype(np.float64) @ xc.astype(np.float64)) / max(1, len(x) - 1)
    _, vec = np.linalg.eigh(cov)
    vec = vec[:, ::-1][:, :dims]
    vec *= np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(dims)])
    return (xc @ vec.astype(np.float32)).astype(np.float32)


# -- 2-D embedding --------------------------------------------------------------------------------


def embed(x: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0,
          n_neighbors: int = 15, n_jobs: int | None = None, progress: bool = False) -> np.ndarray:
    """(n, 2) float32 embedding of the rows of ``x`` with openTSNE or UMAP (seeded)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if method not in METHODS:
        raise VfsError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    if n <= 3:  # too few for a neighbour embedding: a line
        xy = np.zeros((n, 2), np.float32)
        xy[:, 0] = np.arange(n)
        return xy
    if not n_jobs:  # threads only pay off on big inputs (and hurt on a busy machine)
        n_jobs = 1 if n < 5000 else min(8, os.cpu_count() or 1)
    if method == "tsne":
        try:
            from openTSNE import TSNE
        except ImportError:
            raise VfsError("the t-SNE map needs openTSNE: pip install openTSNE") from None
        perp = float(max(1.0, min(perplexity, (n - 1) / 3.0)))
        every = 25
        bar = _bar(progress, total=750, unit="it", desc=f"t-SNE {n} points")

        def tick(it, err, emb):
            bar.update(every)
            return False

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = TSNE(n_components=2, perplexity=perp, random_state=seed, n_jobs=n_jobs,
                     initialization="pca", callbacks=tick if progress else None,
                     callbacks_every_iters=every, verbose=False)
            xy = np.asarray(t.fit(x), dtype=np.float32)
        bar.close()
        return xy
    try:
        import umap
    except ImportError:
        raise BackendUnavailable("the UMAP map needs umap-learn: pip install 'vfsearch[umap]'",
                                 param="method") from None
    k = int(max(2, min(n_neighbors, n - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, verbose=False,
                      init="spectral" if n > k + 2 else "random")
        return np.asarray(u.fit_transform(x), dtype=np.float32)


# -- gridify --------------------------------------------------------------------------------------


def _unit(p: np.ndarray) -> np.ndarray:
    """Min-max normalise each column to [0, 1] (0.5 for a constant column)."""
    p = np.asarray(p, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = hi - lo
    out = np.full_like(p, 0.5)
    ok = span > 0
    out[:, ok] = (p[:, ok] - lo[ok]) / span[ok]
    return out


def _solve(cost: np.ndarray, solver: str) -> np.ndarray:
    """Exact assignment of each row (n) to a distinct column (m ≥ n): column index per row."""
    if solver == "lap":
        import lap

        n, m = cost.shape
        sq = np.zeros((m, m), np.float64)
        sq[:n] = cost
        _, x, _ = lap.lapjv(sq)
        return np.asarray(x[:n], dtype=np.int64)
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(cost)
    out = np.empty(cost.shape[0], np.int64)
    out[r] = c
    return out


def _assign_rect(p: np.ndarray, r0: int, r1: int, c0: int, c1: int, solver: str) -> np.ndarray:
    """Exactly assign points ``p`` (in [0,1]², n ≤ cells) to the cells of rows [r0, r1) × cols
    [c0, c1): returns (n, 2) (col, row)."""
    cols, rows = c1 - c0, r1 - r0
    gx, gy = np.meshgrid(np.arange(cols), np.arange(rows))
    gx, gy = gx.ravel(), gy.ravel()
    cx, cy = (gx + 0.5) / cols, (gy + 0.5) / rows
    # squared distance in grid-cell units (so non-square rectangles are isotropic)
    dx = (p[:, 0:1] - cx[None]) * cols
    dy = (p[:, 1:2] - cy[None]) * rows
    j = _solve(dx * dx + dy * dy, solver)
    return np.stack([gx[j] + c0, gy[j] + r0], axis=1)


def gridify(points: np.ndarray, seed: int = 0, exact_max: int = EXACT_MAX, leaf: int = LEAF,
            solver: str = "scipy", progress: bool = False) -> np.ndarray:
    """Assign n 2-D points one-to-one to the cells of a ``side × side`` grid, side = ceil(√n).

    Returns (n, 2) int32 cells as (col, row): col follows x, row follows y. n ≤ ``exact_max``: one
    exact linear assignment minimising the total squared distance between the min-max-normalised
    points and the cell centres. Larger n: balanced k-d split of the grid into tiles of ≤ ``leaf``
    cells, each owning exactly as many points as it has cells (less its share of the empty
    cells), each tile solved exactly on its points re-normalised to the tile. ``seed`` breaks ties
    between equal coordinates. ``solver``: "scipy" (``linear_sum_assignment``) or "lap"
    (``lap.lapjv``), same optimum.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"gridify needs (n, 2) points, got shape {p.shape}")
    n = len(p)
    if n == 0:
        return np.zeros((0, 2), np.int32)
    if not np.isfinite(p).all():
        raise ValueError("gridify: points contain NaN or inf")
    side = math.ceil(math.sqrt(n))
    u = _unit(p)
    if n <= exact_max:
        return _assign_rect(u, 0, side, 0, side, solver).astype(np.int32)
    tie = np.random.default_rng(seed).random(n)
    out = np.empty((n, 2), np.int32)
    stack = [(np.arange(n), 0, side, 0, side)]
    bar = _bar(progress, total=n, unit="pt", desc="gridify (tiled)")
    while stack:
        idx, r0, r1, c0, c1 = stack.pop()
        rows, cols = r1 - r0, c1 - c0
        if len(idx) == 0:
            continue
        if rows * cols <= leaf:
            out[idx] = _assign_rect(_unit(u[idx]), r0, r1, c0, c1, solver)
            bar.update(len(idx))
            continue
        axis = 0 if cols >= rows else 1  # split the longer side: x ↔ columns, y ↔ rows
        if axis == 0:
            cut = c0 + cols // 2
            m1, m2 = rows * (cut - c0), rows * (c1 - cut)
        else:
            cut = r0 + rows // 2
            m1, m2 = cols * (cut - r0), cols * (r1 - cut)
        k = len(idx)
        n1 = round(k * m1 / (m1 + m2))
        n1 = min(max(n1, k - m2, 0), m1, k)
        order = np.lexsort((tie[idx], u[idx, axis]))
        a, b = idx[order[:n1]], idx[order[n1:]]
        if axis == 0:
            stack += [(b, r0, r1, cut, c1), (a, r0, r1, c0, cut)]
        else:
            stack += [(b, cut, r1, c0, c1), (a, r0, cut, c0, c1)]
    bar.close()
    return out


# -- quality ---------------------------------------------------------------------------------------


def _knn(x: np.ndarray, q: np.ndarray, k: int, jitter: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k nearest rows of ``x`` to each row ``q`` of it (self excluded)."""
    x = np.asarray(x, dtype=np.float64 if x.shape[1] <= 3 else np.float32)
    block = max(8, (2 << 20) // max(1, len(x)))  # ≈ 16 MB of distances at a time
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), block):
        qi = q[s:s + block]
        d = sq[qi, None] - 2.0 * (x[qi] @ x.T) + sq[None, :]
        if jitter is not None:  # deterministic tie-break (grid distances are integers)
            d = d + jitter[None, :]
        d[np.arange(len(qi)), qi] = np.inf
        part = np.argpartition(d, k, axis=1)[:, :k]
        out[s:s + block] = part
    return out


def knn_preservation(points_or_features: np.ndarray, cells: np.ndarray, k: int = 10,
                     sample: int | None = 2000, seed: int = 0) -> float:
    """Mean fraction of each point's k nearest neighbours (in ``points_or_features``: the pooled
    features or a 2-D embedding; Euclidean) that are also among its k nearest in ``cells`` (grid
    cells or any other layout). 1.0 = every neighbourhood kept; a random layout scores about k/n.
    ``sample`` query points (all when None or ≥ n), seeded; neighbours are searched among all."""
    x = np.asarray(points_or_features, dtype=np.float32)
    y = np.asarray(cells, dtype=np.float64)
    n = len(x)
    if len(y) != n:
        raise ValueError("points_or_features and cells differ in length")
    if n <= 1:
        return 1.0
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    q = (np.arange(n) if sample is None or sample >= n
         else np.sort(rng.choice(n, sample, replace=False)))
    a = _knn(x, q, k)
    b = _knn(y, q, k, jitter=rng.random(n) * 1e-6)
    hits = sum(len(np.intersect1d(a[i], b[i], assume_unique=True)) for i in range(len(q)))
    return float(hits / (len(q) * k))


# -- compute, store, load -------------------------------------------------------------------------


@dataclass
class MapResult:
    """A computed (or loaded) dataset map; ``cell[i]`` = (col, row) of image i, or (-1, -1)."""

    layer: str
    method: str
    seed: int
    side: int
    xy: np.ndarray  # (N, 2) float32, NaN for rows not placed
    cell: np.ndarray  # (N, 2) int32 (col, row), -1 for rows not placed
    attrs: dict = field(default_factory=dict)
    stale: bool = False  # loaded map whose cache has changed since (rows added / re-indexed)

    @property
    def n(self) -> int:
        """Number of images placed on the grid."""
        return int((self.cell[:, 0] >= 0).sum())

    @property
    def rows(self) -> int:
        return len(self.cell)

    @property
    def ids(self) -> np.ndarray:
        """Image ids placed on the grid."""
        return np.flatnonzero(self.cell[:, 0] >= 0)

    @property
    def grid(self) -> np.ndarray:
        """(side, side) int32: image id at [row, col], -1 for an empty cell."""
        g = np.full((self.side, self.side), -1, np.int32)
        ids = self.ids
        g[self.cell[ids, 1], self.cell[ids, 0]] = ids
        return g



def compute_map(cache, layer: str | None = None, method: str = "tsne", seed: int = 0,
                progress: bool = True, store: bool = True, *, normalize: bool = True,
                pca: int = 50, perplexity: float = 30.0, n_neighbors: int = 15,
                n_jobs: int | None = None, exact_max: int = EXACT_MAX, leaf: int = LEAF,
                quality_sample: int = 1000) -> MapResult:
    """Pool, embed (t-SNE or UMAP) and gridify the indexed images of ``cache`` at ``layer``;
    store it under ``map/<layer>/<method>`` in the cache when ``store``."""
    c = _open(cache)
    layer = layer or c.default_layer
    c.layer_info(layer)
    if method not in METHODS:
        raise VfsError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    timings = {}
    valid = np.asarray(c.valid, bool)
    ids = np.flatnonzero(valid)
    if len(ids) == 0:
        raise CacheError(f"cache {c.path} has no indexed images to map")
    feats = pooled_features(c, layer, normalize=normalize, progress=progress)[ids]
    x = _pca(feats, pca)
    timings["pool"] = time.perf_counter() - t0
    t = time.perf_counter()
    xy = embed(x, method, seed=seed, perplexity=perplexity, n_neighbors=n_neighbors,
               n_jobs=n_jobs, progress=progress)
    timings["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    cells = gridify(xy, seed=seed, exact_max=exact_max, leaf=leaf, progress=progress)
    timings["gridify"] = time.perf_counter() - t
    t = time.perf_counter()
    quality = {
        "k": 10,
        "embedding": round(knn_preservation(x, xy, 10, quality_sample, seed), 4),
        "grid": round(knn_preservation(x, cells, 10, quality_sample, seed), 4),
    }
    timings["quality"] = time.perf_counter() - t
    n_rows = len(c)
    side = math.ceil(math.sqrt(len(ids)))
    xy_all = np.full((n_rows, 2), np.nan, np.float32)
    xy_all[ids] = xy
    cell_all = np.full((n_rows, 2), -1, np.int32)
    cell_all[ids] = cells
    attrs = {
        "format": FORMAT, "method": method, "layer": layer, "seed": int(seed), "side": side,
        "n": len(ids), "rows": int(n_rows), "normalize": bool(normalize), "pca": int(pca),
        "gridify": "exact" if len(ids) <= exact_max else "tiled",
        "knn_preservation": quality, "fingerprint": c.fingerprint(),
    }
    if method == "tsne":
        attrs["perplexity"] = float(max(1.0, min(perplexity, (len(ids) - 1) / 3.0)))
    else:
        attrs["n_neighbors"] = int(max(2, min(n_neighbors, len(ids) - 1)))
    attrs["timings"] = {k: round(v, 3) for k, v in timings.items()}
    attrs["seconds"] = round(time.perf_counter() - t0, 3)
    res = MapResult(layer=layer, method=method, seed=int(seed), side=side, xy=xy_all,
                    cell=cell_all, attrs=attrs)
    if store:
        _store(c, res)
    return res


def _writer(c):
    from .cache import CacheWriter

    return CacheWriter.open(c.path)


def _store(c, res: MapResult) -> None:
    _writer(c).store("map", res.layer, res.method, {"xy": res.xy, "cell": res.cell,
                                                    "grid": res.grid},
                     res.attrs, fill={"xy": np.nan, "cell": -1, "grid": -1})


def load_map(cache, layer: str | None = None, method: str = "tsne") -> MapResult | None:
    """The stored map of ``layer`` (default: the cache's default layer), or None if there is none
    (or it was interrupted). ``stale`` is set when the cache has changed since: rows added,
    skipped or re-indexed (ids still refer to the same rows; recompute to place new ones)."""
    c = _open(cache)
    layer = layer or c.default_layer
    c.layer_info(layer)  # NotFound for an unknown layer
    st = c.stored("map", layer, method)
    if st is None:
        return None
    attrs = dict(st.attrs)
    cell = np.asarray(st.array("cell"), dtype=np.int32)
    xy = np.asarray(st.array("xy"), dtype=np.float32)
    valid = np.asarray(c.valid, bool)
    stale = (len(valid) != len(cell) or not np.array_equal(valid, cell[:, 0] >= 0)
             or attrs.get("fingerprint") != c.fingerprint())
    if st.has("atlas"):
        attrs["atlas"] = st.blob_attrs("atlas")
    return MapResult(layer=layer, method=method, seed=int(attrs.get("seed", 0)),
                     side=int(attrs["side"]), xy=xy, cell=cell, attrs=attrs, stale=stale)


# -- atlas -----------------------------------------------------------------------------------------


def _tile(data: bytes, tile: int, background) -> np.ndarray:
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (tile * 2, tile * 2))  # JPEG: decode at a reduced scale
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return np.asarray(im.resize((tile, tile), Image.Resampling.BICUBIC, box=box), np.uint8)
    except Exception:  # noqa: BLE001 - a missing or broken thumbnail is a blank tile
        return np.full((tile, tile, 3), background, np.uint8)


def build_atlas(cache, map: MapResult, tile: int = 32, page_tiles: int = 64, quality: int = 85,
                background=(24, 24, 24), store: bool = True, progress: bool = True,
                memory: int = 256 << 20, threads: int | None = None) -> list[bytes]:
    """JPEG pages of ``tile``-px thumbnails in grid order (layout in the module docstring).

    Reads the cache's thumbnails in blocks; when all pages would take more than ``memory`` bytes
    of pixels, pages are built in several passes over the thumbnails. Stored under
    ``map/<layer>/<method>/atlas`` when ``store`` (the map must be stored already).
    """
    from PIL import Image

    c = _open(cache)
    side = map.side
    pt = int(page_tiles)
    px_n = py_n = -(-side // pt)
    n_pages = px_n * py_n
    ids = map.ids
    col, row = map.cell[ids, 0], map.cell[ids, 1]
    page_of = np.full(map.rows, -1, np.int64)
    page_of[ids] = (row // pt) * px_n + col // pt
    bg = np.array(background, np.uint8)

    def page_shape(p):
        py, px = divmod(p, px_n)
        return min(pt, side - py * pt) * tile, min(pt, side - px * pt) * tile

    passes, cur, size = [], [], 0
    for p in range(n_pages):
        b = int(np.prod(page_shape(p))) * 3
        if cur and size + b > memory:
            passes.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += b
    passes.append(cur)
    tch = c.thumbnail_chunk
    block = max(tch, 1024 // tch * tch)
    pages: list[bytes] = [b""] * n_pages
    threads = threads or min(4, os.cpu_count() or 1)
    bar = _bar(progress, total=len(ids) + n_pages, unit="tile", desc="atlas")
    with ThreadPoolExecutor(threads) as pool:
        for group in passes:
            want = np.zeros(n_pages, bool)
            want[group] = True
            canv = {}
            for p in group:
                h, w = page_shape(p)
                canv[p] = np.empty((h, w, 3), np.uint8)
                canv[p][:] = bg
            for s in range(0, map.rows, block):
                e = min(map.rows, s + block)
                sel = np.flatnonzero((page_of[s:e] >= 0) & want[np.maximum(page_of[s:e], 0)]) + s
                if len(sel) == 0:
                    continue
                data = c.thumbnail_range(s, e)
                tiles = list(pool.map(_tile, [data[i - s] for i in sel],
                                      [tile] * len(sel), [bg] * len(sel)))
                for i, t in zip(sel, tiles, strict=True):
                    p = int(page_of[i])
                    py, pxx = divmod(p, px_n)
                    y0 = (int(map.cell[i, 1]) - py * pt) * tile
                    x0 = (int(map.cell[i, 0]) - pxx * pt) * tile
                    canv[p][y0:y0 + tile, x0:x0 + tile] = t
                bar.update(len(sel))

            def enc(pixels):
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "JPEG", quality=quality, optimize=True)
                return buf.getvalue()

            for p, b in zip(group, pool.map(enc, [canv[p] for p in group]), strict=True):
                pages[p] = b
                bar.update(1)
            canv.clear()
    bar.close()
    if store:
        _store_atlas(c, map, pages, tile=tile, page_tiles=pt, pages_x=px_n, pages_y=py_n,
                     quality=quality, background=[int(v) for v in background])
    return pages


def _store_atlas(c, map: MapResult, pages: list[bytes], **attrs) -> None:
    _writer(c).store_blobs("map", map.layer, map.method, "atlas", pages,
                           {**attrs, "side": map.side, "format": "jpeg", "pages": len(pages),
                            "bytes": int(sum(len(p) for p in pages))})


def load_atlas(cache, layer: str | None = None, method: str = "tsne") -> list[bytes] | None:
    """All atlas pages (JPEG bytes, page order of the module docstring), or None."""
    c = _open(cache)
    st = c.stored("map", layer or c.default_layer, method)
    if st is None or not st.has("atlas"):
        return None
    return st.blobs("atlas")


def atlas_page(cache, layer: str | None, method: str, page: int) -> bytes:
    """One atlas page (JPEG bytes); NotFound when there is no atlas or no such page."""
    c = _open(cache)
    layer = layer or c.default_layer
    st = c.stored("map", layer, method)
    if st is None or not st.has("atlas"):
        raise NotFound(f"no map atlas for layer {layer!r} ({method}); compute the map first")
    n = st.count("atlas")
    if not 0 <= int(page) < n:
        raise NotFound(f"no atlas page {page} (the atlas has {n} pages)")
    return st.blob("atlas", int(page))
