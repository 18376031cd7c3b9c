"""Shared fixtures: a small real image set, and a small cache built with the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("VFSEARCH_CACHE_DIR",
                      str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "vfsearch"))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Six real photos with three variants each (18 images, labels = photo names)."""
    from vfsearch.datasets import SAMPLE_PHOTOS, sample_images

    full = sample_images(tmp_path_factory.mktemp("samples_all"), variants=3)
    keep = ["astronaut", "cat", "coffee", "horse", "rocket", "motorcycle"]
    assert set(keep) <= set(SAMPLE_PHOTOS)
    dest = tmp_path_factory.mktemp("samples")
    for name in keep:
        (dest / name).mkdir()
        for f in sorted((full / name).iterdir()):
            (dest / name / f.name).write_bytes(f.read_bytes())
    return dest


@pytest.fixture(scope="session")
def model():
    from vfsearch.engine.query import _model_for

    return _model_for("efficientnet-lite0")


@pytest.fixture(scope="session")
def small_cache(sample_dir, model, tmp_path_factory):
    """int8 cache (with f32 refine copy) of the sample images at two layers."""
    from vfsearch import index

    out = tmp_path_factory.mktemp("cache") / "c"
    rep = index(sample_dir, out, model=model, layers=["blocks.15", "blocks.10"], chunk=8,
                batch_size=8, workers=0, progress=False)
    return rep.cache


def photo(w=320, h=240, seed=0) -> Image.Image:
    """A smooth random colour image (compresses like a photo, decodes fast)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
