"""Indexing on Dask: pending chunks mapped over workers, each writing whole chunks.

``scheduler`` is ``"local:N"`` or a scheduler address (:func:`vfsearch.cluster.get_client`).
Workers open the cache by path, so it must live on a file system they all see. Tasks are pure
(a task rewrites whole chunks), so Dask may retry them after a worker dies. (The search's Dask
path is a backend of the engine: :mod:`vfsearch.engine.dask_backend`.)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .cluster import get_client
from .errors import BadParameter

__all__ = ["index_distributed"]


@lru_cache(maxsize=2)
def _worker_model(name: str, weights: str | None):
    import torch

    from .models import load_model

    torch.set_num_threads(1)
    return load_model(name, weights)


def _index_task(path: str, chunk_ids: list[int], model: str, weights: str | None, batch_size: int,
                max_pixels: int, thumb_size: int) -> int:
    """Worker side: extract and write whole chunks (idempotent: a retried task rewrites them)."""
    from .cache import PENDING, CacheWriter
    from .extract import run_rows
    from .transforms import Transform

    lm = _worker_model(model, weights)
    w = CacheWriter.open(path)
    status = w.status()
    chunk = w.chunk
    rows = [r for c in chunk_ids for r in range(c * chunk, min(len(status), (c + 1) * chunk))
            if status[r] == PENDING]
    if not rows:
        return 0
    indexed, _ = run_rows(w, lm, Transform.from_dict(w.meta["transform"]), list(w.meta["layers"]),
                          np.array(rows), status, w.paths(), Path(w.meta["image_root"]),
                          batch_size=batch_size, workers=0, device="cpu", thumb_size=thumb_size,
                          max_pixels=max_pixels, progress=False)
    return indexed


def index_distributed(scheduler, path: Path, pending: np.ndarray, chunk: int, lm, *,
                      batch_size: int, max_pixels: int, thumb_size: int,
                      chunks_per_task: int = 1, progress=True) -> int:
    """Submit one task per group of pending chunks; workers write disjoint chunks."""
    from distributed import as_completed

    from .models import available_models

    if lm.name not in available_models() and not lm.name.startswith(("torchvision:", "timm:")):
        raise BadParameter(f"distributed indexing needs a named model (got {lm.name!r}); "
                           "custom nn.Modules index on one machine", param="scheduler")
    client = get_client(scheduler) if isinstance(scheduler, str) else scheduler
    chunks = sorted({int(r) // chunk for r in pending})
    groups = [chunks[i:i + chunks_per_task] for i in range(0, len(chunks), chunks_per_task)]
    futures = [client.submit(_index_task, str(path), g, lm.name, lm.weights_path, batch_size,
                             max_pixels, thumb_size, pure=False, retries=3) for g in groups]
    bar = None
    if progress is True:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="img", desc="indexing (dask)", file=sys.stderr)
    done = 0
    for fut in as_completed(futures):
        k = fut.result()
        done += k
        if bar is not None:
            bar.update(k)
        elif callable(progress):
            progress(done, len(pending))
    if bar is not None:
        bar.close()
    return done
