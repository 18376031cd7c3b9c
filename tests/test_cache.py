"""The cache contract: every storage variant (dtype × refine × compression) passes the same
suite, as zarr's store tests do; the format-version policy (older caches readable, upgraded in
place and resumably, newer ones refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vfsearch import search
from vfsearch.cache import (
    FORMAT_VERSION,
    INDEXED,
    PENDING,
    SKIPPED,
    CacheWriter,
    RowRecord,
    open_cache,
    synthetic_cache,
    upgrade,
)
from vfsearch.engine.searcher import exact_scores
from vfsearch.errors import CacheMismatch, CacheOutdated
from vfsearch.transforms import Transform

VARIANTS = [("int8", "f32", "zstd"), ("int8", "f16", "lz4"), ("int8", "none", "none"),
            ("int8", "f32", "none"), ("f16", "none", "zstd"), ("f32", "none", "none")]
N, H, W, C, CHUNK = 37, 5, 6, 24, 8


def _features(n=N, seed=0, nonnegative=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, H, W, C)).astype(np.float32)
    return np.maximum(x, 0) if nonnegative else x


def _thumb(i: int) -> bytes:
    return b"\xff\xd8thumb" + str(i).encode()


def _build(path: Path, dtype, refine, compression, nonnegative=False) -> np.ndarray:
    """A cache written the way indexing writes it: chunk by chunk, status last; row 3 skipped."""
    x = _features(nonnegative=nonnegative)
    w = CacheWriter.create(path, model="synthetic", weights_hash="h", weights_path=None,
                           transform=Transform(), image_root=path.parent, dtype=dtype,
                           refine=refine, chunk=CHUNK, compression=compression,
                           layer_info={"L": {"channels": C, "grid": [H, W], "stride": 224 / W,
                                             "nonnegative": nonnegative, "kind": "test"}},
                           meta_columns=["split"])

    class Item:
        def __init__(self, i):
            self.path, self.label, self.meta = f"img/{i:03d}.jpg", f"c{i % 3}", {"split": "a"}

    w.grow(N)
    w.append_manifest(0, [Item(i) for i in range(N)])
    status = w.status()
    for c in range((N + CHUNK - 1) // CHUNK):
        rows = {}
        for r in range(c * CHUNK, min(N, (c + 1) * CHUNK)):
            feats = None if r == 3 else {"L": x[r]}
            rows[r] = RowRecord((100 + r, 80), (r, r), "" if feats else "broken", _thumb(r), feats)
        w.write_chunk(c, rows, status)
    return x


@pytest.fixture(params=VARIANTS, ids=["-".join(v) for v in VARIANTS])
def variant(request, tmp_path):
    dtype, refine, compression = request.param
    path = tmp_path / "c"
    x = _build(path, dtype, refine, compression)
    return open_cache(path), x, request.param


def _tol(dtype: str, x: np.ndarray) -> float:
    return {"f32": 1e-6, "f16": 2e-3 * np.abs(x).max(), "int8": np.abs(x).max() / 127 * 0.51}[dtype]


def test_records_and_status(variant):
    c, _x, (dtype, refine, compression) = variant
    assert len(c) == N and c.format_version == FORMAT_VERSION
    assert c.dtype == dtype and c.refine == (refine if dtype == "int8" else "none")
    assert c.compression == compression and c.layers == ["L"] and c.grid("L") == (H, W)
    assert list(np.flatnonzero(c.status == SKIPPED)) == [3] and c.valid.sum() == N - 1
    assert c.paths[5] == "img/005.jpg" and c.labels[5] == "c2" and c.column("split")[5] == "a"
    assert c.image_size(7) == (107, 80) and tuple(c.file_stats[7]) == (7, 7)
    assert c.skipped() == [("img/003.jpg", "broken")]
    assert c.thumbnail(9) == _thumb(9)
    assert c.thumbnails([9, 2, 9]) == [_thumb(9), _thumb(2), _thumb(9)]
    assert c.thumbnail_range(8, 11) == [_thumb(8), _thumb(9), _thumb(10)]


def test_features_rows_and_pooled(variant):
    c, x, (dtype, refine, _compression) = variant
    tol = _tol(dtype, x)
    for i in (0, 8, N - 1):
        assert np.abs(c.features(i, "L", exact=False) - x[i]).max() <= tol
    exact_tol = 1e-6 if (dtype == "f32" or refine == "f32") else max(tol, 2e-3 * np.abs(x).max())
    ids = np.array([N - 1, 0, 8, 0])
    rows = c.rows_features("L", ids)
    assert rows.shape == (4, H, W, C) and np.abs(rows - x[ids]).max() <= exact_tol
    assert (c.exact_rows("L", ids) is None) == (dtype != "int8" or refine == "none")
    assert np.allclose(c.pooled("L")[0], x[0].mean(axis=(0, 1)), atol=1e-6)
    assert not c.pooled("L")[3].any()  # the skipped row holds zeros
    d = c.read("L", 5, 20)
    assert d.start == 5 and d.n == 15 and d.sqnorm.shape == (15, H, W)
    deq = d.dequantised(np.arange(15))
    assert np.allclose(d.sqnorm, (deq.astype(np.float64) ** 2).sum(-1), rtol=1e-4, atol=1e-5)
    whole = c.load("L")
    assert c.is_loaded("L") and np.array_equal(whole.features[5:20], d.features)
    assert c.fits_in_memory("L") and c.feature_nbytes("L") >= x.size // 4  # loaded: it fits


def test_memory_budget_counts_the_page_cache_and_loaded_layers(small_cache, monkeypatch):
    """Right after writing a large cache most RAM is page cache: what fits is judged on the
    memory Linux can hand out (MemAvailable), and a layer already in RAM is never streamed."""
    import os

    from vfsearch.cache import reader
    from vfsearch.engine import searcher

    avail = reader.available_memory()
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert avail >= free * 0.9 and avail > 0  # free memory plus what the kernel can reclaim
    c = reader.FeatureCache(small_cache.path)
    monkeypatch.setattr(reader, "available_memory", lambda: 1024)
    assert not c.fits_in_memory("blocks.10")
    assert searcher._default_memory(c, "blocks.10") == 1 << 30  # streamed
    c.load("blocks.10")
    assert c.fits_in_memory("blocks.10") and searcher._default_memory(c, "blocks.10") is None


def test_search_equals_a_float64_reference(variant):
    c, x, (dtype, refine, _compression) = variant
    res = search(c, 11, box=(60, 60, 160, 140), k=5, return_scores=True)
    feats = c.rows_features("L", np.arange(N))
    best, _off, _ = exact_scores(feats, res.query.weights, res.query.features)
    best[3] = -np.inf  # skipped
    best[11] = -np.inf  # the query itself
    want = np.lexsort((np.arange(N), -best))[:5]
    assert list(res.ids) == list(want)
    if dtype != "int8" or refine != "none":
        assert np.allclose(res.top_scores, best[want], atol=1e-5)


def test_partial_chunk_writes_keep_the_other_rows(variant, tmp_path):
    c, x, (dtype, refine, compression) = variant
    w = CacheWriter.open(c.path)
    status = w.status()
    before = c.features(9, "L", exact=False)
    new = _features(1, seed=5)[0]
    status[10] = PENDING
    w.set_status(status, [10])
    assert open_cache(c.path).status[10] == PENDING
    w.write_chunk(1, {10: RowRecord((1, 1), (0, 0), "", b"t", {"L": new})}, status)
    c2 = open_cache(c.path)
    assert c2.status[10] == INDEXED and c2.thumbnail(10) == b"t"
    assert np.array_equal(c2.features(9, "L", exact=False), before)
    assert np.abs(c2.features(10, "L", exact=False) - new).max() <= _tol(dtype, new)


def test_stored_results_round_trip(variant):
    c, _x, _v = variant
    assert c.stored("map", "L", "tsne") is None
    w = CacheWriter.open(c.path)
    grid = np.arange(16, dtype=np.int32).reshape(4, 4)
    w.store("map", "L", "tsne", {"grid": grid}, {"side": 4, "note": "x"})
    w.store_blobs("map", "L", "tsne", "atlas", [b"p0", b"page1"], {"pages": 2})
    st = open_cache(c.path).stored("map", "L", "tsne")
    assert st.attrs["side"] == 4 and np.array_equal(st.array("grid"), grid)
    assert st.has("atlas") and st.blobs("atlas") == [b"p0", b"page1"]
    assert st.blob("atlas", 1) == b"page1"
    assert st.blob_attrs("atlas")["pages"] == 2 and st.count("atlas") == 2


def test_grow_keeps_rows(variant):
    c, _x, _v = variant
    before = c.features(N - 1, "L", exact=False)
    w = CacheWriter.open(c.path)
    w.grow(N + 5)
    c2 = open_cache(c.path)
    assert len(c2) == N + 5 and (c2.status[N:] == PENDING).all()
    assert np.array_equal(c2.features(N - 1, "L", exact=False), before)


# -- format versions -------------------------------------------------------------------------------


def _make_v1(path: Path) -> np.ndarray:
    """A cache as format 1 wrote it: no pooled arrays, maps under map/<layer>/<method>."""
    import shutil

    x = _build(path, "int8", "f32", "zstd")
    w = CacheWriter.open(path)
    w.store("map", "L", "tsne", {"grid": np.zeros((2, 2), np.int32)}, {"side": 2})
    (path / "map").mkdir()
    (path / "derived" / "map").rename(path / "map" / "tmp")
    for p in (path / "map" / "tmp").iterdir():
        p.rename(path / "map" / p.name)
    (path / "map" / "tmp").rmdir()
    shutil.rmtree(path / "derived")
    shutil.rmtree(path / "layers" / "L" / "pooled")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["vfsearch"]["format_version"] = 1
    (path / "zarr.json").write_text(json.dumps(meta))
    return x


def test_an_older_cache_reads_refuses_what_it_lacks_and_upgrades(tmp_path):
    path = tmp_path / "old"
    x = _make_v1(path)
    c = open_cache(path)
    assert c.format_version == 1 and not c.has("L", "pooled")
    assert len(search(c, 2, whole=True, k=3)) == 3  # what exists still works
    assert c.stored("map", "L", "tsne").attrs["side"] == 2  # found where format 1 kept it
    with pytest.raises(CacheOutdated, match="vfsearch upgrade"):
        c.pooled("L")
    # an interrupted upgrade resumes where it stopped
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upgrade(path, progress=stop_after_two)
    assert open_cache(path).format_version == 1
    calls.clear()
    added = upgrade(path, progress=lambda d, t: calls.append(d))
    assert calls[0] == 3  # the first two chunks were not redone
    assert "L/pooled" in added
    c = open_cache(path)
    assert c.format_version == FORMAT_VERSION
    assert np.allclose(c.pooled("L")[5], x[5].mean(axis=(0, 1)), atol=1e-6)
    assert c.stored("map", "L", "tsne").attrs["side"] == 2  # moved with the upgrade
    assert upgrade(path) == []


def test_the_upgrade_command(tmp_path):
    from vfsearch.cli import main

    path = tmp_path / "old"
    _make_v1(path)
    r = CliRunner().invoke(main, ["upgrade", str(path), "-q"])
    assert r.exit_code == 0, r.output
    assert f"from format 1 to {FORMAT_VERSION}" in r.output
    r = CliRunner().invoke(main, ["upgrade", str(path)])
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = CliRunner().invoke(main, ["upgrade", str(tmp_path / "nope")])
    assert r.exit_code == 3 and "no vfsearch cache" in r.output


def test_a_newer_or_unknown_format_is_refused(tmp_path):
    path = tmp_path / "c"
    synthetic_cache(path, 4, channels=8, grid=(2, 2))
    meta = json.loads((path / "zarr.json").read_text())
    for v, what in ((FORMAT_VERSION + 1, "newer vfsearch"), ("x", "unknown")):
        meta["attributes"]["vfsearch"]["format_version"] = v
        (path / "zarr.json").write_text(json.dumps(meta))
        with pytest.raises(CacheMismatch, match=what):
            open_cache(path)
