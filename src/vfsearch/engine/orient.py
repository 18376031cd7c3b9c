"""A query in both orientations a layer stores.

A ``full``-mode cache pads every image's grid to one shape (rows ≤ cols) and stores a portrait
image's grid transposed (:class:`vfsearch.geometry.Frame`). Matching a transposed grid with the
transposed query gives the same score as matching the image with the query, so the scan runs
the query over the upright rows and the transposed query over the transposed ones
(:meth:`OrientedQuery.scan`), and every offset it returns is turned back into the image's own
orientation: offset index ``a * B + b`` on the image's grid, as :func:`~vfsearch.geometry.offset_rc`
reads it with :meth:`FeatureCache.image_grid`. A region that does not fit in an image's grid
(a wide region of a landscape against a portrait) cannot match there: those rows are left out
(``fits``). Caches of the other modes have no transposed rows, and this is the plain scan.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import cell_box
from . import kernel

__all__ = ["OrientedQuery", "image_offsets"]


def image_offsets(off: np.ndarray, stored: tuple[int, int], h: int, w: int) -> np.ndarray:
    """Offsets of the transposed query (a ``w × h`` box) on transposed rows (the layer's
    ``stored`` grid) → offset indices of the ``h × w`` query box on the images' own grids."""
    R, C = int(stored[0]), int(stored[1])
    off = np.asarray(off, np.int64)
    a_t, b_t = np.divmod(off, C - h + 1)  # row, column of the stored (transposed) offset
    return b_t * (R - w + 1) + a_t


def on_grid(features: np.ndarray, weights: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """The query's box (features and weights) at the top-left of a ``grid``-shaped query (what
    the exact refine takes); the box must fit."""
    r0, c0, h, w = cell_box(weights)
    f = np.zeros((int(grid[0]), int(grid[1]), features.shape[-1]), np.float32)
    m = np.zeros((int(grid[0]), int(grid[1])), np.float32)
    f[:h, :w] = features[r0:r0 + h, c0:c0 + w]
    m[:h, :w] = weights[r0:r0 + h, c0:c0 + w]
    return f, m


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): indices of the distinct rows of ``rows`` (m, ...) and, for every row,
    which of them it equals byte for byte (``rows[first][inverse]`` is ``rows``). Rows are
    grouped by a sample of their values, then each is compared in full with its group's first
    row, so equal samples of different rows never merge them."""
    m = len(rows)
    if m < 2:
        return np.arange(m), np.arange(m)
    flat = rows.reshape(m, -1)
    sample = np.ascontiguousarray(flat[:, ::max(1, flat.shape[1] // 256)])
    keys = sample.view(np.dtype((np.void, sample.shape[1] * sample.itemsize))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(first) == m:
        return np.arange(m), np.arange(m)
    # verify each row against its group's representative; a mismatch becomes its own row
    reps = list(first)
    inv = np.empty(m, np.int64)
    for i in range(m):
        g = int(inverse[i])
        r = int(first[g])
        inv[i] = g
        if i != r and not np.array_equal(flat[i], flat[r]):
            inv[i] = len(reps)
            reps.append(i)
    return np.asarray(reps, np.int64), inv


class OrientedQuery:
    """A query prepared for the kernel on a layer stored as ``stored`` (rows, cols), upright
    and (where ``transposed`` rows exist) transposed."""

    def __init__(self, features: np.ndarray, weights: np.ndarray, stored, any_transposed: bool):
        self.stored = (int(stored[0]), int(stored[1]))
        self.features = np.asarray(features, np.float32)
        self.weights = np.asarray(weights, np.float32)
        _, _, self.h, self.w = cell_box(self.weights)
        R, C = self.stored
        self.fits = self.h <= R and self.w <= C  # on upright rows
        self.fits_t = self.w <= R and self.h <= C  # on transposed rows
        self.pq = kernel.PreparedQuery.from_grid(self.features, self.weights)
        self.pq_t = None
        if any_transposed:
            self.pq_t = kernel.PreparedQuery.from_grid(self.features.transpose(1, 0, 2),
                                                       self.weights.T)

    @classmethod
    def plain(cls, pq) -> OrientedQuery:
        """A prepared query used as it is (a layer with no transposed rows)."""
        self = cls.__new__(cls)
        self.pq, self.pq_t, self.fits, self.fits_t = pq, None, True, False
        self.h, self.w, self.stored = pq.h, pq.w, None
        return self

    @classmethod
    def of(cls, query) -> OrientedQuery:
        return query if isinstance(query, cls) else cls.plain(query)

    def fits_rows(self, transposed: np.ndarray) -> np.ndarray:
        """(n,) bool: the rows the query's box fits in."""
        return np.where(transposed, self.fits_t, self.fits)

    def scan(self, data, transposed: np.ndarray | None, scan_fn) -> dict[str, np.ndarray]:
        """Scan a block: ``scan_fn(data, prepared_query, ids)`` runs the kernel on rows ``ids``
        (None: all). Returns score, offset (on each image's own grid), upper, lower; rows the
        box does not fit in get -inf."""
        n = data.n
        tr = np.zeros(0, np.int64) if transposed is None else np.flatnonzero(transposed)
        if not len(tr) and self.fits:  # the plain scan (every cache but a full one's portraits)
            r = scan_fn(data, self.pq, None)
            return {"score": r.score, "offset": r.offset, "upper": r.upper, "lower": r.lower}
        out = {"score": np.full(n, -np.inf, np.float32), "offset": np.zeros(n, np.int32),
               "upper": np.full(n, -np.inf, np.float32), "lower": np.full(n, -np.inf, np.float32)}
        up = np.flatnonzero(~transposed) if transposed is not None else np.arange(n)
        parts = []
        if self.fits and len(up):
            parts.append((up, scan_fn(data, self.pq, up), False))
        if self.fits_t and len(tr):
            parts.append((tr, scan_fn(data, self.pq_t, tr), True))
        for ids, r, turned in parts:
            out["score"][ids], out["upper"][ids], out["lower"][ids] = r.score, r.upper, r.lower
            out["offset"][ids] = image_offsets(r.offset, self.stored, self.h, self.w) if turned \
                else r.offset
        return out

    def exact(self, rows: np.ndarray, transposed: np.ndarray, *, backend="auto", threads=None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Exact best score and offset (on each image's own grid) of stored ``rows`` (m, R, C,
        ch), ``transposed`` (m,) saying which are stored transposed; the box must fit."""
        m = len(rows)
        best = np.full(m, -math.inf)
        off = np.zeros(m, np.int64)
        for turned in (False, True):
            ids = np.flatnonzero(transposed == turned)
            if not len(ids):
                continue
            f, w = self.features, self.weights
            if turned:
                f, w = f.transpose(1, 0, 2), w.T
            if tuple(w.shape) != self.stored:
                f, w = on_grid(f, w, self.stored)
            sub = rows[ids] if len(ids) < m else rows
            first, inverse = unique_rows(sub)  # exact copies (camera traps, video): scored once
            b, o = kernel.exact_best(sub[first] if len(first) < len(sub) else sub, w, f,
                                     backend=backend, threads=threads)
            b, o = b[inverse], o[inverse]
            best[ids] = b
            off[ids] = image_offsets(o, self.stored, self.h, self.w) if turned else o
        return best, off


def scan_block(data, pq, ids=None, *, backend: str = "auto", threads: int | None = None,
               tighten_k: int | None = None, floor: float = -math.inf):
    """The kernel (or torch) scan of rows ``ids`` (None: all) of a block with one prepared
    query."""
    if backend.startswith("torch"):
        from . import torch_backend

        device = backend.split(":", 1)[1] if ":" in backend else "cpu"
        return torch_backend.scan(data.features, data.sqnorm, pq, scale=data.scale,
                                  qerr2=data.qerr2, device=device, ids=ids)
    return kernel.scan(data.features, data.sqnorm, pq, scale=data.scale, qerr2=data.qerr2,
                       threads=threads, backend=backend, tighten_k=tighten_k,
                       tighten_floor=floor, ids=ids, inter=getattr(data, "inter", None))
