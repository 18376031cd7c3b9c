"""Indexing into the Zarr cache: contents, bad files skipped, resume, extend, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo

from vfsearch import CacheMismatch, index, open_cache
from vfsearch.cache import INDEXED, SKIPPED
from vfsearch.errors import BadParameter, OutputError, UnknownLayer, UnknownModel


def _arrays(cache, layer):
    g = cache.root[f"layers/{layer}"]
    return {k: g[k][:] for k in g.array_keys()}


def test_cache_holds_features_metadata_and_thumbnails(small_cache, model):
    c = small_cache
    assert len(c) == 18 and c.valid.all()
    assert c.model == "efficientnet-lite0" and c.weights_hash == model.weights_hash
    assert c.layers == ["blocks.15", "blocks.10"]
    assert c.grid("blocks.15") == (7, 7) and c.grid("blocks.10") == (14, 14)
    assert c.layer_info("blocks.15")["channels"] == 320
    assert c.layer_info("blocks.15")["nonnegative"] is False
    d = c.load("blocks.15")
    assert d.features.dtype == np.int8 and d.features.shape == (18, 7, 7, 320)
    # dequantised features are close to the refine copy; sqnorm matches the dequantised cells
    exact = c.features(0, "blocks.15")
    deq = c.features(0, "blocks.15", exact=False)
    assert np.abs(deq - exact).max() <= d.scale[0].max() * 0.51
    assert np.allclose(d.sqnorm[0], (deq ** 2).sum(-1), rtol=1e-4)
    assert np.allclose(d.qerr2[0], ((exact - deq) ** 2).sum(-1), rtol=1e-3, atol=1e-6)
    assert set(c.labels) == {"astronaut", "cat", "coffee", "horse", "rocket", "motorcycle"}
    assert c.thumbnail(0)[:2] == b"\xff\xd8" and max(c.image_size(0)) >= 256
    assert c.transform.to_dict()["size"] == 224


def test_features_equal_a_direct_forward_pass(small_cache, model):
    from vfsearch.extract import extract_image
    from vfsearch.images import load_image

    img = load_image(small_cache.abspath(4))
    direct = extract_image(img, model, "blocks.15", small_cache.transform)
    assert np.allclose(direct, small_cache.features(4, "blocks.15"), atol=1e-4)


def test_bad_files_are_skipped_and_recorded(tmp_path, model):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        photo(seed=i).save(src / f"ok{i}.jpg")
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("hello")
    rep = index(src, tmp_path / "c", model=model, workers=0, progress=False, chunk=2)
    c = rep.cache
    assert rep.indexed == 3 and len(rep.skipped) == 2
    reasons = dict(c.skipped())
    assert "empty file" in reasons["zero.jpg"] and "not a recognised" in reasons["text.jpg"]
    assert (c.status == INDEXED).sum() == 3 and (c.status == SKIPPED).sum() == 2


def _tiny_set(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo(96 + 8 * (i % 3), 80, seed=i).save(root / f"im{i:03d}.png")
    return root


def test_interrupted_run_resumes_to_identical_arrays(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 20)
    kw = dict(model=model, layers=["blocks.15", "blocks.5"], chunk=4, batch_size=3, workers=0,
              progress=False)
    full = index(src, tmp_path / "full", **kw).cache
    part = index(src, tmp_path / "part", max_batches=5, **kw).cache
    assert 0 < part.valid.sum() < 20  # stopped half-way (chunks 0..1 done)
    again = index(src, tmp_path / "part", **kw)
    assert again.indexed == 20 - part.valid.sum()
    for layer in ("blocks.15", "blocks.5"):
        a, b = _arrays(full, layer), _arrays(again.cache, layer)
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), (layer, k)
    assert np.array_equal(full.status, again.cache.status)


def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 24)
    args = ["index", str(src), "--chunk", "2", "--batch-size", "2", "--workers", "0", "-q",
            "--layer", "blocks.15", "--threads", "1"]
    ref = index(src, tmp_path / "ref", model=model, layers=["blocks.15"], chunk=2, batch_size=2,
                workers=0, progress=False, threads=1).cache
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vfsearch.cli", *args, "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
        try:
            done = int((open_cache(out).status != 0).sum())
        except Exception:  # noqa: BLE001 - cache not created yet
            done = 0
        if done >= 6:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 0 < done < 24, "the run should have been killed half-way"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c = open_cache(out)
    assert c.valid.all()
    a, b = _arrays(ref, "blocks.15"), _arrays(c, "blocks.15")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_new_images_are_added_and_changed_files_reindexed(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 5)
    kw = dict(model=model, chunk=4, workers=0, progress=False)
    c1 = index(src, tmp_path / "c", **kw).cache
    f2_before = c1.features(2)
    photo(200, 150, seed=99).save(src / "new.png")
    time.sleep(0.01)
    photo(120, 90, seed=42).save(src / "im002.png")
    os.utime(src / "im002.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    rep = index(src, tmp_path / "c", **kw)
    assert rep.added == 1 and rep.reindexed == 1 and rep.indexed == 2
    c2 = rep.cache
    assert len(c2) == 6 and c2.valid.all() and str(c2.paths[5]) == "new.png"
    assert not np.allclose(c2.features(2), f2_before)
    assert c2.image_size(2) == (120, 90)
    again = index(src, tmp_path / "c", **kw)
    assert again.indexed == 0


def test_other_transform_or_dtype_is_refused(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 2)
    index(src, tmp_path / "c", model=model, workers=0, progress=False)
    for kw, what in [({"mode": "whole"}, "transform"), ({"dtype": "f16"}, "dtype")]:
        with pytest.raises(CacheMismatch, match=what) as e:
            index(src, tmp_path / "c", model=model, workers=0, progress=False, **kw)
        assert e.value.param == "out"


def test_adding_a_layer_equals_a_fresh_cache_and_keeps_the_old_one(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 5)
    kw = dict(model=model, workers=0, progress=False, chunk=2, batch_size=2)
    index(src, tmp_path / "c", layers=["blocks.15"], **kw)
    before = _arrays(open_cache(tmp_path / "c"), "blocks.15")
    # killed after the first batch: the new layer stays hidden, then the same command finishes it
    index(src, tmp_path / "c", layers=["blocks.10"], max_batches=1, **kw)
    half = open_cache(tmp_path / "c")
    assert half.layers == ["blocks.15"]
    with pytest.raises(UnknownLayer, match="still being added"):
        half.layer_info("blocks.10")
    msgs = []
    rep = index(src, tmp_path / "c", layers=["blocks.10"], log=msgs.append, **kw)
    assert rep.indexed == 0 and "blocks.10" in msgs[0]
    c = open_cache(tmp_path / "c")
    assert c.layers == ["blocks.15", "blocks.10"]
    after = _arrays(c, "blocks.15")
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    fresh = index(src, tmp_path / "fresh", layers=["blocks.10"], **kw).cache
    a, b = _arrays(c, "blocks.10"), _arrays(fresh, "blocks.10")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # nothing left to do: said so
    msgs.clear()
    index(src, tmp_path / "c", layers=["blocks.10"], log=msgs.append, **kw)
    assert "nothing to do" in msgs[0]
    # new images get every layer
    photo(seed=99).save(src / "new.jpg")
    rep = index(src, tmp_path / "c", **kw)
    c = open_cache(tmp_path / "c")
    assert rep.added == 1 and c.valid.all()
    assert np.abs(c.features(5, "blocks.10")).max() > 0
    assert np.abs(c.features(5, "blocks.15")).max() > 0


def test_image_root_can_be_repointed(tmp_path, model):
    src = _tiny_set(tmp_path / "a" / "imgs", 2)
    index(src, tmp_path / "c", model=model, workers=0, progress=False)
    moved = tmp_path / "b"
    os.rename(tmp_path / "a", moved)
    c = open_cache(tmp_path / "c", image_root=moved / "imgs")
    assert c.abspath(1).exists()


def test_f16_and_f32_caches_and_nonnegative_head_as_uint8(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 3)
    c16 = index(src, tmp_path / "f16", model=model, dtype="f16", workers=0, progress=False).cache
    c32 = index(src, tmp_path / "f32", model=model, dtype="f32", workers=0, progress=False).cache
    assert c16.load().features.dtype == np.float16 and c32.load().features.dtype == np.float32
    assert np.allclose(c16.features(1), c32.features(1), atol=2e-2)
    ch = index(src, tmp_path / "head", model=model, layers=["head"], workers=0,
               progress=False).cache
    assert ch.load("head").features.dtype == np.uint8


def test_unknown_model_and_layer_and_unwritable_output(tmp_path, model):
    src = _tiny_set(tmp_path / "imgs", 1)
    with pytest.raises(UnknownModel, match="unknown model"):
        index(src, tmp_path / "c", model="no-such-net", progress=False)
    with pytest.raises(UnknownLayer, match="no hookable layer 'blocks.99'"):
        index(src, tmp_path / "c2", model=model, layers=["blocks.99"], progress=False)
    with pytest.raises(BadParameter, match="unknown preprocessing mode 'panorama'") as e:
        index(src, tmp_path / "c3", model=model, mode="panorama", progress=False)
    assert e.value.param == "mode"
    assert not (tmp_path / "c").exists() and not (tmp_path / "c2").exists()
    assert not (tmp_path / "c3").exists()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        index(src, afile / "sub", model=model, progress=False)
    with pytest.raises(OutputError, match="cannot write"):
        index(src, "/proc/vfsearch-cache", model=model, progress=False)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_read_rows_equals_zarr_for_any_range(tmp_path, compression):
    """cache.read_rows (raw chunk files for uncompressed local arrays, Zarr otherwise) returns
    exactly what Zarr returns: any range, edge chunk, never-written chunk (fill value)."""
    import zarr

    from vfsearch.cache import compressor, read_rows
    from vfsearch.cache.rows import raw_chunks as _raw_chunks

    root = zarr.open_group(str(tmp_path / "z"), mode="w")
    kw = {"compressors": None if compression == "none" else compressor(compression)}
    a = root.create_array("f", shape=(45, 3, 4), chunks=(8, 3, 4), dtype=np.float32,
                          fill_value=-1.5, **kw)
    b = root.create_array("u", shape=(45, 5), chunks=(8, 5), dtype=np.uint8, fill_value=7, **kw)
    rng = np.random.default_rng(0)
    a[:32] = rng.standard_normal((32, 3, 4)).astype(np.float32)  # rows 32.. never written
    b[:] = rng.integers(0, 255, (45, 5), dtype=np.uint8)
    a[40:45] = 2.0  # the edge chunk, partly
    assert (_raw_chunks(a) is not None) == (compression == "none")
    for lo, hi in [(0, 45), (0, 0), (3, 9), (8, 16), (7, 8), (30, 45), (33, 39), (44, 45),
                   (40, 60)]:
        for arr in (a, b):
            got = read_rows(arr, lo, hi)
            want = np.asarray(arr[lo:hi])
            assert got.dtype == want.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)
    # a chunk file cut short is an error, not silent garbage
    if compression == "none":
        f = tmp_path / "z" / "f" / "c" / "1" / "0" / "0"
        f.write_bytes(f.read_bytes()[:100])
        with pytest.raises(Exception, match="truncated"):
            read_rows(a, 8, 16)
