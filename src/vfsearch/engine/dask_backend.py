"""The scan on Dask workers: blocks of the cache's chunks are scanned where they are read; the
client merges the per-image arrays, then the engine runs the same top-k and exact refine as on
one machine, so results are identical. Workers open the cache by path (a file system they all
see). Tasks are pure, so Dask may retry them after a worker dies."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .orient import OrientedQuery, scan_block

__all__ = ["scan_distributed"]


@lru_cache(maxsize=8)
def _open(path: str):
    from ..cache import open_cache

    return open_cache(path)


def _scan_task(path: str, layer: str, start: int, stop: int, pqs, backend: str, delay: float = 0.0,
               tighten_k: int | None = None):
    """Worker side: scan rows [start, stop) of one layer for every prepared query (tightening the
    bounds of this block's own top ``tighten_k`` candidates)."""
    if delay:
        time.sleep(delay)
    cache = _open(path)
    data = cache.read(layer, start, stop)
    turned = cache.transposed(layer)[start:stop]
    out = []
    for pq in pqs:
        r = OrientedQuery.of(pq).scan(
            data, turned if turned.any() else None,
            lambda d, q, ids: scan_block(d, q, ids, backend=backend, threads=1,
                                         tighten_k=tighten_k))
        out.append((r["score"], r["offset"], r["upper"], r["lower"]))
    return start, out


def scan_distributed(cache, layer: str, pqs, client, rows: int | None = None, backend: str = "auto",
                     delay: float = 0.0, tighten_k: int | None = None) -> list[dict]:
    """Map the scan over blocks of ``rows`` (a multiple of the chunk length) on the workers."""
    from distributed import as_completed

    n = len(cache)
    c = cache.chunk_len()
    rows = max(c, (rows or max(c, 8192)) // c * c)
    path = str(Path(cache.path).resolve())
    futures = [client.submit(_scan_task, path, layer, s, min(n, s + rows), pqs, backend, delay,
                             tighten_k, pure=False, retries=3) for s in range(0, n, rows)]
    outs = [{k: np.empty(n, dt) for k, dt in (("score", np.float32), ("offset", np.int32),
                                                ("upper", np.float32), ("lower", np.float32))}
            for _ in pqs]
    for fut in as_completed(futures):
        start, res = fut.result()
        for out, (score, offset, upper, lower) in zip(outs, res, strict=True):
            sl = slice(start, start + len(score))
            out["score"][sl], out["offset"][sl] = score, offset
            out["upper"][sl], out["lower"][sl] = upper, lower
    return outs
