"""Importing the reference library's caches (Ulrich & Fong's VisualFeatureSearch code,
``caching.precompute``): a Zarr v2 group holding one (N, C, H, W) float array per layer, chunked
along N (500 images per chunk), in the order of the user's dataset, with nothing else stored.
:func:`import_reference` writes a vfsearch cache (NHWC, per-cell norms, 8-bit + refine or f16/f32,
pooled vectors, thumbnails and sizes from the images) whose transform comes from a named model or an
explicit transform, so matched boxes map to pixels. Resumable chunk by chunk, like indexing.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import DTYPES, REFINE, CacheWriter, FeatureCache, RowRecord
from .errors import BadParameter, CacheMismatch, DatasetError
from .images import ImageItem, ImageSet, discover, load_image, make_thumbnail
from .transforms import Transform

__all__ = ["ImportReport", "imagefolder", "import_reference", "parse_transform"]

#: the extensions torchvision's ImageFolder accepts
IMAGEFOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                          ".webp")


@dataclass
class ImportReport:
    cache: FeatureCache | None
    imported: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


def parse_transform(text: str) -> Transform:
    """``crop:RESIZE:SIZE`` (shorter side to RESIZE, centre SIZE crop) or ``squash:SIZE``, with
    ImageNet mean/std — the preprocessing the reference library's caches were made with."""
    m = re.fullmatch(r"crop:(\d+):(\d+)|squash:(\d+)", text.strip())
    if not m:
        raise BadParameter(f"a transform is crop:RESIZE:SIZE or squash:SIZE, got {text!r}",
                           param="transform")
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bilinear"}
    if m.group(3):
        s = int(m.group(3))
        return Transform(size=s, resize=s, mode="squash", **imagenet)
    return Transform(size=int(m.group(2)), resize=int(m.group(1)), mode="crop", **imagenet)


def imagefolder(folder: Path) -> ImageSet:
    """Images in torchvision ``ImageFolder`` order: class folders sorted, files sorted within
    each (recursively); the label is the class folder."""
    folder = Path(folder).expanduser().resolve()
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetError(f"{folder} has no class folders (ImageFolder layout: CLASS/IMAGE)",
                           param="images")
    items = []
    for cls in classes:
        for dirpath, _dirs, files in sorted(os.walk(folder / cls, followlinks=True)):
            for name in sorted(files):
                if name.lower().endswith(IMAGEFOLDER_EXTENSIONS):
                    rel = (Path(dirpath) / name).relative_to(folder).as_posix()
                    items.append(ImageItem(rel, cls, {}))
    return ImageSet(folder, items, [])


def _images(images) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    p = Path(images).expanduser()
    if p.is_dir():
        return imagefolder(p)
    return discover(p, label_from="parent")


def _open_source(path: Path, arrays: Sequence[str]):
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r", zarr_format=2)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{path} is not a Zarr v2 group: {e}", param="zarr") from None
    out = {}
    for name in arrays:
        if name not in g:
            have = ", ".join(sorted(g.array_keys())) or "none"
            raise DatasetError(f"{path} has no array {name!r} (it has: {have})", param="array")
        a = g[name]
        if a.ndim != 4:
            raise DatasetError(f"array {name!r} has shape {a.shape}; the reference layout is "
                               "(N, C, H, W)", param="array")
        if a.dtype.kind != "f":
            raise DatasetError(f"array {name!r} holds {a.dtype}, not float features",
                               param="array")
        out[name] = a
    ns = {a.shape[0] for a in out.values()}
    if len(ns) != 1:
        raise DatasetError(f"the arrays hold different numbers of images: "
                           f"{ {k: a.shape[0] for k, a in out.items()} }", param="array")
    return out


def _describe(path: str, thumb_size: int, max_pixels: int):
    """Worker side: (thumbnail, size, stat, error) of one image."""
    try:
        st = os.stat(path)
        stat = (int(st.st_size), int(st.st_mtime_ns))
    except OSError:
        stat = (-1, -1)
    try:
        img = load_image(path, max_pixels=max_pixels)
        return make_thumbnail(img, thumb_size), img.size, stat, ""
    except Exception as e:  # noqa: BLE001 - one bad file never aborts the import
        return b"", (0, 0), stat, f"image unreadable: {getattr(e, 'message', None) or e}"


def import_reference(zarr_path, images, out, *, arrays: Sequence[str],
                     layers: Sequence[str] | None = None, model: str | None = None,
                     transform: str | Transform | None = None, dtype: str = "int8",
                     refine: str = "f32", compression: str = "zstd", chunk: int = 500,
                     workers: int | None = None, thumb_size: int = 256,
                     max_pixels: int = 100_000_000,
                     progress: Callable[[int, int], None] | None = None,
                     log: Callable[[str], None] | None = None) -> ImportReport:
    """Import a reference-library cache at ``zarr_path`` (arrays ``arrays``, stored as
    ``layers``, default the array names) for the images ``images`` (a text list, a CSV with
    labels, or an ImageFolder-style folder) in the same order, into a vfsearch cache at
    ``out``. The transform comes from ``model`` (a registered model name, whose name and weights
    hash are recorded, so external query images work) or ``transform`` (``crop:256:224`` /
    ``squash:224``: searches by dataset id only). Running it again resumes."""
    t0 = time.perf_counter()
    if dtype not in DTYPES or refine not in REFINE:
        raise BadParameter(f"dtype must be one of {DTYPES}, refine one of {REFINE}",
                           param="dtype" if dtype not in DTYPES else "refine")
    if (model is None) == (transform is None):
        raise BadParameter("give exactly one of a model (its transform is used) or a "
                           "transform", param="model")
    layers = list(layers) if layers else list(arrays)
    if len(layers) != len(arrays) or len(set(layers)) != len(layers):
        raise BadParameter("give one distinct layer name per array", param="layers")
    src = _open_source(Path(zarr_path).expanduser(), arrays)
    n = next(iter(src.values())).shape[0]
    imageset = _images(images)
    if len(imageset) != n:
        raise DatasetError(f"{len(imageset)} images were given but the arrays hold {n}; give the "
                           "images of the cache in the order it was computed", param="images")
    if model is not None:
        from .models import load_model

        lm = load_model(model)
        name, whash, wpath, tf = lm.name, lm.weights_hash, lm.weights_path, lm.transform
    else:
        tf = transform if isinstance(transform, Transform) else parse_transform(transform)
        name, whash, wpath = "imported", "none", None
    source = {"path": str(Path(zarr_path).expanduser().resolve()), "arrays": list(arrays)}
    out = Path(out).expanduser().resolve()
    if (out / "zarr.json").exists():
        w = CacheWriter.open(out)
        if w.meta.get("imported_from") != source or w.meta["layers"] != layers:
            raise CacheMismatch(f"{out} holds another cache; import into an empty directory",
                                param="out")
    else:
        info = _layer_info(src, arrays, layers, tf, dtype, chunk, log)
        w = CacheWriter.create(out, model=name, weights_hash=whash, weights_path=wpath,
                               transform=tf, image_root=imageset.root, layer_info=info,
                               dtype=dtype, refine=refine, chunk=chunk, compression=compression,
                               meta_columns=imageset.meta_columns)
        w.update_attrs(imported_from=source)
        w.grow(n)
        w.append_manifest(0, imageset.items)
    status = w.status()
    chunks = sorted({int(r) // w.chunk for r in np.flatnonzero(status == 0)})
    if log:
        log(f"importing {int((status == 0).sum())} of {n} images ({', '.join(arrays)} → "
            f"{', '.join(layers)}) as {w.meta['dtype']}")
    rep = ImportReport(cache=None)
    paths = [str(imageset.root / it.path) for it in imageset.items]
    nproc = workers if workers is not None else min(2, len(os.sched_getaffinity(0)))
    pool = ProcessPoolExecutor(nproc) if nproc > 0 else None
    try:
        for k, c in enumerate(chunks):
            s, e = c * w.chunk, min(n, (c + 1) * w.chunk)
            args = (paths[s:e], [thumb_size] * (e - s), [max_pixels] * (e - s))
            described = list(pool.map(_describe, *args, chunksize=8) if pool
                             else map(_describe, *args))
            feats = {layer: np.ascontiguousarray(np.asarray(src[a][s:e], np.float32)
                                                 .transpose(0, 2, 3, 1))
                     for a, layer in zip(arrays, layers, strict=True)}
            rows = {}
            for j, (thumb, size, stat, error) in enumerate(described):
                ok = not error
                rows[s + j] = RowRecord(size, stat, error, thumb,
                                        {layer: f[j] for layer, f in feats.items()} if ok else None)
                rep.imported += ok
                rep.skipped += not ok
            w.write_chunk(c, rows, status)
            if progress:
                progress(k + 1, len(chunks))
    finally:
        if pool:
            pool.shutdown()
    w.update_attrs(updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rep.cache = FeatureCache(out)
    rep.seconds = time.perf_counter() - t0
    return rep


def _layer_info(src, arrays, layers, tf: Transform, dtype: str, chunk: int, log) -> dict:
    """Channels, grid and stride of each array, and whether it is non-negative (one pass over
    the data when storing 8-bit: unsigned 8-bit has twice the resolution)."""
    info = {}
    for a, layer in zip(arrays, layers, strict=True):
        arr = src[a]
        _n, c, h, w = arr.shape
        nonneg = False
        if dtype == "int8":
            nonneg = True
            for s in range(0, arr.shape[0], chunk):
                if float(np.min(arr[s:s + chunk])) < 0:
                    nonneg = False
                    break
        info[layer] = {"channels": int(c), "grid": [int(h), int(w)], "stride": tf.size / w,
                       "nonnegative": nonneg, "kind": "imported"}
        if log:
            log(f"  {a}: {h}×{w}×{c}, {'non-negative' if nonneg else 'signed'}")
    return info
