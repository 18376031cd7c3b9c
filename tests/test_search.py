"""The search engine with the real default model: self-match, planted crops, exact refine,
streaming, several queries at once, and clear errors for bad queries."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vfsearch import BadMask, BadQuery, index, make_query, search, search_many
from vfsearch.engine import exact_scores, kernel


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_region_finds_its_own_image_with_score_one_at_the_right_place(small_cache):
    c = small_cache
    box = (60, 80, 200, 190)
    res = search(c, 4, box=box, k=3, exclude_self=False)
    top = res[0]
    assert top.id == 4 and top.score == pytest.approx(1.0, abs=1e-6)
    assert _iou(top.box, box) > 0.95  # the query's own box carried to the best offset
    excluded = search(c, 4, box=box, k=3)
    assert 4 not in excluded.ids


def test_whole_image_query_ranks_crops_of_the_same_photo_first(small_cache):
    c = small_cache
    cat = [i for i, lab in enumerate(c.labels) if lab == "cat"]
    res = search(c, cat[0], whole=True, k=2)
    assert set(res.ids) == set(cat[1:])


def test_crop_pasted_into_another_photo_is_found_where_it_was_pasted(small_cache, tmp_path, model):
    src = Image.open(small_cache.abspath(4)).convert("RGB")  # a cat photo
    crop_box = (40, 40, 200, 200)
    crop = src.crop(crop_box)
    short = min(src.size)  # same scale as the source, so the crop spans the same cells
    canvas = Image.open(small_cache.abspath(0)).convert("RGB").resize((short * 5 // 4, short))
    paste_at = (short * 5 // 4 - 200, short - 190)
    canvas.paste(crop, paste_at)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(len(small_cache)):
        if small_cache.labels[i] != small_cache.labels[4]:  # no other crop of the same photo
            Image.open(small_cache.abspath(i)).convert("RGB").save(folder / f"d{i:02d}.png")
    canvas.save(folder / "planted.png")
    src.save(folder / "source.png")
    c = index(folder, tmp_path / "c", model=model, workers=0, progress=False).cache
    ids = {str(p): i for i, p in enumerate(c.paths)}
    res = search(c, ids["source.png"], box=crop_box, k=3)
    assert res[0].id == ids["planted.png"]
    pasted = (paste_at[0], paste_at[1], paste_at[0] + 160, paste_at[1] + 160)
    # the box lands on the pasted crop up to the grid's resolution (one cell = 32 input px)
    assert _iou(res[0].box, pasted) > 0.5


def test_8bit_search_equals_an_exact_float_search(small_cache, sample_dir, model, tmp_path):
    c8 = small_cache
    c32 = index(sample_dir, tmp_path / "f32", model=model, layers=["blocks.15", "blocks.10"],
                dtype="f32", workers=0, progress=False).cache
    rng = np.random.default_rng(0)
    for layer in ("blocks.15", "blocks.10"):
        for _ in range(4):
            i = int(rng.integers(len(c8)))
            w, h = c8.image_size(i)
            x0, y0 = rng.uniform(w * 0.2, w * 0.45), rng.uniform(h * 0.2, h * 0.45)
            box = (x0, y0, x0 + rng.uniform(30, w * 0.35), y0 + rng.uniform(30, h * 0.35))
            r8 = search(c8, i, box=box, layer=layer, k=8, return_scores=True)
            r32 = search(c32, i, box=box, layer=layer, k=8)
            assert list(r8.ids) == list(r32.ids)
            assert np.allclose(r8.top_scores, r32.top_scores, atol=1e-5)
            assert r8.stats["refined"] < len(c8)  # the bound prunes most rows
            # and both agree with the float64 reference computed straight from the formula
            feats = np.stack([c32.features(j, layer) for j in range(len(c32))])
            q = r32.query
            best, _, _ = exact_scores(feats, q.weights, q.features)
            best[i] = -np.inf
            assert list(np.argsort(-best, kind="stable")[:8]) == list(r32.ids)


def test_soft_mask_and_box_and_png_mask_agree(small_cache, tmp_path):
    c = small_cache
    w, h = c.image_size(2)
    box = (w * 0.2, h * 0.3, w * 0.6, h * 0.8)
    m = np.zeros((h, w), np.float32)
    m[int(h * 0.3):int(np.ceil(h * 0.8)), int(w * 0.2):int(np.ceil(w * 0.6))] = 1
    Image.fromarray((m * 255).astype(np.uint8)).save(tmp_path / "m.png")
    a = search(c, 2, box=box, k=5)
    b = search(c, 2, mask=m, k=5)
    p = search(c, 2, mask=str(tmp_path / "m.png"), k=5)
    assert list(a.ids) == list(b.ids) == list(p.ids)
    soft = m * 0.5
    s = search(c, 2, mask=soft, k=5)  # uniform scaling of the mask does not change cosine
    assert np.allclose(s.top_scores, b.top_scores, atol=1e-6)


def _central_box(c, i, frac=0.4):
    w, h = c.image_size(i)
    return (w * (0.5 - frac / 2), h * (0.5 - frac / 2), w * (0.5 + frac / 2), h * (0.5 + frac / 2))


def test_streaming_with_a_memory_budget_equals_in_memory(small_cache):
    box = _central_box(small_cache, 7)
    full = search(small_cache, 7, box=box, k=6, return_scores=True, memory=None)
    streamed = search(small_cache, 7, box=box, k=6, return_scores=True, memory=1)
    assert list(full.ids) == list(streamed.ids)
    assert np.array_equal(full.scores, streamed.scores)


def test_search_many_equals_single_searches_and_curve(small_cache):
    c = small_cache
    qs = [make_query(c, 1, box=_central_box(c, 1, 0.3)), make_query(c, 9, whole=True),
          make_query(c, 12, box=_central_box(c, 12, 0.5), layer="blocks.10")]
    many = search_many(c, qs, k=5, return_scores=True)
    for q, r in zip(qs, many, strict=True):
        one = search(c, q, k=5)
        assert list(one.ids) == list(r.ids)
        curve = r.sorted_scores()
        assert len(curve) == len(c) - 1 and curve[0] == pytest.approx(r[0].score, abs=1e-6)
        assert np.all(np.diff(curve) <= 0)


def test_search_passes_every_option_of_search_many(small_cache):
    """search's **options are exactly search_many's keywords (one list, SearchOptions)."""
    import inspect

    from vfsearch.engine.searcher import SearchOptions

    kw = [p.name for p in inspect.signature(search_many).parameters.values()
          if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert list(SearchOptions.__annotations__) == kw
    with pytest.raises(TypeError):
        search(small_cache, 0, whole=True, bogus=1)


def test_heat_map_max_is_the_match(small_cache):
    res = search(small_cache, 3, box=_central_box(small_cache, 3), k=2)
    m = res[0]
    heat = res.score_map(m.id)
    assert heat.max() == pytest.approx(m.score, abs=1e-6)
    assert np.unravel_index(heat.argmax(), heat.shape) == m.offset


def test_near_duplicates_are_suppressed(tmp_path, model, sample_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cat = sorted((sample_dir / "cat").iterdir())[0]
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(cat.read_bytes())
    for f in sorted((sample_dir / "coffee").iterdir()):
        (folder / f.name).write_bytes(f.read_bytes())
    c = index(folder, tmp_path / "c", model=model, workers=0, progress=False).cache
    qid = [str(p) for p in c.paths].index("a.jpg")
    plain = search(c, qid, whole=True, k=3)
    assert {str(c.paths[i]) for i in plain.ids[:2]} == {"b.jpg", "c.jpg"}
    dd = search(c, qid, whole=True, k=3, dedup=0.99)
    names = [str(c.paths[i]) for i in dd.ids]
    assert sum(n in ("b.jpg", "c.jpg") for n in names) == 1


def test_external_image_query_matches_the_dataset_copy(small_cache):
    path = small_cache.abspath(5)
    res = search(small_cache, str(path), box=_central_box(small_cache, 5), k=1)
    assert res[0].id == 5 and res[0].score == pytest.approx(1.0, abs=1e-4)


def test_bad_queries_give_clear_errors(small_cache, tmp_path):
    c = small_cache
    w, h = c.image_size(0)
    with pytest.raises(BadMask, match="empty"):
        search(c, 0, mask=np.zeros((h, w)))
    with pytest.raises(BadMask, match="mask size 10×10 ≠ image size"):
        search(c, 0, mask=np.ones((10, 10)))
    wide = next(i for i in range(len(c)) if c.image_size(i)[0] > c.image_size(i)[1] * 1.05)
    ww, wh = c.image_size(wide)
    edge = np.zeros((wh, ww), np.float32)
    edge[:, :2] = 1  # a thin strip the centre crop cuts away (a landscape image)
    with pytest.raises(BadMask, match="outside the part of the image the model sees"):
        search(c, wide, mask=edge)
    with pytest.raises(BadMask, match="outside"):
        search(c, 0, box=(w + 10, 0, w + 50, 40))
    with pytest.raises(BadQuery, match="exactly one"):
        search(c, 0)
    with pytest.raises(BadQuery, match="k must be"):
        search(c, 0, whole=True, k=0)
    from vfsearch.errors import NotFound

    with pytest.raises(NotFound, match="no image with id"):
        search(c, 10_000, whole=True)


def test_query_from_another_model_is_refused(small_cache, sample_dir, tmp_path):
    import contextlib
    import io

    from vfsearch import load_model

    with contextlib.redirect_stdout(io.StringIO()):
        lite1 = load_model("efficientnet-lite1")
    other = index(sample_dir / "cat", tmp_path / "lite1", model=lite1, workers=0,
                  progress=False).cache
    q = make_query(other, 0, whole=True)
    with pytest.raises(BadQuery, match="efficientnet-lite1"):
        search(small_cache, q)


def test_cli_search_prints_table_and_json(small_cache):
    cmd = [sys.executable, "-m", "vfsearch.cli", "search", str(small_cache.path), "--image", "3",
           "--box", "20,20,150,150", "-k", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "rank" in out.stdout and len(out.stdout.strip().splitlines()) == 5
    js = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    d = json.loads(js.stdout)
    assert len(d["matches"]) == 3
    assert {"id", "path", "label", "score", "box"} <= set(d["matches"][0])
    bad = subprocess.run(cmd[:-4] + ["--box", "1,2"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("layer", ["blocks.15", "blocks.10"])
def test_torch_backend_gives_the_same_results(small_cache, layer):
    """The torch path (the one used on a GPU with backend="torch:cuda") checked on the CPU."""
    from vfsearch.engine import kernel, torch_backend

    c = small_cache
    q = make_query(c, 6, box=_central_box(c, 6, 0.45), layer=layer)
    a = search(c, q, k=8, return_scores=True)
    b = search(c, q, k=8, return_scores=True, backend="torch")
    assert list(a.ids) == list(b.ids) and np.allclose(a.top_scores, b.top_scores, atol=1e-6)
    d = c.load(layer)
    pq = kernel.PreparedQuery.from_grid(q.features, q.weights)
    rk = kernel.scan(d.features, d.sqnorm, pq, scale=d.scale, qerr2=d.qerr2)
    rt = torch_backend.scan(d.features, d.sqnorm, pq, scale=d.scale, qerr2=d.qerr2, block=5)
    assert np.allclose(rk.score, rt.score, atol=2e-3)
    feats = np.stack([c.features(i, layer) for i in range(len(c))])
    exact, _, _ = exact_scores(feats, q.weights, q.features)
    assert np.all(rt.lower <= exact + 1e-6) and np.all(exact <= rt.upper + 1e-6)


# -- exact refine on synthetic caches: exact copies, the refine layout and its upgrade ----------


def _tiled_cache(path, base, copies, order, chunk=32):
    """An 8-bit cache (f32 refine) whose row i holds ``base[order[i]]`` (NHWC float32)."""
    from vfsearch.cache import synthetic_cache

    n = len(order)
    H, W, C = base.shape[1:]
    w = synthetic_cache(path, n, layer="L", channels=C, grid=(H, W), nonnegative=False,
                        refine="f32", chunk=chunk, compression="zstd")
    w.write_block(0, features={"L": base[order]}, path=[f"{i}.jpg" for i in range(n)],
                  label=[str(o) for o in order], size=[(224, 224)] * n, status=1)
    from vfsearch import open_cache

    return open_cache(path)


def _region_query(cache, qid, box):
    import dataclasses

    q = make_query(cache, qid, whole=True, layer="L")
    wts = np.zeros(q.weights.shape, np.float32)
    y0, x0, h, w = box
    wts[y0:y0 + h, x0:x0 + w] = 1
    return dataclasses.replace(q, weights=wts, mode="region")


def test_many_exact_copies_of_the_best_image_tie_and_rank_by_id(tmp_path):
    """60 exact copies of the query image among 400: every copy scores the same, the top 10 are
    the 10 lowest-id copies (the float64 reference's order), and the refine reads each candidate
    once (the copies, no more)."""
    from vfsearch.engine.reference import reference_scores

    rng = np.random.default_rng(40)
    base = rng.standard_normal((40, 14, 14, 24)).astype(np.float32)
    order = rng.integers(1, 40, 400)
    copies = rng.choice(np.arange(1, 400), 60, replace=False)
    order[copies] = 0
    order[0] = 0
    c = _tiled_cache(tmp_path / "c", base, 60, order)
    q = _region_query(c, 0, (5, 6, 3, 3))
    res = search(c, q, k=10)
    want = np.sort(copies)[:10]
    assert list(res.ids) == list(want)
    assert len(set(res.top_scores.tolist())) == 1 and res.top_scores[0] > 0.9999
    ref = reference_scores(base[order[:120]], q.weights, q.features)[0]  # a slice: 14 copies
    ref[0] = -np.inf
    in_slice = np.sort(copies[copies < 120])
    assert list(np.argsort(-ref, kind="stable")[:len(in_slice)]) == list(in_slice)
    assert res.stats["candidates"] == 60  # exact ties cannot be told apart by bounds
    assert res.stats["read"] == 1  # ... but their digests say they are one row: read once


def test_refine_digests_read_each_distinct_row_once_with_the_same_results(tmp_path):
    """The digests of the refine rows (format 4) group exact copies: the refine reads one row
    per distinct digest, and ranks, scores and offsets equal a refine that reads every
    candidate (a cache without digests, as before format 4). Rows that differ in one value
    have different digests."""
    import shutil

    import zarr

    from vfsearch import open_cache
    from vfsearch.cache.layout import row_digests

    rng = np.random.default_rng(43)
    base = rng.standard_normal((6, 9, 9, 40)).astype(np.float32)
    base[5] = base[4]
    base[5, 8, 8, 39] += 1e-6  # one value apart: another row
    order = rng.integers(0, 6, 300)
    order[:6] = np.arange(6)
    c = _tiled_cache(tmp_path / "c", base, 0, order, chunk=64)
    d = c._arr("L", "digest")[:]
    assert d.shape == (300, 16) and d.dtype == np.uint8
    assert np.array_equal(d, row_digests(c._arr("L", "refine")[:]))
    same = (d[:, None, :] == d[None, :, :]).all(-1)
    assert np.array_equal(same, order[:, None] == order[None, :])
    shutil.copytree(tmp_path / "c", tmp_path / "plain")
    root = zarr.open_group(str(tmp_path / "plain"), mode="r+")
    del root["layers/L/digest"]
    plain = open_cache(tmp_path / "plain")
    assert plain.distinct_rows("L", np.arange(5)) is None
    for qid, box in ((4, (3, 3, 3, 3)), (1, (0, 0, 2, 5))):
        q = _region_query(c, qid, box)
        a = search(c, q, k=12, return_scores=True)
        b = search(plain, q, k=12, return_scores=True)
        assert list(a.ids) == list(b.ids) and np.array_equal(a.scores, b.scores)
        assert [m.offset for m in a] == [m.offset for m in b]
        assert b.stats["read"] == b.stats["candidates"]
        cand = a.stats["candidates"]
        assert a.stats["read"] <= 6 and (cand <= 6 or a.stats["read"] < cand)


def test_a_format_3_cache_gains_its_digests_by_a_resumable_upgrade(tmp_path):
    import shutil

    import zarr

    from vfsearch import open_cache
    from vfsearch.cache import upgrade
    from vfsearch.cache.layout import FORMAT_VERSION

    rng = np.random.default_rng(44)
    base = rng.standard_normal((8, 5, 5, 12)).astype(np.float32)
    fresh = _tiled_cache(tmp_path / "new", base, 0, rng.integers(0, 8, 200), chunk=32)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    root = zarr.open_group(str(tmp_path / "old"), mode="r+")
    del root["layers/L/digest"]
    root.attrs["vfsearch"] = {**root.attrs["vfsearch"], "format_version": 3}
    calls = []

    def stop_after_three(i, n):
        calls.append(i)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upgrade(tmp_path / "old", progress=stop_after_three)
    half = open_cache(tmp_path / "old")
    assert half.format_version == 3 and half.meta["upgrade_digest"] == {"L": 3}
    rest = []
    assert upgrade(tmp_path / "old", progress=lambda i, n: rest.append(i)) == ["L/digest"]
    assert rest == [4, 5, 6, 7]  # 200 rows in chunks of 32: the 4 chunks left
    up = open_cache(tmp_path / "old")
    assert up.format_version == FORMAT_VERSION
    assert np.array_equal(up._arr("L", "digest")[:], fresh._arr("L", "digest")[:])


def test_a_loaded_layer_keeps_its_interleaved_copy_with_the_same_results(tmp_path):
    """FeatureCache.interleave keeps the cell-interleaved copy beside the loaded layer; the
    searches that scan it (the offsets path) give the same matches, scores and offsets."""
    from vfsearch import open_cache

    rng = np.random.default_rng(45)
    base = rng.standard_normal((50, 14, 14, 24)).astype(np.float32)
    _tiled_cache(tmp_path / "c", base, 0, rng.integers(0, 50, 400), chunk=64)
    plain, fast = open_cache(tmp_path / "c"), open_cache(tmp_path / "c")
    assert plain.load("L").inter is None
    assert fast.interleave("L") and fast.load("L").inter is not None
    assert fast.interleave("L")  # kept: made once
    for qid, box in ((3, (5, 6, 3, 3)), (9, (0, 0, 14, 2)), (11, (13, 13, 1, 1))):
        q = _region_query(plain, qid, box)
        a, b = search(plain, q, k=10), search(fast, q, k=10)
        assert list(a.ids) == list(b.ids) and np.array_equal(a.top_scores, b.top_scores)
        assert [m.offset for m in a] == [m.offset for m in b]
        pq = kernel.PreparedQuery.from_grid(q.features, q.weights)
        d = fast.load("L")
        kw = dict(scale=d.scale, qerr2=d.qerr2, path="offsets")  # the same path: bit for bit
        x = kernel.scan(d.features, d.sqnorm, pq, **kw)
        y = kernel.scan(d.features, d.sqnorm, pq, inter=d.inter, **kw)
        assert np.array_equal(x.score, y.score) and np.array_equal(x.upper, y.upper)


def test_equal_rows_stored_upright_and_transposed_are_scored_apart():
    from vfsearch.engine.searcher import _split_groups

    first, inverse = np.array([0, 1]), np.array([0, 1, 0, 0, 1])
    turned = np.array([False, False, True, False, True])
    f, inv = _split_groups((first, inverse), turned)
    rows = np.array([10, 20, 10, 10, 20])  # what each candidate holds
    keys = list(zip(rows.tolist(), turned.tolist(), strict=True))
    assert len(f) == len(set(keys)) == 4
    assert [keys[f[j]] for j in inv] == keys


def test_exact_copies_are_scored_once_in_the_refine():
    """The refine scores each distinct candidate row once: rows equal byte for byte share the
    result; rows whose sampled values agree but differ elsewhere are still told apart."""
    from vfsearch.engine import kernel
    from vfsearch.engine.orient import OrientedQuery, unique_rows

    rng = np.random.default_rng(7)
    base = rng.standard_normal((5, 14, 14, 24)).astype(np.float32)
    rows = base[[0, 1, 0, 2, 1, 0, 3, 4]].copy()
    rows[7] = rows[6]
    rows[7, 13, 13, 23] += 1e-3  # the last value: outside the sample (every 18th value)
    first, inverse = unique_rows(rows)
    assert np.array_equal(rows[first][inverse], rows)
    assert sorted(first.tolist()) == [0, 1, 3, 6, 7]  # base 0, 1, 2, 3 and the altered copy
    w = np.zeros((14, 14), np.float32)
    w[5:8, 6:9] = 1
    qf = base[2]
    oq = OrientedQuery(qf, w, (14, 14), False)
    got, off = oq.exact(rows, np.zeros(len(rows), bool))
    want, woff = kernel.exact_best(rows, w, qf)
    assert np.array_equal(got, want) and np.array_equal(off, woff)
    assert unique_rows(rows[:1])[0].tolist() == [0]


def _downgrade_to_format_2(path):
    """What a format-2 cache looked like: the refine copy zstd-compressed in 16-row chunks."""
    import zarr

    from vfsearch.cache.layout import compressor

    root = zarr.open_group(str(path), mode="r+")
    for layer in root.attrs["vfsearch"]["layers"]:
        key = f"layers/{layer}/refine"
        data = root[key][:]
        del root[key]
        a = root.create_array(key, shape=data.shape, chunks=(16,) + data.shape[1:],
                              dtype=data.dtype, fill_value=0, compressors=compressor("zstd"))
        a[:] = data
        del root[f"layers/{layer}/digest"]  # format 4
    attrs = dict(root.attrs["vfsearch"])
    attrs["format_version"] = 2
    root.attrs["vfsearch"] = attrs


def test_a_format_2_cache_upgrades_in_place_resumably_to_the_same_results(tmp_path):
    import shutil

    from vfsearch import open_cache
    from vfsearch.cache import upgrade
    from vfsearch.cache.layout import FORMAT_VERSION
    from vfsearch.cache.rows import raw_chunks

    rng = np.random.default_rng(41)
    base = rng.standard_normal((30, 7, 7, 40)).astype(np.float32)
    order = rng.integers(0, 30, 150)
    fresh = _tiled_cache(tmp_path / "new", base, 0, order, chunk=32)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    _downgrade_to_format_2(tmp_path / "old")
    old = open_cache(tmp_path / "old")
    assert old.format_version == 2 and raw_chunks(old._arr("L", "refine")) is None
    assert raw_chunks(fresh._arr("L", "refine")) is not None  # format 3: one row, one read
    q = _region_query(fresh, 3, (2, 2, 3, 3))
    a = search(fresh, q, k=8, return_scores=True)
    b = search(old, q, k=8, return_scores=True)  # readable as is, only slower
    assert list(a.ids) == list(b.ids) and np.array_equal(a.top_scores, b.top_scores)

    calls = []

    def stop_after_two(i, n):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # interrupted half-way through the copy
        upgrade(tmp_path / "old", progress=stop_after_two)
    assert open_cache(tmp_path / "old").format_version == 2
    upgrade(tmp_path / "old")  # resumes
    up = open_cache(tmp_path / "old")
    assert up.format_version == FORMAT_VERSION and raw_chunks(up._arr("L", "refine")) is not None
    assert not (tmp_path / "old" / "layers" / "L" / "refine.v3").exists()
    assert np.array_equal(up._arr("L", "refine")[:], fresh._arr("L", "refine")[:])
    assert np.array_equal(up._arr("L", "digest")[:], fresh._arr("L", "digest")[:])
    c = search(up, q, k=8, return_scores=True)
    assert list(c.ids) == list(a.ids) and np.array_equal(c.scores, a.scores)
    assert upgrade(tmp_path / "old") == []  # nothing left to do


def test_refine_rows_are_read_one_by_one(tmp_path):
    """The format-3 refine copy: scattered rows (repeats, any order) read straight from the chunk
    files equal Zarr's reading; a chunk never written reads as the fill value."""
    from vfsearch.cache.rows import read_ids, take_rows

    rng = np.random.default_rng(42)
    base = rng.standard_normal((10, 3, 4, 5)).astype(np.float32)
    c = _tiled_cache(tmp_path / "c", base, 0, rng.integers(0, 10, 70), chunk=32)
    ref = c._arr("L", "refine")
    ids = np.array([69, 0, 33, 33, 16, 15, 68])
    np.testing.assert_array_equal(read_ids(ref, ids), take_rows(ref, ids))
    for f in (tmp_path / "c" / "layers" / "L" / "refine" / "c").glob("4/*/*/*"):
        f.unlink()  # rows 64..69 were never written
    got = read_ids(ref, ids)
    assert np.all(got[0] == 0) and np.all(got[-1] == 0)
    np.testing.assert_array_equal(got[1:-1], take_rows(ref, ids[1:-1]))
    with pytest.raises(IndexError):
        read_ids(ref, [70])


def test_bench_layers_runs_and_checks_exactness(tmp_path):
    """vfsearch bench --shape: tiled synthetic maps, every timing present, top-10 = float64."""
    from vfsearch.bench import run_layers

    res = run_layers(shapes=["6x5x24"], n=600, queries=(3,), rounds=1, reference=True,
                     workdir=tmp_path, out=tmp_path / "out", log=lambda *_: None)
    row = res["rows"][0]
    assert row["shape"] == "6x5x24" and row["label"] == "synthetic" and row["n"] == 600
    assert all(v for v in row["exact"].values() if isinstance(v, bool))
    assert row["floor_s"] > 0 and row["reference_s"] > 0 and row["scan_s"] > 0
    assert (tmp_path / "out" / "bench_6x5x24.md").read_text().count("| 6x5x24 |") == 1
