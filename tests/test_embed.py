"""The dataset map: gridify is a bijection, keeps neighbourhoods, tiled ≈ exact, stored +
reloaded."""

from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from vfsearch import open_cache
from vfsearch.embed import (
    atlas_page,
    build_atlas,
    compute_map,
    embed,
    gridify,
    knn_preservation,
    load_atlas,
    load_map,
    pooled_features,
)


def blobs(n, d=2, k=12, spread=0.15, seed=0):
    """n points in k Gaussian clusters of unequal size and spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    lab = rng.choice(k, n, p=rng.dirichlet(np.ones(k) * 2))
    x = centres[lab] + spread * rng.gamma(2, 1, k)[lab, None] * rng.normal(size=(n, d))
    return x.astype(np.float32), lab


def random_cells(n, seed=0):
    side = math.ceil(math.sqrt(n))
    perm = np.random.default_rng(seed).permutation(side * side)[:n]
    return np.stack([perm % side, perm // side], axis=1)


def check_bijection(cells, n):
    side = math.ceil(math.sqrt(n))
    assert cells.shape == (n, 2) and cells.dtype == np.int32
    assert cells.min() >= 0 and cells.max() < side
    flat = cells[:, 1].astype(np.int64) * side + cells[:, 0]
    assert len(np.unique(flat)) == n


def label_purity(cells, labels, k=2, seed=0):
    """Fraction of each point's k nearest grid neighbours that share its label."""
    c = cells.astype(float)
    d = (((c[:, None] - c[None]) ** 2).sum(-1)
         + np.random.default_rng(seed).random((len(c),) * 2) * 1e-6)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 100, 401, 1000])
def test_gridify_exact_is_bijection(n):
    pts, _ = blobs(n, seed=n)
    check_bijection(gridify(pts, seed=0), n)


@pytest.mark.parametrize("n", [1001, 2500])
def test_gridify_tiled_is_bijection(n):
    pts, _ = blobs(n, seed=n)
    check_bijection(gridify(pts, seed=0, exact_max=10, leaf=64), n)


def test_gridify_degenerate_points():
    check_bijection(gridify(np.zeros((50, 2))), 50)  # all identical
    line = np.stack([np.arange(30.0), np.zeros(30)], 1)
    check_bijection(gridify(line), 30)
    check_bijection(gridify(np.repeat(line, 40, axis=0), exact_max=10, leaf=64), 1200)
    with pytest.raises(ValueError):
        gridify(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_gridify_keeps_neighbourhoods_synthetic():
    pts, lab = blobs(1200, seed=3)
    cells = gridify(pts, seed=0)
    rand = random_cells(1200)
    kept = knn_preservation(pts, cells, k=10, sample=None)
    base = knn_preservation(pts, rand, k=10, sample=None)
    assert base < 0.03
    assert kept > 0.4 and kept > 15 * base
    # clusters stay together about as well as in the 2-D input itself (blobs overlap a little)
    assert label_purity(cells, lab, k=4) > 0.85 * label_purity(pts, lab, k=4)
    assert label_purity(rand, lab, k=4) < 0.3


def test_embed_and_gridify_high_dimensional_clusters():
    # 112-D like a pooled layer: clusters must stay together through t-SNE + gridify
    x, lab = blobs(300, d=112, k=8, spread=0.3, seed=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xy = embed(x, "tsne", seed=0)
    cells = gridify(xy, seed=0)
    check_bijection(cells, 300)
    # (cells on a cluster's border have neighbours of another cluster)
    assert label_purity(cells, lab, k=4) > 0.8
    assert label_purity(random_cells(300), lab, k=4) < 0.3
    assert knn_preservation(x, cells, k=10, sample=None) > 5 * knn_preservation(
        x, random_cells(300), k=10, sample=None)


def test_tiled_agrees_with_exact_on_3000_points():
    pts, _ = blobs(3000, seed=7)
    exact = gridify(pts, seed=0, exact_max=4000)
    tiled = gridify(pts, seed=0, exact_max=100, leaf=1024)
    check_bijection(exact, 3000)
    check_bijection(tiled, 3000)
    q_exact = knn_preservation(pts, exact, k=10)
    q_tiled = knn_preservation(pts, tiled, k=10)
    q_rand = knn_preservation(pts, random_cells(3000), k=10)
    assert q_tiled >= 0.9 * q_exact, (q_tiled, q_exact)
    assert q_tiled > 20 * q_rand


def test_gridify_is_seeded_and_reproducible():
    pts, _ = blobs(1500, seed=2)
    pts = np.round(pts, 1)  # many ties
    a = gridify(pts, seed=5, exact_max=10, leaf=128)
    assert np.array_equal(a, gridify(pts, seed=5, exact_max=10, leaf=128))
    x, _ = blobs(200, d=20, seed=4)
    assert np.array_equal(embed(x, seed=3), embed(x, seed=3))


@pytest.fixture
def cache_copy(small_cache, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(small_cache.path, dst)
    return open_cache(dst)


def test_pooled_features_match_the_mean_of_the_cells(cache_copy):
    """The stored pooled vectors are the mean of the float cells; without them (an older cache)
    the dequantised features are pooled, streamed block by block."""
    c = cache_copy
    for layer in c.layers:
        p = pooled_features(c, layer, normalize=False)
        streamed = pooled_features(c, layer, normalize=False, block_bytes=1, stored=False)
        for i in (0, len(c) - 1):
            assert np.allclose(p[i], c.features(i, layer).mean(axis=(0, 1)), atol=1e-6)
            assert np.allclose(streamed[i], c.features(i, layer, exact=False).mean(axis=(0, 1)),
                               atol=1e-5)
        q = pooled_features(c, layer)
        assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)


def test_map_on_real_cache_stored_and_reloaded(cache_copy):
    c = cache_copy
    labels = np.asarray(c.labels)  # 6 photos × 3 variants
    assert load_map(c, "blocks.10") is None
    res = compute_map(c, layer="blocks.10", seed=0, progress=False)
    n = len(c)
    assert res.side == 5 and res.n == n == res.attrs["n"]
    check_bijection(res.cell, n)
    feats = pooled_features(c, "blocks.10")
    # neighbourhoods are kept far better than by a random layout
    rand_purity = np.mean([label_purity(random_cells(n, s), labels) for s in range(50)])
    assert rand_purity < 0.2
    assert label_purity(res.cell, labels) >= 0.5
    rand_knn = np.mean([knn_preservation(feats, random_cells(n, s), k=2) for s in range(50)])
    assert knn_preservation(feats, res.cell, k=2) > 3 * rand_knn

    got = load_map(open_cache(c.path), "blocks.10", "tsne")
    assert got is not None and not got.stale
    assert np.array_equal(got.cell, res.cell) and np.allclose(got.xy, res.xy)
    for k in ("method", "seed", "side", "n", "perplexity", "seconds"):
        assert got.attrs[k] == res.attrs[k]
    g = c.stored("map", "blocks.10", "tsne").array("grid")
    assert np.array_equal(g, res.grid)
    assert sorted(g[g >= 0].tolist()) == list(range(n))
    assert load_map(c, "blocks.15") is None and load_map(c, "blocks.10", "umap") is None

    # reproducible: same seed → same map
    again = compute_map(c, layer="blocks.10", seed=0, progress=False, store=False)
    assert np.array_equal(again.cell, res.cell) and np.array_equal(again.xy, res.xy)

    # atlas: tile of grid cell (col, row) at ((col)·tile, (row)·tile) of page 0
    pages = build_atlas(c, got, tile=16, progress=False)
    assert len(pages) == 1
    im = np.asarray(Image.open(io.BytesIO(pages[0])).convert("RGB"), np.float32)
    assert im.shape == (5 * 16, 5 * 16, 3)
    assert load_atlas(c, "blocks.10") == pages == [atlas_page(c, "blocks.10", "tsne", 0)]
    i = int(res.grid[2, 3])
    if i < 0:
        i = int(res.grid[res.grid >= 0][0])
    col, row = res.cell[i]
    thumb = Image.open(io.BytesIO(c.thumbnail(i))).convert("RGB")
    w, h = thumb.size
    s = min(w, h)
    ref = np.asarray(thumb.resize((16, 16), Image.Resampling.BICUBIC,
                                  box=((w - s) // 2, (h - s) // 2,
                                       (w - s) // 2 + s, (h - s) // 2 + s)),
                     np.float32)
    tile = im[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16]
    assert np.abs(tile - ref).mean() < 20
    empty = np.argwhere(res.grid < 0)
    if len(empty):
        r, cc = empty[0]
        assert np.abs(im[r * 16 + 4:r * 16 + 12, cc * 16 + 4:cc * 16 + 12] - 24).max() < 12
    assert load_map(c, "blocks.10").attrs["atlas"]["pages"] == 1


def test_atlas_pages_split_the_grid(cache_copy):
    c = cache_copy
    res = compute_map(c, layer="blocks.15", seed=1, progress=False)
    # 2×2 tiles per page on a 5×5 grid: 3×3 pages, the last row/column one tile wide; tiny memory
    # budget → one pass per page
    pages = build_atlas(c, res, tile=8, page_tiles=2, progress=False, memory=1)
    assert len(pages) == 9
    sizes = [Image.open(io.BytesIO(p)).size for p in pages]
    assert sizes == [(16, 16), (16, 16), (8, 16)] * 2 + [(16, 8), (16, 8), (8, 8)]
    a = c.stored("map", "blocks.15", "tsne").blob_attrs("atlas")
    assert a["pages_x"] == a["pages_y"] == 3 and a["page_tiles"] == 2
    # single pass gives identical pages
    assert build_atlas(c, res, tile=8, page_tiles=2, progress=False, store=False) == pages


def test_map_skips_unindexed_rows_and_flags_stale(cache_copy):
    c = cache_copy
    status = c.root["images/status"]
    import zarr

    zarr.open_group(str(c.path), mode="r+")["images/status"][4] = 2  # skipped
    c.refresh()
    res = compute_map(c, layer="blocks.10", progress=False)
    assert res.n == len(c) - 1 and tuple(res.cell[4]) == (-1, -1) and np.isnan(res.xy[4]).all()
    check_bijection(res.cell[c.valid], len(c) - 1)
    assert res.side == math.ceil(math.sqrt(len(c) - 1))
    zarr.open_group(str(c.path), mode="r+")["images/status"][4] = 1
    c.refresh()
    assert load_map(c, "blocks.10").stale
    assert status.shape[0] == len(c)
    compute_map(c, layer="blocks.10", progress=False)
    assert not load_map(c, "blocks.10").stale
    zarr.open_group(str(c.path), mode="r+")["images/stat"][0] = [1, 2]  # row 0 re-indexed
    assert load_map(c, "blocks.10").stale


def test_map_command(cache_copy):
    from click.testing import CliRunner

    from vfsearch.cli import main

    r = CliRunner().invoke(main, ["map", str(cache_copy.path), "--layer", "blocks.15", "--seed",
                                  "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "5×5 grid" in r.output and "atlas: 1 page" in r.output
    m = load_map(open_cache(cache_copy.path), "blocks.15")
    assert m.seed == 2 and m.attrs["atlas"]["pages"] == 1
    r = CliRunner().invoke(main, ["map", str(cache_copy.path), "--no-atlas", "-q"])
    assert r.exit_code == 0 and "atlas" not in r.output


@pytest.mark.slow
def test_umap_map(cache_copy):
    res = compute_map(cache_copy, layer="blocks.10", method="umap", seed=0, progress=False)
    check_bijection(res.cell, len(cache_copy))
    assert res.attrs["n_neighbors"] == len(cache_copy) - 1 or res.attrs["n_neighbors"] == 15
    assert load_map(cache_copy, "blocks.10", "umap") is not None
