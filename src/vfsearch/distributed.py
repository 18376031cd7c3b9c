"""Scale-out on Dask: indexing and search mapped over the cache's Zarr chunks.

``scheduler`` is ``"local:N"`` (a ``LocalCluster`` with N single-threaded worker processes,
started on demand and reused in this process) or the address of a running scheduler
(``tcp://host:8786``). Workers open the cache by path, so it must live on a file system they all
see. Search tasks return per-image score arrays for their block; the client merges them and runs
the same top-k and exact refine step as the single-machine path, so results are identical.
Tasks are pure (indexing tasks rewrite whole chunks), so Dask may retry them after a worker dies.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import VfsError

__all__ = ["get_client", "scan_distributed", "index_distributed", "close_clients"]

_CLIENTS: dict[str, object] = {}


def get_client(scheduler: str):
    """A ``distributed.Client`` for ``"local:N"`` or a scheduler address (reused per process)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise VfsError("Dask is not installed (pip install 'dask[distributed]')") from None
    if scheduler in _CLIENTS:
        return _CLIENTS[scheduler]
    if scheduler.startswith("local"):
        try:
            n = int(scheduler.split(":", 1)[1]) if ":" in scheduler else len(os.sched_getaffinity(0))
        except ValueError:
            raise VfsError(f"bad scheduler {scheduler!r}: use local:N or an address") from None
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=20)
        except OSError as e:
            raise VfsError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    _CLIENTS[scheduler] = client
    return client


def close_clients() -> None:
    for key, client in list(_CLIENTS.items()):
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
        del _CLIENTS[key]


@lru_cache(maxsize=8)
def _open(path: str, image_root: str | None):
    from .cache import open_cache

    return open_cache(path, image_root=image_root)


def _scan_task(path: str, layer: str, start: int, stop: int, pqs, backend: str, delay: float = 0.0,
               tighten_k: int | None = None):
    """Worker side: scan rows [start, stop) of one layer for every prepared query (tightening the
    bounds of this block's own top ``tighten_k`` candidates)."""
    from .engine import kernel

    if delay:
        time.sleep(delay)
    c = _open(path, None)
    data = c.read(layer, start, stop)
    out = []
    for pq in pqs:
        r = kernel.scan(data.features, data.sqnorm, pq, scale=data.scale, qerr2=data.qerr2,
                        threads=1, backend=backend, tighten_k=tighten_k)
        out.append((r.score, r.offset, r.upper, r.lower))
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
        for out, (score, offset, upper, lower) in zip(outs, res):
            sl = slice(start, start + len(score))
            out["score"][sl], out["offset"][sl], out["upper"][sl], out["lower"][sl] = score, offset, upper, lower
    return outs


# -- indexing --------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _worker_model(name: str, weights: str | None):
    import torch

    from .models import load_model

    torch.set_num_threads(1)
    return load_model(name, weights)


def _index_task(path: str, chunk_ids: list[int], model: str, weights: str | None, batch_size: int,
                max_pixels: int, thumb_size: int) -> int:
    """Worker side: extract and write whole chunks (idempotent: a retried task rewrites them)."""
    import zarr

    from .cache import PENDING
    from .extract import IndexReport, _run
    from .transforms import Transform

    lm = _worker_model(model, weights)
    root = zarr.open_group(path, mode="r+")
    meta = dict(root.attrs["vfsearch"])
    status = root["images/status"][:]
    paths = [str(p) for p in root["images/path"][:]]
    chunk = int(meta["chunk"])
    rows = [r for c in chunk_ids for r in range(c * chunk, min(len(status), (c + 1) * chunk))
            if status[r] == PENDING]
    if not rows:
        return 0
    rep = IndexReport(cache=None)
    _run(root, meta, lm, Transform.from_dict(meta["transform"]), list(meta["layers"]),
         meta["layer_info"], np.array(rows), status, paths, Path(meta["image_root"]),
         batch_size=batch_size, workers=0, device="cpu", thumb_size=thumb_size,
         max_pixels=max_pixels, progress=False, report=rep, max_batches=None)
    return rep.indexed


def index_distributed(client, path: Path, pending: np.ndarray, chunk: int, lm, *, batch_size: int,
                      max_pixels: int, thumb_size: int, chunks_per_task: int = 1, progress=True) -> int:
    """Submit one task per group of pending chunks; workers write disjoint chunks."""
    from distributed import as_completed

    from .models import available_models

    if lm.name not in available_models() and not lm.name.startswith(("torchvision:", "timm:")):
        raise VfsError(f"distributed indexing needs a named model (got {lm.name!r}); "
                       "custom nn.Modules index on one machine")
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
    if bar is not None:
        bar.close()
    return done
