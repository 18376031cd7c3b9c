"""Scale-out on a real Dask LocalCluster (worker processes): distributed indexing and search give
the same arrays and results as the local path, and a worker killed mid-search is survived."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
from conftest import photo  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from vfsearch import index, make_query, search_many  # noqa: E402
from vfsearch.engine import kernel  # noqa: E402
from vfsearch.engine.dask_backend import scan_distributed  # noqa: E402
from vfsearch.engine.searcher import _scan_all  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as lc, Client(lc) as client:
        from vfsearch import cluster as d

        d._CLIENTS["test-cluster"] = client
        yield lc, client
        d._CLIENTS.pop("test-cluster", None)


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_dir):
    folder = tmp_path_factory.mktemp("dask_imgs")
    k = 0
    for sub in sorted(sample_dir.iterdir()):
        for f in sorted(sub.iterdir()):
            (folder / f"{k:02d}_{f.name}").write_bytes(f.read_bytes())
            k += 1
    for i in range(4):
        photo(200, 160, seed=i).save(folder / f"z{i}.png")
    return folder


def _arrays(cache):
    g = cache.root[f"layers/{cache.default_layer}"]
    return {k: g[k][:] for k in g.array_keys()}


def test_distributed_index_and_search_equal_the_local_path(cluster, images, model, tmp_path):
    kw = dict(model=model, layers=["blocks.10"], chunk=4, batch_size=4, progress=False)
    local = index(images, tmp_path / "local", workers=0, threads=1, **kw).cache  # workers use 1
    dist = index(images, tmp_path / "dist", scheduler="test-cluster", **kw).cache
    assert dist.valid.all() and len(dist) == len(local)
    a, b = _arrays(local), _arrays(dist)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    qs = [make_query(local, 3, whole=True), make_query(local, 7, box=(40, 40, 180, 160))]
    r_local = search_many(local, qs, k=6, return_scores=True)
    r_dist = search_many(local, qs, k=6, return_scores=True, scheduler="test-cluster")
    for x, y in zip(r_local, r_dist, strict=True):
        assert list(x.ids) == list(y.ids)
        assert np.array_equal(x.top_scores, y.top_scores)
        assert [m.box for m in x] == [m.box for m in y]
        assert np.array_equal(x.scores, y.scores)


def test_full_mode_on_the_cluster_equals_the_local_path(cluster, images, model, tmp_path):
    """Index mode full (portraits stored transposed, padding zeroed) written by the workers,
    and its two-orientation scan on the workers: the same bytes and results as locally."""
    for i in range(3):
        photo(160, 240, seed=10 + i).save(images / f"zp{i}.png")  # portraits
    kw = dict(model=model, layers=["blocks.10"], chunk=4, batch_size=4, progress=False,
              mode="full")
    try:
        local = index(images, tmp_path / "local", workers=0, threads=1, **kw).cache
        dist = index(images, tmp_path / "dist", scheduler="test-cluster", **kw).cache
    finally:
        for i in range(3):
            (images / f"zp{i}.png").unlink()
    assert local.transposed("blocks.10").sum() >= 3
    a, b = _arrays(local), _arrays(dist)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    portrait = int(np.flatnonzero(local.transposed("blocks.10"))[0])
    qs = [make_query(local, portrait, box=(20, 40, 140, 200)), make_query(local, 3, whole=True)]
    r_local = search_many(local, qs, k=6, return_scores=True)
    r_dist = search_many(local, qs, k=6, return_scores=True, scheduler="test-cluster")
    for x, y in zip(r_local, r_dist, strict=True):
        assert list(x.ids) == list(y.ids)
        assert [m.offset for m in x] == [m.offset for m in y]
        assert np.array_equal(x.scores, y.scores)


def test_killing_a_worker_mid_search_still_completes_identically(cluster, images, model, tmp_path):
    lc, client = cluster
    c = index(images, tmp_path / "c", model=model, layers=["blocks.10"], chunk=2, workers=0,
              progress=False).cache
    pq = kernel.PreparedQuery.from_grid(make_query(c, 5, whole=True).features,
                                        make_query(c, 5, whole=True).weights)
    ref = _scan_all(c, "blocks.10", [pq], memory=None, backend="auto", threads=1)[0]
    pids = list(client.run(os.getpid).values())
    killer = threading.Timer(1.5, lambda: os.kill(pids[0], signal.SIGKILL))
    killer.start()
    t = time.time()
    out = scan_distributed(c, "blocks.10", [pq], client, rows=2, delay=0.4)[0]
    killer.join()
    assert time.time() - t > 1.5  # the kill happened while tasks were running
    for key in ("score", "offset", "upper", "lower"):
        assert np.array_equal(ref[key], out[key]), key
    # the cluster replaces the dead worker
    deadline = time.time() + 30
    while len(client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(client.scheduler_info()["workers"]) == 2, "the dead worker was not replaced"
