"""The ``localize`` protocol (§4.4 of the paper): a crop of one image is pasted at a known box
into a distractor image; the crop's region is queried in its source and the matched box is
compared (IoU) with the pasted box, binned by area, next to the grid ceilings.

The planted set and its cache are built (and resumed) in a work folder. Progress bars of the
indexing are shown when ``progress`` is true; messages go to ``log`` when one is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError, EvalError, OutputError
from .metrics import AREA_BINS, area_bin, bootstrap_ci, cell_ceiling, iou, match_box, shift_ceiling
from .protocols import Arm, Log, _header, _make_query, _path_index

__all__ = [
    "DEFAULT_LOCALIZE_LAYERS",
    "localize_layer",
    "plant_crops",
    "prepare_localize",
    "run_localize",
]

DEFAULT_LOCALIZE_LAYERS = ("blocks.10", "blocks.15")


def _bin_sides() -> list[tuple[str, float, float]]:
    return [(name, math.sqrt(lo), math.sqrt(hi) if math.isfinite(hi) else math.inf)
            for name, lo, hi in AREA_BINS]


def _crop_region(tf, w: int, h: int) -> tuple[float, float, float, float]:
    """The part of a w×h image the model sees (its centre crop), in original pixels."""
    g = tf.geometry(w, h)
    x0, y0 = g.to_image(0, 0)
    x1, y1 = g.to_image(g.size, g.size)
    return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)


def plant_crops(sources: Sequence[Path], distractors: Sequence[Path], dest: Path, *, seed: int = 0,
                transform=None, sides: tuple[float, float] = (24.0, 300.0),
                margin: int = 2) -> list[dict]:
    """Paste a crop of each source image into a distractor image at a known box.

    Plant ``j`` uses ``sources[j]`` (each source once, so no other image in the set holds its
    crop) and a distractor drawn at random (with replacement) from ``distractors``, which must not
    contain any source. The pasted side (in the distractor's original pixels) is drawn
    log-uniformly inside one §4.4 area bin (bins cycle, so each gets a quarter of the plants),
    clipped to ``sides``. The source crop has the same size in model-input pixels (its side scales
    with the source's shorter side), both boxes lie inside the model's centre crop, and the planted
    image is written losslessly (PNG) to ``dest``. Returns one record per plant (file names are
    relative to ``dest``; boxes are (x0, y0, x1, y1) in original pixels).
    """
    from PIL import Image

    from ..images import load_image
    from ..transforms import Transform

    if not distractors:
        raise EvalError("no distractor images")
    if {Path(p).name for p in sources} & {Path(p).name for p in distractors}:
        raise EvalError("an image cannot be both a source and a distractor")
    tf = transform or Transform()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {p: _upright_size(p) for p in [*sources, *distractors]}
    bins = [(name, max(lo, sides[0]), min(hi, sides[1])) for name, lo, hi in _bin_sides()]
    bins = [b for b in bins if b[1] < b[2]]
    if not bins:
        raise EvalError(f"crop sides {sides} fall in no area bin")
    plants = []
    for j, src_p in enumerate(sources):
        _, lo, hi = bins[j % len(bins)]
        sw, sh = sizes[src_p]
        sreg = _crop_region(tf, sw, sh)
        room_s = (sreg[2] - sreg[0] - 2 * margin, sreg[3] - sreg[1] - 2 * margin)
        for _try in range(1000):
            dst_p = distractors[int(rng.integers(len(distractors)))]
            dw, dh = sizes[dst_p]
            dreg = _crop_region(tf, dw, dh)
            room_d = (dreg[2] - dreg[0] - 2 * margin, dreg[3] - dreg[1] - 2 * margin)
            dside = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            dside = max(math.ceil(lo), min(dside, math.ceil(hi) - 1))
            # same size in model-input pixels: side_src / shorter_src = side_dst / shorter_dst
            sside = round(dside * min(sw, sh) / min(dw, dh))
            if sside < 4 or dside > min(room_d) or sside > min(room_s):
                continue
            sx0 = math.ceil(sreg[0] + margin + rng.uniform(0, room_s[0] - sside))
            sy0 = math.ceil(sreg[1] + margin + rng.uniform(0, room_s[1] - sside))
            px0 = math.ceil(dreg[0] + margin + rng.uniform(0, room_d[0] - dside))
            py0 = math.ceil(dreg[1] + margin + rng.uniform(0, room_d[1] - dside))
            if (sx0 + sside <= sreg[2] and sy0 + sside <= sreg[3]
                    and px0 + dside <= dreg[2] and py0 + dside <= dreg[3]):
                break
        else:
            raise EvalError(f"cannot place a {lo:.0f}–{hi:.0f} px crop of {src_p.name}: the images "
                            f"are too small for crop sides {sides}")
        src = load_image(src_p)
        dst = load_image(dst_p).copy()
        crop = src.crop((sx0, sy0, sx0 + sside, sy0 + sside))
        if sside != dside:
            crop = crop.resize((dside, dside), Image.Resampling.BICUBIC)
        dst.paste(crop, (px0, py0))
        fname = f"planted_{j:04d}.png"
        dst.save(dest / fname)
        plants.append({
            "planted": fname, "source": src_p.name, "distractor": dst_p.name,
            "crop": [sx0, sy0, sx0 + sside, sy0 + sside],
            "pasted": [px0, py0, px0 + dside, py0 + dside],
            "area": float(dside * dside), "bin": area_bin(dside * dside),
        })
    return plants


def _upright_size(path) -> tuple[int, int]:
    """(width, height) of an image file as decoded (EXIF orientation applied), without decoding."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        try:
            orient = im.getexif().get(274, 1)
        except Exception:  # noqa: BLE001
            orient = 1
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def _list_images(folder: Path) -> list[Path]:
    from ..images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def prepare_localize(images_dir, work, *, n: int = 200, pool: int = 200, seed: int = 0,
                     layers: Sequence[str] = DEFAULT_LOCALIZE_LAYERS, sides=(24.0, 300.0),
                     label_pattern: str | None = None, model=None, progress: bool = True,
                     log: Log | None = None, index_kw: dict | None = None):
    """Build (or resume) the planted image set in ``work/images`` and its cache ``work/cache``.

    ``n`` source images and up to ``pool`` distractor images, all large enough for the largest
    crop, are drawn from ``images_dir`` and copied; each source gives one planted image (a
    distractor with the source's crop pasted in). The cache holds sources, distractors and planted
    images. Returns ``(cache, plants, setup)``.
    """
    from .. import index
    from ..transforms import Transform

    images_dir = Path(images_dir).expanduser()
    work = Path(work).expanduser()
    if not images_dir.is_dir():
        raise DatasetError(f"images folder not found: {images_dir}")
    if model is not None and not isinstance(model, str):
        lm = model
    else:
        from ..models import DEFAULT_MODEL, load_model

        lm = load_model(model or DEFAULT_MODEL)
    tf = lm.transform if isinstance(lm.transform, Transform) else Transform()
    # the largest crop must fit inside the distractor's centre crop
    min_short = (math.ceil((sides[1] + 6) * tf.resize / tf.size) if tf.mode == "crop"
                 else math.ceil(sides[1] + 6))
    files = _list_images(images_dir)
    big = []
    for p in files:
        try:
            short = min(_upright_size(p))
        except Exception:  # noqa: BLE001 - unreadable files are simply not used
            short = 0
        if short >= min_short:
            big.append(p)
    if len(big) < 2:
        raise DatasetError(f"{images_dir}: need at least two images with a shorter side ≥ "
                           f"{min_short} px for crops up to {sides[1]:.0f} px (found {len(big)})")
    setup = {"images": str(images_dir.resolve()), "n": n, "pool": pool, "seed": seed,
             "sides": list(sides), "layers": list(layers), "model": lm.name,
             "files": hashlib.sha1("\n".join(p.name for p in big).encode()).hexdigest()[:12]}
    imgdir = work / "images"
    manifest = work / "plants.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("setup") != setup:
            raise EvalError(f"{work} holds a localisation set built with other settings "
                            f"({saved.get('setup')}); use another folder or delete it",
                            param="work")
        plants = saved["plants"]
    else:
        if imgdir.exists() and any(imgdir.iterdir()):
            raise OutputError(f"{imgdir} exists and is not a vfsearch localisation set; use an "
                              "empty folder", param="work")
        if len(big) < n + 1:
            raise DatasetError(f"{images_dir}: {n} plants need {n} source images plus distractors "
                               f"with a shorter side ≥ {min_short} px; found {len(big)} (plant "
                               "fewer or use smaller crops)", param="n")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(big))
        sources = [big[i] for i in order[:n]]
        distractors = [big[i] for i in order[n:n + pool]]
        imgdir.mkdir(parents=True, exist_ok=True)
        try:
            for p in [*sources, *distractors]:
                shutil.copy2(p, imgdir / p.name)
        except OSError as e:
            raise OutputError(f"cannot write {imgdir}: {e}") from None
        plants = plant_crops([imgdir / p.name for p in sources],
                             [imgdir / p.name for p in distractors],
                             imgdir, seed=seed + 1, transform=tf, sides=sides)
        manifest.write_text(json.dumps({"setup": setup, "plants": plants}, indent=1))
    kw = dict(index_kw or {})
    label_kw = {"label_pattern": label_pattern} if label_pattern else {"label_from": None}
    rep = index(imgdir, work / "cache", model=lm, layers=list(layers), progress=progress, log=log,
                **label_kw, **kw)
    return rep.cache, plants, setup


def localize_layer(cache, plants: Sequence[dict], layer: str, k: int = 5) -> list[dict]:
    """Query each plant's crop in its source (one batched search) and measure the match."""
    from .. import search_many

    idx = _path_index(cache)
    qs = []
    for p in plants:
        if p["source"] not in idx or p["planted"] not in idx:
            raise EvalError(f"plant {p['planted']} or its source {p['source']} is missing from "
                            "the cache")
        qs.append(_make_query(cache, idx[p["source"]], box=tuple(p["crop"]), layer=layer))
    results = search_many(cache, qs, k=k)
    grid = cache.grid(layer)
    tf = cache.transform
    out = []
    for p, q, r in zip(plants, qs, results, strict=True):
        t = idx[p["planted"]]
        size = cache.image_size(t)
        geom = tf.geometry(*size)
        gt = tuple(float(v) for v in p["pasted"])
        ids = r.ids.tolist()
        rank = ids.index(t) if t in ids else None
        top1 = rank == 0
        iou1 = iou(r[0].box, gt) if top1 else 0.0
        # localisation given the right image: the planted image's best offset, whatever its rank
        if rank is not None:
            off = r[rank].offset
        else:
            smap = r.score_map(t)
            a, b = np.unravel_index(int(np.argmax(smap)), smap.shape)
            off = (int(a), int(b))
        box = match_box(q, off, geom, grid, size)
        out.append({
            "planted": p["planted"], "bin": p["bin"], "area": p["area"], "rank": rank,
            "top1": bool(top1), "iou": iou1, "iou_found": iou(box, gt),
            "box": [round(v, 2) for v in box],
            "ceiling_cells": cell_ceiling(gt, geom, grid, size),
            "ceiling_shift": shift_ceiling(q, gt, geom, grid, size),
            "query_cells": list(q.cell_box),
        })
    return out


def run_localize(images_dir, work, *, layers: Sequence[str] = DEFAULT_LOCALIZE_LAYERS,
                 n: int = 200, pool: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000,
                 sides=(24.0, 300.0),
                 label_pattern: str | None = None, model=None, progress: bool = True,
                 log: Log | None = None, index_kw: dict | None = None) -> dict:
    """The planted-crop localisation protocol (see :func:`plant_crops`), per layer and area bin."""
    cache, plants, setup = prepare_localize(images_dir, work, n=n, pool=pool, seed=seed,
                                            layers=layers, sides=sides,
                                            label_pattern=label_pattern, model=model,
                                            progress=progress, log=log, index_kw=index_kw)
    missing = [layer for layer in layers if layer not in cache.layers]
    if missing:
        raise EvalError(f"cache {cache.path} has no layer {', '.join(missing)}")
    arms = [Arm(f"{Path(work).name}:{layer}", cache, layer) for layer in layers]
    rows, per_plant = [], {}
    for arm in arms:
        t0 = time.perf_counter()
        recs = localize_layer(cache, plants, arm.layer, k)
        if log is not None:
            log(f"  {arm.name}: {len(recs)} planted queries in {time.perf_counter() - t0:.1f} s")
        per_plant[arm.layer] = recs
        for bname, _, _ in [*AREA_BINS, ("all", 0, 0)]:
            sel = [r for r in recs if bname == "all" or r["bin"] == bname]
            if not sel:
                continue
            row = {"arm": arm.name, "layer": arm.layer, "bin": bname, "n": len(sel),
                   "hit@1": float(np.mean([r["top1"] for r in sel])),
                   f"hit@{k}": float(np.mean([r["rank"] is not None for r in sel])),
                   "iou>=0.5": float(np.mean([r["iou"] >= 0.5 for r in sel]))}
            for key in ("iou", "iou_found", "ceiling_cells", "ceiling_shift"):
                ci = bootstrap_ci([r[key] for r in sel], n_boot=n_boot, seed=seed)
                row[key] = ci["mean"]
                row[key + "_lo"], row[key + "_hi"] = ci["lo"], ci["hi"]
            rows.append(row)
    out = _header("localize", arms, len(plants), k, seed, n_boot)
    out.update({"setup": setup, "images_in_cache": int(cache.valid.sum()), "rows": rows,
                "plants": plants, "per_plant": per_plant,
                "metric": "IoU of the top-1 matched box with the pasted box (0 when the top-1 "
                          "result is not the planted image)"})
    return out
