"""Importing the reference library's caches: a Zarr v2 group of (N, C, H, W) float arrays in
dataset order, written here the way its ``precompute`` writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from vfsearch import open_cache, search
from vfsearch.errors import BadParameter, CacheMismatch, DatasetError
from vfsearch.importing import imagefolder, import_reference, parse_transform


def _reference_cache(path: Path, arrays: dict[str, np.ndarray], chunk: int = 500) -> None:
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    for name, a in arrays.items():
        g.create_array(name, shape=a.shape, chunks=(chunk,) + a.shape[1:], dtype=a.dtype)[:] = a


@pytest.fixture(scope="module")
def reference(small_cache, tmp_path_factory):
    """The small cache's f32 features of both layers in the reference layout (NCHW), with the
    image list in the cache's order."""
    c = small_cache
    d = tmp_path_factory.mktemp("ref")
    ids = np.arange(len(c))
    arrays = {layer: c.rows_features(layer, ids).transpose(0, 3, 1, 2).copy()
              for layer in c.layers}
    _reference_cache(d / "ref.zarr", arrays, chunk=5)
    (d / "list.txt").write_text("\n".join(str(c.abspath(i)) for i in ids) + "\n")
    return c, d


def test_an_imported_cache_searches_like_the_indexed_one(reference, tmp_path):
    c, d = reference
    rep = import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "imp",
                           arrays=["blocks.10"], model="efficientnet-lite0", chunk=4, workers=0)
    imp = rep.cache
    assert rep.imported == len(c) and imp.layers == ["blocks.10"] and imp.grid() == (14, 14)
    assert imp.valid.all() and imp.image_size(3) == c.image_size(3)
    assert imp.thumbnail(3)[:2] == b"\xff\xd8"
    assert imp.model == c.model and imp.weights_hash == c.weights_hash
    for q, kw in ((4, {"box": (60, 80, 200, 190)}), (7, {"whole": True}), (2, {"mode": "global"})):
        a = search(c, q, layer="blocks.10", k=6, **kw)
        b = search(imp, q, k=6, **kw)
        assert list(a.ids) == list(b.ids)
        assert np.allclose(a.top_scores, b.top_scores, atol=1e-6)
        assert np.allclose([m.box for m in a], [m.box for m in b])
    # external query images work because the model is known
    ext = search(imp, c.abspath(5), box=(10, 10, 150, 150), k=1, exclude_self=False)
    assert ext[0].id == 5


def test_import_with_a_transform_two_layers_and_resume(reference, tmp_path):
    c, d = reference
    kw = dict(arrays=["blocks.15", "blocks.10"], layers=["b15", "b10"], transform="crop:256:224",
              dtype="f16", chunk=4, workers=0)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "imp", progress=stop, **kw)
    half = open_cache(tmp_path / "imp")
    assert 0 < half.valid.sum() < len(c)
    rep = import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "imp", **kw)
    imp = rep.cache
    assert rep.imported == len(c) - 8 and imp.valid.all() and imp.layers == ["b15", "b10"]
    assert imp.model == "imported"
    a = search(c, 4, layer="blocks.15", box=(60, 80, 200, 190), k=5)
    b = search(imp, 4, layer="b15", box=(60, 80, 200, 190), k=5)
    assert list(a.ids) == list(b.ids)
    with pytest.raises(CacheMismatch):
        import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "imp",
                         arrays=["blocks.10"], transform="crop:256:224", workers=0)


def test_import_refuses_bad_input_with_the_reason(reference, tmp_path):
    c, d = reference
    ok = dict(model="efficientnet-lite0", workers=0)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(str(c.abspath(i)) for i in range(len(c) - 1)))
    with pytest.raises(DatasetError, match="17 images were given but the arrays hold 18"):
        import_reference(d / "ref.zarr", short, tmp_path / "a", arrays=["blocks.10"], **ok)
    with pytest.raises(DatasetError, match="no array 'nope'") as e:
        import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "b", arrays=["nope"], **ok)
    assert e.value.param == "array"
    bad = tmp_path / "bad.zarr"
    _reference_cache(bad, {"flat": np.zeros((18, 5), np.float32),
                           "ints": np.zeros((18, 2, 2, 2), np.int32)})
    with pytest.raises(DatasetError, match="N, C, H, W"):
        import_reference(bad, d / "list.txt", tmp_path / "c", arrays=["flat"], **ok)
    with pytest.raises(DatasetError, match="not float"):
        import_reference(bad, d / "list.txt", tmp_path / "d", arrays=["ints"], **ok)
    with pytest.raises(BadParameter, match="exactly one"):
        import_reference(d / "ref.zarr", d / "list.txt", tmp_path / "e", arrays=["blocks.10"],
                         workers=0)
    with pytest.raises(BadParameter, match="crop:RESIZE:SIZE"):
        parse_transform("centre:224")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_imagefolder_order(tmp_path):
    from conftest import photo

    for cls, names in (("b", ["2.jpg", "10.jpg"]), ("a", ["z.png", "sub/y.jpg"]), ("c", [])):
        for name in names:
            p = tmp_path / "f" / cls / name
            p.parent.mkdir(parents=True, exist_ok=True)
            photo(seed=len(name)).save(p)
        (tmp_path / "f" / cls).mkdir(parents=True, exist_ok=True)
    (tmp_path / "f" / "a" / "notes.txt").write_text("x")
    s = imagefolder(tmp_path / "f")
    assert [it.path for it in s.items] == ["a/z.png", "a/sub/y.jpg", "b/10.jpg", "b/2.jpg"]
    assert [it.label for it in s.items] == ["a", "a", "b", "b"]


def test_import_command(reference, tmp_path):
    from vfsearch.cli import main

    c, d = reference
    r = CliRunner().invoke(main, ["import-vfs", str(d / "ref.zarr"), "--array", "blocks.10",
                                  "--images", str(d / "list.txt"), "--out", str(tmp_path / "x"),
                                  "--transform", "squash:224", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "imported 18 images" in r.output
    assert open_cache(tmp_path / "x").transform.mode == "squash"
    r = CliRunner().invoke(main, ["import-vfs", str(d / "ref.zarr"), "--array", "nope",
                                  "--images", str(d / "list.txt"), "--out", str(tmp_path / "y"),
                                  "--transform", "squash:224", "-q"])
    assert r.exit_code == 2 and "--array" in r.output
