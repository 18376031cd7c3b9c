"""Dask clients: ``"local:N"`` (a ``LocalCluster`` of N single-threaded worker processes,
started on demand and reused in this process) or the address of a running scheduler."""

from __future__ import annotations

import os

from .errors import BackendUnavailable, BadParameter

__all__ = ["get_client"]

_CLIENTS: dict[str, object] = {}


def get_client(scheduler: str):
    """A ``distributed.Client`` for ``"local:N"`` or a scheduler address (reused per process)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise BackendUnavailable("Dask is not installed (pip install 'dask[distributed]')",
                                 param="scheduler") from None
    if scheduler in _CLIENTS:
        return _CLIENTS[scheduler]
    if scheduler.startswith("local"):
        try:
            n = (int(scheduler.split(":", 1)[1]) if ":" in scheduler
                 else len(os.sched_getaffinity(0)))
        except ValueError:
            raise BadParameter(f"bad scheduler {scheduler!r}: use local:N or an address",
                               param="scheduler") from None
        if n < 1:
            raise BadParameter(f"bad scheduler {scheduler!r}: local:N needs N ≥ 1",
                               param="scheduler")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=20)
        except OSError as e:
            raise BackendUnavailable(f"cannot reach the Dask scheduler at {scheduler}: {e}",
                                     param="scheduler") from None
    _CLIENTS[scheduler] = client
    return client
