"""Quantitative evaluation protocols (the experiments of "Interactive Visual Feature Search" §4.3
and §4.4), each seeded, reproducible and reported with bootstrap confidence intervals.

* ``labels``    — average number of distinct labels in the top-k of N random queries (whole image,
  and random boxes of a few feature cells inside the model's crop).
* ``overlap``   — average ``|top-k(A) ∩ top-k(B)| / k`` of two arms (two layers of one cache, or
  two caches of the same image set) for the same queries.
* ``precision`` — precision@k by label (per-label table), and the spread of the top-k over a
  metadata column (fraction of results sharing the query's value, and where the rest come from).
* ``localize``  — a crop of one image is pasted at a known box into a distractor image; the crop's
  region is queried in its source and the matched box is compared (IoU) with the pasted box, binned
  by area as in §4.4, next to the grid ceilings (the best IoU the feature grid allows).

Everything here uses the public API (``index``, ``open_cache``, ``make_query``, ``search_many``);
``eval_cmd`` is the ``vfsearch eval`` command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .errors import DatasetError, NotFound, OutputError, VfsError

__all__ = [
    "AREA_BINS",
    "Arm",
    "EvalError",
    "QuerySpec",
    "area_bin",
    "bootstrap_ci",
    "cell_ceiling",
    "distinct_labels",
    "eval_cmd",
    "iou",
    "match_box",
    "overlap_fraction",
    "plant_crops",
    "precision_at_k",
    "run_labels",
    "run_localize",
    "run_overlap",
    "run_precision",
    "same_value_fraction",
    "sample_queries",
    "shift_ceiling",
    "write_report",
]

PROTOCOLS = ("labels", "overlap", "precision", "localize")
# §4.4 of the paper: query area bins in original pixels (px²)
AREA_BINS: tuple[tuple[str, float, float], ...] = (
    ("<1k", 0.0, 1000.0),
    ("1k-5k", 1000.0, 5000.0),
    ("5k-20k", 5000.0, 20000.0),
    (">20k", 20000.0, math.inf),
)
DEFAULT_LOCALIZE_LAYERS = ("blocks.10", "blocks.15")


class EvalError(VfsError):
    """An evaluation cannot run as asked (bad arms, too few images, mismatched caches)."""

    exit_code = 2
    code = "eval_error"


# -- metrics ------------------------------------------------------------------------------------------


def bootstrap_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``values`` with a percentile bootstrap confidence interval.

    Resamples the values (queries) with replacement ``n_boot`` times; deterministic for a seed.
    Returns ``{"mean", "lo", "hi", "sem", "n"}`` (NaNs when there are no values).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "sem": math.nan, "n": 0}
    mean = float(v.mean())
    sem = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if n == 1 or n_boot < 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sem": sem, "n": n}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # bound memory for large n
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        means[s:s + m] = v[rng.integers(0, n, (m, n))].mean(axis=1)
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    # the percentile interval always brackets the sample mean for a symmetric statistic, but keep
    # the guarantee exact (rounding, tiny n)
    return {"mean": mean, "lo": float(min(lo, mean)), "hi": float(max(hi, mean)), "sem": sem, "n": n}


def distinct_labels(results: Iterable[Sequence[int]], labels) -> np.ndarray:
    """Number of distinct labels among each result list (ids index into ``labels``)."""
    labels = np.asarray(labels, dtype=object)
    return np.array([len({labels[int(i)] for i in ids}) for ids in results], dtype=np.float64)


def overlap_fraction(a: Iterable[Sequence], b: Iterable[Sequence], k: int) -> np.ndarray:
    """``|A ∩ B| / k`` per query for two lists of result keys (ids or paths)."""
    out = [len(set(map(_key, x)) & set(map(_key, y))) / float(k) for x, y in zip(a, b, strict=True)]
    return np.array(out, dtype=np.float64)


def _key(v):
    return int(v) if isinstance(v, (int, np.integer)) else str(v)


def precision_at_k(results: Iterable[Sequence[int]], labels, query_labels: Sequence, k: int | None = None
                   ) -> np.ndarray:
    """Fraction of each result list whose label equals the query's label (over ``k``, default the
    list length)."""
    return same_value_fraction(results, labels, query_labels, k)


def same_value_fraction(results: Iterable[Sequence[int]], values, query_values: Sequence,
                        k: int | None = None) -> np.ndarray:
    """Fraction of each result list whose ``values[id]`` equals the query's value."""
    values = np.asarray(values, dtype=object)
    out = []
    for ids, qv in zip(results, query_values, strict=True):
        denom = k if k else max(1, len(ids))
        out.append(sum(values[int(i)] == qv for i in ids) / float(denom))
    return np.array(out, dtype=np.float64)


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _iou_many(boxes: np.ndarray, b) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
    inter = ix * iy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (b[2] - b[0]) * (b[3] - b[1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(union > 0, inter / union, 0.0)
    return r


def area_bin(area: float) -> str:
    """The §4.4 size bin of a box area in px² (original pixels)."""
    for name, lo, hi in AREA_BINS:
        if lo <= area < hi:
            return name
    return AREA_BINS[-1][0]


def _cell_edges(geometry, n: int, axis: int, limit: float) -> np.ndarray:
    """Feature-cell boundaries along one axis, in original pixels (clipped to the image)."""
    step = geometry.size / n
    if axis == 0:
        e = [geometry.to_image(j * step, 0)[0] for j in range(n + 1)]
    else:
        e = [geometry.to_image(0, j * step)[1] for j in range(n + 1)]
    return np.clip(np.asarray(e, dtype=np.float64), 0.0, float(limit))


def cell_ceiling(box, geometry, grid: tuple[int, int], image_size: tuple[int, int]) -> float:
    """The best IoU with ``box`` that any box aligned to feature-cell boundaries can reach.

    Cells are the layer's grid over the model input, mapped back to original pixels through the
    transform's ``geometry`` (and clipped to the image). 1.0 for a cell-aligned box.
    """
    gh, gw = grid
    w, h = image_size
    xe = _cell_edges(geometry, gw, 0, w)
    ye = _cell_edges(geometry, gh, 1, h)
    xi, xj = np.triu_indices(gw + 1, k=1)
    yi, yj = np.triu_indices(gh + 1, k=1)
    x0, x1 = xe[xi], xe[xj]
    y0, y1 = ye[yi], ye[yj]
    boxes = np.stack([
        np.repeat(x0, len(y0)), np.tile(y0, len(x0)), np.repeat(x1, len(y1)), np.tile(y1, len(x1)),
    ], axis=1)
    return float(_iou_many(boxes, box).max())


def match_box(query, offset: tuple[int, int], geometry, grid: tuple[int, int],
              image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box a match at grid ``offset`` (row, col) stands for in a result image: the query's
    box in model-input pixels, moved by whole cells (what the search engine reports)."""
    gh, gw = grid
    r0, c0, _, _ = query.cell_box
    qg = query.geometry
    ux0, uy0 = qg.to_input(query.box[0], query.box[1])
    ux1, uy1 = qg.to_input(query.box[2], query.box[3])
    cw, ch = qg.size / gw, qg.size / gh
    dx, dy = (offset[1] - c0) * cw, (offset[0] - r0) * ch
    x0, y0 = geometry.to_image(ux0 + dx, uy0 + dy)
    x1, y1 = geometry.to_image(ux1 + dx, uy1 + dy)
    w, h = image_size
    return (float(min(max(x0, 0.0), w)), float(min(max(y0, 0.0), h)),
            float(min(max(x1, 0.0), w)), float(min(max(y1, 0.0), h)))


def shift_ceiling(query, box, geometry, grid: tuple[int, int], image_size: tuple[int, int]) -> float:
    """The best IoU with ``box`` that the engine's matched box can reach in a result image: the
    maximum over every offset of the query's box moved by whole cells."""
    gh, gw = grid
    _, _, h, w = query.cell_box
    best = 0.0
    for a in range(gh - h + 1):
        for b in range(gw - w + 1):
            best = max(best, iou(match_box(query, (a, b), geometry, grid, image_size), box))
    return best


# -- query sampling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySpec:
    """One query, independent of any cache: an image (by its cache path) and a region."""

    path: str
    kind: str  # "whole" | "region"
    box: tuple[float, float, float, float] | None = None  # original pixels, for kind="region"

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind,
                "box": None if self.box is None else [round(v, 2) for v in self.box]}


@dataclass
class Arm:
    """One side of a comparison: a cache and one of its layers."""

    name: str
    cache: object
    layer: str

    def describe(self) -> dict:
        return {"name": self.name, "cache": str(self.cache.path), "model": self.cache.model,
                "layer": self.layer, "grid": list(self.cache.grid(self.layer)),
                "images": int(self.cache.valid.sum())}


def _path_index(cache) -> dict[str, int]:
    return {str(p): i for i, p in enumerate(cache.paths)}


def sample_queries(arms: Sequence[Arm], n: int, seed: int = 0, kinds: Sequence[str] = ("whole", "region"),
                   region_cells: tuple[int, int] = (2, 4)) -> list[QuerySpec]:
    """``n`` random query images (valid in every arm) and, per kind, a region.

    Regions are random boxes of ``region_cells`` (min, max) cells per side of the coarsest grid
    among the arms, placed on that grid inside the model's centre crop (so every arm sees exactly
    the same cells), and rounded inwards to whole original pixels. The same images are used for
    every kind (paired comparisons).
    """
    if not arms:
        raise EvalError("no cache/layer to evaluate")
    ref = arms[0].cache
    common = np.flatnonzero(ref.valid)
    paths = ref.paths
    for arm in arms[1:]:
        if arm.cache is ref:
            continue
        idx = _path_index(arm.cache)
        ok = arm.cache.valid
        common = np.array([i for i in common if (j := idx.get(str(paths[i]))) is not None and ok[j]],
                          dtype=np.int64)
    if len(common) < 2:
        raise EvalError("fewer than two images are indexed in every cache; nothing to evaluate "
                        "(do the caches hold the same image set?)")
    rng = np.random.default_rng(seed)
    pick = rng.choice(common, size=min(n, len(common)), replace=False)
    grid = min(min(a.cache.grid(a.layer)) for a in arms)
    tf = ref.transform
    cell = tf.size / grid
    lo_c, hi_c = region_cells
    lo_c, hi_c = max(1, min(lo_c, grid)), max(1, min(hi_c, grid))
    specs: list[QuerySpec] = []
    for i in pick:
        w, h = ref.image_size(int(i))
        geom = tf.geometry(w, h)
        # draw the region for every image (kept even if kind "region" is unused: same stream)
        hc, wc = (int(v) for v in rng.integers(lo_c, hi_c + 1, 2))
        r0, c0 = int(rng.integers(0, grid - hc + 1)), int(rng.integers(0, grid - wc + 1))
        x0, y0 = geom.to_image(c0 * cell, r0 * cell)
        x1, y1 = geom.to_image((c0 + wc) * cell, (r0 + hc) * cell)
        x0, y0 = math.ceil(max(0.0, x0) - 1e-6), math.ceil(max(0.0, y0) - 1e-6)
        x1, y1 = math.floor(min(float(w), x1) + 1e-6), math.floor(min(float(h), y1) + 1e-6)
        if x1 <= x0:
            x0, x1 = math.floor((x0 + x1) / 2), math.floor((x0 + x1) / 2) + 1
        if y1 <= y0:
            y0, y1 = math.floor((y0 + y1) / 2), math.floor((y0 + y1) / 2) + 1
        for kind in kinds:
            if kind == "whole":
                specs.append(QuerySpec(str(paths[i]), "whole"))
            elif kind == "region":
                specs.append(QuerySpec(str(paths[i]), "region", (float(x0), float(y0), float(x1), float(y1))))
            else:
                raise EvalError(f"unknown query kind {kind!r} (use whole or region)")
    return specs


def run_arm(arm: Arm, specs: Sequence[QuerySpec], k: int, progress: bool = False) -> list[np.ndarray]:
    """Search every spec in ``arm`` (one batched pass) → top-k ids (``arm.cache`` ids) per spec."""
    idx = _path_index(arm.cache)
    queries = []
    for s in specs:
        i = idx.get(s.path)
        if i is None:
            raise EvalError(f"image {s.path} is not in cache {arm.cache.path}")
        if s.kind == "whole":
            queries.append(_make_query(arm.cache, i, whole=True, layer=arm.layer))
        else:
            queries.append(_make_query(arm.cache, i, box=s.box, layer=arm.layer))
    from . import search_many

    t0 = time.perf_counter()
    res = search_many(arm.cache, queries, k=k)
    if progress:
        _log(f"  {arm.name}: {len(queries)} queries in {time.perf_counter() - t0:.1f} s")
    return [r.ids for r in res]


def _make_query(cache, image_id, **kw):
    from . import make_query

    return make_query(cache, int(image_id), **kw)


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _by_kind(specs: Sequence[QuerySpec]) -> dict[str, np.ndarray]:
    kinds: dict[str, list[int]] = {}
    for j, s in enumerate(specs):
        kinds.setdefault(s.kind, []).append(j)
    return {k: np.array(v, dtype=np.int64) for k, v in kinds.items()}


def _ci_row(values, n_boot, seed, **extra) -> dict:
    return {**extra, **bootstrap_ci(values, n_boot=n_boot, seed=seed)}


def _header(protocol: str, arms: Sequence[Arm], n: int, k: int, seed: int, n_boot: int) -> dict:
    return {"protocol": protocol, "n": n, "k": k, "seed": seed, "bootstrap": n_boot, "ci": 0.95,
            "arms": [a.describe() for a in arms]}


# -- protocols on existing caches ---------------------------------------------------------------------


def run_labels(arms: Sequence[Arm], *, n: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000,
               kinds: Sequence[str] = ("whole", "region"), progress: bool = False) -> dict:
    """Average number of distinct labels in the top-k, per arm and query kind (+ paired
    differences between the first arm and each other one)."""
    specs = sample_queries(arms, n, seed, kinds)
    groups = _by_kind(specs)
    per_arm = {}
    rows = []
    for arm in arms:
        ids = run_arm(arm, specs, k, progress)
        if any(len(x) < k for x in ids):
            raise EvalError(f"{arm.name}: fewer than k={k} results for some queries (cache too small)")
        vals = distinct_labels(ids, arm.cache.labels)
        per_arm[arm.name] = vals
        for kind, js in groups.items():
            rows.append(_ci_row(vals[js], n_boot, seed, arm=arm.name, layer=arm.layer, queries=kind))
    diffs = _paired_diffs(arms, per_arm, groups, n_boot, seed)
    out = _header("labels", arms, len(groups[next(iter(groups))]), k, seed, n_boot)
    out.update({"metric": f"distinct labels in top-{k}", "rows": rows, "differences": diffs,
                "queries": [s.to_dict() for s in specs]})
    return out


def _paired_diffs(arms, per_arm, groups, n_boot, seed) -> list[dict]:
    diffs = []
    for arm in arms[1:]:
        d = per_arm[arm.name] - per_arm[arms[0].name]
        for kind, js in groups.items():
            diffs.append(_ci_row(d[js], n_boot, seed, a=arms[0].name, b=arm.name, queries=kind))
    return diffs


def run_overlap(arm_a: Arm, arm_b: Arm, *, n: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000,
                kinds: Sequence[str] = ("whole", "region"), progress: bool = False) -> dict:
    """Average ``|top-k(A) ∩ top-k(B)| / k`` for the same queries (results compared by image
    path, so two caches of the same image set can be compared)."""
    specs = sample_queries([arm_a, arm_b], n, seed, kinds)
    groups = _by_kind(specs)
    ids_a = run_arm(arm_a, specs, k, progress)
    ids_b = run_arm(arm_b, specs, k, progress)
    pa, pb = arm_a.cache.paths, arm_b.cache.paths
    keys_a = [[str(pa[i]) for i in x] for x in ids_a]
    keys_b = [[str(pb[i]) for i in x] for x in ids_b]
    vals = overlap_fraction(keys_a, keys_b, k)
    rows = [_ci_row(vals[js], n_boot, seed, a=arm_a.name, b=arm_b.name, queries=kind)
            for kind, js in groups.items()]
    # how much agreement chance alone would give: k / (number of images) per result
    n_img = int(arm_a.cache.valid.sum())
    out = _header("overlap", [arm_a, arm_b], len(groups[next(iter(groups))]), k, seed, n_boot)
    out.update({"metric": f"|top-{k}(A) ∩ top-{k}(B)| / {k}", "rows": rows,
                "chance": k / max(1, n_img - 1), "queries": [s.to_dict() for s in specs]})
    return out


def run_precision(arms: Sequence[Arm], *, n: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000,
                  column: str | None = None, kinds: Sequence[str] = ("whole", "region"),
                  progress: bool = False) -> dict:
    """precision@k by label (overall and per label), and with ``column`` the fraction of results
    sharing the query's value of that metadata column plus the full spread (query value → result
    values)."""
    if column:
        for arm in arms:
            try:
                arm.cache.column(column)
            except NotFound as e:
                raise EvalError(f"{arm.cache.path}: {e}") from None
    specs = sample_queries(arms, n, seed, kinds)
    groups = _by_kind(specs)
    rows, per_label, spread, col_rows = [], [], [], []
    per_arm = {}
    for arm in arms:
        c = arm.cache
        idx = _path_index(c)
        qids = np.array([idx[s.path] for s in specs])
        ids = run_arm(arm, specs, k, progress)
        labels = c.labels
        qlab = labels[qids]
        prec = precision_at_k(ids, labels, qlab, k)
        per_arm[arm.name] = prec
        for kind, js in groups.items():
            rows.append(_ci_row(prec[js], n_boot, seed, arm=arm.name, layer=arm.layer, queries=kind))
            for lab in sorted(set(qlab[js].tolist()), key=str):
                sel = js[qlab[js] == lab]
                per_label.append(_ci_row(prec[sel], n_boot, seed, arm=arm.name, layer=arm.layer,
                                         queries=kind, label=str(lab)))
        if column:
            vals = np.asarray(c.column(column), dtype=object)
            qv = vals[qids]
            same = same_value_fraction(ids, vals, qv, k)
            for kind, js in groups.items():
                col_rows.append(_ci_row(same[js], n_boot, seed, arm=arm.name, layer=arm.layer,
                                        queries=kind, column=column))
                values = sorted(set(vals[c.valid].tolist()), key=str)
                for v in sorted(set(qv[js].tolist()), key=str):
                    sel = js[qv[js] == v]
                    counts = {str(u): 0 for u in values}
                    for j in sel:
                        for i in ids[j]:
                            counts[str(vals[int(i)])] += 1
                    tot = max(1, sum(counts.values()))
                    spread.append({"arm": arm.name, "queries": kind, "column": column, "query_value": str(v),
                                   "n": len(sel),
                                   "fractions": {u: cnt / tot for u, cnt in counts.items()}})
    out = _header("precision", arms, len(groups[next(iter(groups))]), k, seed, n_boot)
    out.update({"metric": f"precision@{k} (same label)", "rows": rows, "per_label": per_label,
                "differences": _paired_diffs(arms, per_arm, groups, n_boot, seed),
                "queries": [s.to_dict() for s in specs]})
    if column:
        out.update({"column": column, "column_rows": col_rows, "spread": spread})
    return out


# -- localisation: planted crops ----------------------------------------------------------------------


def _bin_sides() -> list[tuple[str, float, float]]:
    return [(name, math.sqrt(lo), math.sqrt(hi) if math.isfinite(hi) else math.inf) for name, lo, hi in AREA_BINS]


def _crop_region(tf, w: int, h: int) -> tuple[float, float, float, float]:
    """The part of a w×h image the model sees (its centre crop), in original pixels."""
    g = tf.geometry(w, h)
    x0, y0 = g.to_image(0, 0)
    x1, y1 = g.to_image(g.size, g.size)
    return max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)


def plant_crops(sources: Sequence[Path], distractors: Sequence[Path], dest: Path, *, seed: int = 0,
                transform=None, sides: tuple[float, float] = (24.0, 300.0), margin: int = 2) -> list[dict]:
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

    from .images import load_image
    from .transforms import Transform

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
            if sx0 + sside <= sreg[2] and sy0 + sside <= sreg[3] and px0 + dside <= dreg[2] and py0 + dside <= dreg[3]:
                break
        else:
            raise EvalError(f"cannot place a {lo:.0f}–{hi:.0f} px crop of {src_p.name}: the images are too "
                            f"small for crop sides {sides}")
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
            "crop": [sx0, sy0, sx0 + sside, sy0 + sside], "pasted": [px0, py0, px0 + dside, py0 + dside],
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
    from .images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def prepare_localize(images_dir, work, *, n: int = 200, pool: int = 200, seed: int = 0,
                     layers: Sequence[str] = DEFAULT_LOCALIZE_LAYERS, sides=(24.0, 300.0),
                     label_pattern: str | None = None, model=None, progress: bool = True,
                     index_kw: dict | None = None):
    """Build (or resume) the planted image set in ``work/images`` and its cache ``work/cache``.

    ``n`` source images and up to ``pool`` distractor images, all large enough for the largest
    crop, are drawn from ``images_dir`` and copied; each source gives one planted image (a
    distractor with the source's crop pasted in). The cache holds sources, distractors and planted
    images. Returns ``(cache, plants, setup)``.
    """
    from . import index
    from .transforms import Transform

    images_dir = Path(images_dir).expanduser()
    work = Path(work).expanduser()
    if not images_dir.is_dir():
        raise DatasetError(f"images folder not found: {images_dir}")
    if model is not None and not isinstance(model, str):
        lm = model
    else:
        from .models import DEFAULT_MODEL, load_model

        with contextlib.redirect_stdout(io.StringIO()):
            lm = load_model(model or DEFAULT_MODEL)
    tf = lm.transform if isinstance(lm.transform, Transform) else Transform()
    # the largest crop must fit inside the distractor's centre crop
    min_short = math.ceil((sides[1] + 6) * tf.resize / tf.size) if tf.mode == "crop" else math.ceil(sides[1] + 6)
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
        raise DatasetError(f"{images_dir}: need at least two images with a shorter side ≥ {min_short} px "
                           f"for crops up to {sides[1]:.0f} px (found {len(big)})")
    setup = {"images": str(images_dir.resolve()), "n": n, "pool": pool, "seed": seed,
             "sides": list(sides), "layers": list(layers), "model": lm.name,
             "files": hashlib.sha1("\n".join(p.name for p in big).encode()).hexdigest()[:12]}
    imgdir = work / "images"
    manifest = work / "plants.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("setup") != setup:
            raise EvalError(f"{work} holds a localisation set built with other settings "
                            f"({saved.get('setup')}); use another --work folder or delete it")
        plants = saved["plants"]
    else:
        if imgdir.exists() and any(imgdir.iterdir()):
            raise OutputError(f"{imgdir} exists and is not a vfsearch localisation set; use an empty --work")
        if len(big) < n + 1:
            raise DatasetError(f"{images_dir}: {n} plants need {n} source images plus distractors with a "
                               f"shorter side ≥ {min_short} px; found {len(big)} (lower --n or --max-side)")
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
        plants = plant_crops([imgdir / p.name for p in sources], [imgdir / p.name for p in distractors],
                             imgdir, seed=seed + 1, transform=tf, sides=sides)
        manifest.write_text(json.dumps({"setup": setup, "plants": plants}, indent=1))
    kw = dict(index_kw or {})
    label_kw = {"label_pattern": label_pattern} if label_pattern else {"label_from": None}
    rep = index(imgdir, work / "cache", model=lm, layers=list(layers), progress=progress, **label_kw, **kw)
    return rep.cache, plants, setup


def localize_layer(cache, plants: Sequence[dict], layer: str, k: int = 5) -> list[dict]:
    """Query each plant's crop in its source (one batched search) and measure the match."""
    from . import search_many

    idx = _path_index(cache)
    qs = []
    for p in plants:
        if p["source"] not in idx or p["planted"] not in idx:
            raise EvalError(f"plant {p['planted']} or its source {p['source']} is missing from the cache")
        qs.append(_make_query(cache, idx[p["source"]], box=tuple(p["crop"]), layer=layer))
    results = search_many(cache, qs, k=k)
    grid = cache.grid(layer)
    tf = cache.transform
    out = []
    for p, q, r in zip(plants, qs, results):
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
            "top1": bool(top1), "iou": iou1, "iou_found": iou(box, gt), "box": [round(v, 2) for v in box],
            "ceiling_cells": cell_ceiling(gt, geom, grid, size),
            "ceiling_shift": shift_ceiling(q, gt, geom, grid, size),
            "query_cells": list(q.cell_box),
        })
    return out


def run_localize(images_dir, work, *, layers: Sequence[str] = DEFAULT_LOCALIZE_LAYERS, n: int = 200,
                 pool: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000, sides=(24.0, 300.0),
                 label_pattern: str | None = None, model=None, progress: bool = True,
                 index_kw: dict | None = None) -> dict:
    """The planted-crop localisation protocol (see :func:`plant_crops`), per layer and area bin."""
    cache, plants, setup = prepare_localize(images_dir, work, n=n, pool=pool, seed=seed, layers=layers,
                                            sides=sides, label_pattern=label_pattern, model=model,
                                            progress=progress, index_kw=index_kw)
    missing = [layer for layer in layers if layer not in cache.layers]
    if missing:
        raise EvalError(f"cache {cache.path} has no layer {', '.join(missing)}")
    arms = [Arm(f"{Path(work).name}:{layer}", cache, layer) for layer in layers]
    rows, per_plant = [], {}
    for arm in arms:
        t0 = time.perf_counter()
        recs = localize_layer(cache, plants, arm.layer, k)
        if progress:
            _log(f"  {arm.name}: {len(recs)} planted queries in {time.perf_counter() - t0:.1f} s")
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


# -- reports: markdown, JSON, figures ------------------------------------------------------------------


def _fmt_ci(row: dict, key: str = "mean", digits: int = 3) -> str:
    lo = row.get("lo" if key == "mean" else key + "_lo")
    hi = row.get("hi" if key == "mean" else key + "_hi")
    return f"{row[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def to_markdown(rep: dict) -> str:
    """A markdown rendering of a protocol's report (tables with 95 % bootstrap CIs)."""
    p = rep["protocol"]
    k = rep["k"]
    lines = [f"### {p}: {rep['metric']}", "",
             (f"N = {rep['n']} queries, k = {k}, seed = {rep['seed']}, 95 % CI from {rep['bootstrap']} "
             "bootstrap resamples of the queries."), ""]
    grids = {a["name"]: "×".join(map(str, a["grid"])) for a in rep["arms"]}
    if p in ("labels", "precision"):
        lines += ["| arm | grid | queries | mean [95 % CI] |", "|---|---|---|---|"]
        lines += [f"| {r['arm']} | {grids[r['arm']]} | {r['queries']} | {_fmt_ci(r)} |" for r in rep["rows"]]
        if rep.get("differences"):
            lines += ["", "Paired differences (B − A, same queries):", "",
                      "| A | B | queries | mean [95 % CI] |", "|---|---|---|---|"]
            lines += [f"| {d['a']} | {d['b']} | {d['queries']} | {_fmt_ci(d)} |" for d in rep["differences"]]
    if p == "overlap":
        lines += [f"| A | B | queries | overlap [95 % CI] | images in common (of {k}) |", "|---|---|---|---|---|"]
        lines += [f"| {r['a']} | {r['b']} | {r['queries']} | {_fmt_ci(r)} | {r['mean'] * k:.2f} |"
                  for r in rep["rows"]]
        lines += ["", f"Chance level (random top-{k}): {rep['chance']:.5f}."]
    if p == "precision":
        arms = [a["name"] for a in rep["arms"]]
        kinds = sorted({r["queries"] for r in rep["per_label"]}, key=lambda s: (s != "whole", s))
        labels = sorted({r["label"] for r in rep["per_label"]})
        table = {(r["arm"], r["queries"], r["label"]): r for r in rep["per_label"]}
        cols = [(a, kd) for a in arms for kd in kinds]
        lines += ["", f"Per label (precision@{k} [95 % CI], n = queries with that label):", "",
                  "| label | n | " + " | ".join(f"{a} {kd}" for a, kd in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for lab in labels:
            n_lab = next((table[c + (lab,)]["n"] for c in cols if c + (lab,) in table), 0)
            cells = [(_fmt_ci(table[c + (lab,)], digits=2) if c + (lab,) in table else "–") for c in cols]
            lines.append(f"| {lab} | {n_lab} | " + " | ".join(cells) + " |")
        if rep.get("column"):
            col = rep["column"]
            if col != "label":  # for the label column this is the precision table above
                lines += ["", f"Fraction of the top-{k} with the query's own `{col}`:", "",
                          "| arm | queries | mean [95 % CI] |", "|---|---|---|"]
                lines += [f"| {r['arm']} | {r['queries']} | {_fmt_ci(r)} |" for r in rep["column_rows"]]
            for a in arms:
                for kd in kinds:
                    sp = [s for s in rep["spread"] if s["arm"] == a and s["queries"] == kd]
                    if not sp:
                        continue
                    vals = list(sp[0]["fractions"].keys())
                    if len(vals) > 20:
                        continue
                    lines += ["", (f"Spread of the top-{k} over `{col}` ({a}, {kd} queries; rows = query "
                              "value, columns = result value):"), "",
                              f"| query {col} | n | " + " | ".join(vals) + " |", "|---|---|" + "---|" * len(vals)]
                    for s in sp:
                        lines.append(f"| {s['query_value']} | {s['n']} | "
                                     + " | ".join(f"{s['fractions'][v]:.2f}" for v in vals) + " |")
    if p == "localize":
        lines = [f"### localize: {rep['metric']}", "",
                 (f"{rep['n']} planted crops, {rep['images_in_cache']} images in the cache, k = {k}, "
                 f"seed = {rep['seed']}; mean [95 % CI] over plants ({rep['bootstrap']} bootstrap "
                 "resamples). Bins: pasted-box area in original pixels."), "",
                 (f"| layer | grid | bin | n | hit@1 | hit@{k} | IoU top-1 | IoU (planted image) | "
                 "cell ceiling | shift ceiling | IoU ≥ 0.5 |"),
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rep["rows"]:
            lines.append(
                f"| {r['layer']} | {grids[r['arm']]} | {r['bin']} | {r['n']} | {r['hit@1']:.2f} | "
                f"{r[f'hit@{k}']:.2f} | {_fmt_ci(r, 'iou', 2)} | {_fmt_ci(r, 'iou_found', 2)} | "
                f"{_fmt_ci(r, 'ceiling_cells', 2)} | {_fmt_ci(r, 'ceiling_shift', 2)} | {r['iou>=0.5']:.2f} |")
    return "\n".join(lines) + "\n"


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _bars(ax, groups: list[str], series: dict[str, list[dict]], key: str = "mean", ylabel: str = ""):
    """Grouped bars with CI error bars: series name → rows (one per group)."""
    m = len(series)
    width = 0.8 / max(1, m)
    x = np.arange(len(groups))
    for j, (name, rs) in enumerate(series.items()):
        lo_k, hi_k = ("lo", "hi") if key == "mean" else (key + "_lo", key + "_hi")
        means = np.array([r[key] for r in rs])
        err = np.array([[r[key] - r[lo_k] for r in rs], [r[hi_k] - r[key] for r in rs]])
        ax.bar(x + (j - (m - 1) / 2) * width, means, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def make_figures(rep: dict, out: Path, prefix: str | None = None) -> list[Path]:
    """Write the protocol's figures (PNG) into ``out``; returns their paths ([] without matplotlib)."""
    plt = _plt()
    if plt is None:
        _log("matplotlib is not installed: figures skipped (pip install 'matplotlib>=3.8')")
        return []
    out.mkdir(parents=True, exist_ok=True)
    p = rep["protocol"]
    prefix = prefix or p
    k = rep["k"]
    paths = []

    def save(fig, name):
        path = out / f"{prefix}_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    if p in ("labels", "precision"):
        kinds = list(dict.fromkeys(r["queries"] for r in rep["rows"]))
        arms = list(dict.fromkeys(r["arm"] for r in rep["rows"]))
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        series = {a: [next(r for r in rep["rows"] if r["arm"] == a and r["queries"] == kd) for kd in kinds]
                  for a in arms}
        _bars(ax, kinds, series, ylabel=rep["metric"])
        if p == "labels":
            ax.axhline(1, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{p} (N={rep['n']}, 95 % CI)")
        save(fig, "summary")
    if p == "overlap":
        fig, ax = plt.subplots(figsize=(5, 3.4))
        kinds = [r["queries"] for r in rep["rows"]]
        name = f"{rep['rows'][0]['a']} vs {rep['rows'][0]['b']}"
        _bars(ax, kinds, {name: rep["rows"]}, ylabel=rep["metric"])
        ax.set_ylim(0, 1)
        ax.set_title(f"overlap (N={rep['n']}, 95 % CI)")
        save(fig, "summary")
    if p == "precision":
        kinds = list(dict.fromkeys(r["queries"] for r in rep["per_label"]))
        arms = list(dict.fromkeys(r["arm"] for r in rep["per_label"]))
        labels = sorted({r["label"] for r in rep["per_label"]})
        if len(labels) <= 40:
            fig, axes = plt.subplots(len(kinds), 1, figsize=(max(6, 0.55 * len(labels) * len(arms)), 3.2 * len(kinds)),
                                     squeeze=False)
            for ax, kd in zip(axes[:, 0], kinds):
                table = {(r["arm"], r["label"]): r for r in rep["per_label"] if r["queries"] == kd}
                labs = [lab for lab in labels if all((a, lab) in table for a in arms)]
                _bars(ax, labs, {a: [table[(a, lab)] for lab in labs] for a in arms},
                      ylabel=f"precision@{k}")
                ax.set_ylim(0, 1.05)
                ax.set_title(f"precision@{k} by label, {kd} queries")
                ax.tick_params(axis="x", labelrotation=45, labelsize=8)
            save(fig, "per_label")
        if rep.get("column"):
            sp = [s for s in rep["spread"] if s["queries"] == kinds[0]]
            for a in arms:
                rows_a = [s for s in sp if s["arm"] == a]
                if not rows_a or len(rows_a[0]["fractions"]) > 40:
                    continue
                vals = list(rows_a[0]["fractions"].keys())
                mat = np.array([[s["fractions"][v] for v in vals] for s in rows_a])
                fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(vals), 1.0 + 0.4 * len(rows_a)))
                im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
                ax.set_xticks(range(len(vals)), vals, rotation=60, fontsize=7)
                ax.set_yticks(range(len(rows_a)), [s["query_value"] for s in rows_a], fontsize=7)
                ax.set_xlabel(f"result {rep['column']}")
                ax.set_ylabel(f"query {rep['column']}")
                ax.set_title(f"top-{k} spread, {a}, {kinds[0]} queries", fontsize=9)
                fig.colorbar(im, ax=ax, fraction=0.046)
                save(fig, f"spread_{_slug(a)}")
    if p == "localize":
        layers = list(dict.fromkeys(r["layer"] for r in rep["rows"]))
        bins = [b for b, _, _ in AREA_BINS if any(r["bin"] == b for r in rep["rows"])]
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / max(1, len(layers))
        x = np.arange(len(bins))
        for j, layer in enumerate(layers):
            rs = [next(r for r in rep["rows"] if r["layer"] == layer and r["bin"] == b) for b in bins]
            xs = x + (j - (len(layers) - 1) / 2) * width
            mean = np.array([r["iou"] for r in rs])
            err = np.array([[r["iou"] - r["iou_lo"] for r in rs], [r["iou_hi"] - r["iou"] for r in rs]])
            bars = ax.bar(xs, mean, width, yerr=err, capsize=3, label=f"{layer} IoU (top-1)")
            col = bars[0].get_facecolor()
            ax.scatter(xs, [r["ceiling_cells"] for r in rs], marker="_", s=500, color=col,
                       linewidths=2.5, zorder=3)
            ax.scatter(xs, [r["iou_found"] for r in rs], marker="x", s=30, color="k", zorder=4)
        ax.scatter([], [], marker="_", s=200, color="gray", linewidths=2.5, label="cell ceiling (same colour)")
        ax.scatter([], [], marker="x", s=30, color="k", label="IoU in the planted image, any rank")
        ax.set_xticks(x, [f"{b} px²" for b in bins])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IoU with the pasted box")
        ax.set_title(f"planted-crop localisation (N={rep['n']}, 95 % CI)")
        ax.legend(fontsize=8, loc="upper left")
        save(fig, "iou_by_bin")
        fig, axes = plt.subplots(len(layers), len(bins), figsize=(3.0 * len(bins), 2.5 * len(layers)),
                                 squeeze=False, sharex=True)
        edges = np.linspace(0, 1, 21)
        for i, layer in enumerate(layers):
            recs = rep["per_plant"][layer]
            for j, b in enumerate(bins):
                ax = axes[i, j]
                sel = [r for r in recs if r["bin"] == b]
                ax.hist([r["iou"] for r in sel], bins=edges, alpha=0.7, label="IoU top-1")
                ax.hist([r["ceiling_cells"] for r in sel], bins=edges, histtype="step", lw=1.5,
                        color="k", label="cell ceiling")
                ax.hist([r["ceiling_shift"] for r in sel], bins=edges, histtype="step", lw=1.2,
                        ls="--", color="tab:red", label="shift ceiling")
                ax.set_title(f"{layer}, {b} px² (n={len(sel)})", fontsize=9)
                if i == len(layers) - 1:
                    ax.set_xlabel("IoU")
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        save(fig, "iou_hist")
    return paths


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def write_report(rep: dict, out: Path, prefix: str | None = None, figures: bool = True) -> dict:
    """Write ``<prefix>.json``, ``<prefix>.md`` and the figures into ``out``."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        prefix = prefix or rep["protocol"]
        jpath = out / f"{prefix}.json"
        jpath.write_text(json.dumps(rep, indent=1, default=_json_default))
        md = to_markdown(rep)
        mpath = out / f"{prefix}.md"
        mpath.write_text(md)
    except OSError as e:
        raise OutputError(f"cannot write the report to {out}: {e}") from None
    figs = make_figures(rep, out, prefix) if figures else []
    return {"json": jpath, "markdown": mpath, "figures": figs, "text": md}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# -- command line -------------------------------------------------------------------------------------


def _arms_from_cli(protocol: str, cache_path: str, cache2_path: str | None, layer: str | None,
                   layer2: str | None) -> list[Arm]:
    from . import open_cache

    c1 = open_cache(cache_path)
    c2 = open_cache(cache2_path) if cache2_path else None
    n1 = Path(cache_path).name or str(cache_path)
    n2 = (Path(cache2_path).name or str(cache2_path)) if cache2_path else None
    if c2 is not None and n2 == n1:
        n1, n2 = f"{n1}#1", f"{n2}#2"

    def arm(c, name, lay):
        if lay not in c.layers:
            raise EvalError(f"cache {c.path} has no layer {lay!r}; it has: {', '.join(c.layers)}")
        return Arm(f"{name}:{lay}", c, lay)

    if protocol == "overlap":
        la = layer or c1.default_layer
        if c2 is not None:
            lb = layer2 or (layer if layer in c2.layers else None) or c2.default_layer
            arms = [arm(c1, n1, la), arm(c2, n2, lb)]
        else:
            if layer2 is None:
                others = [x for x in c1.layers if x != la]
                if not others:
                    raise EvalError("overlap needs two arms: a second cache, or a cache with two layers "
                                    "(--layer A --layer2 B)")
                layer2 = others[0]
            if layer2 == la:
                raise EvalError("overlap of a layer with itself: give two different layers")
            arms = [arm(c1, n1, la), arm(c1, n1, layer2)]
        return arms
    # labels / precision: every requested arm
    arms = []
    arms += [arm(c1, n1, layer)] if layer else [arm(c1, n1, x) for x in c1.layers]
    if c2 is not None:
        l2 = layer2 or layer
        arms += [arm(c2, n2, l2)] if l2 else [arm(c2, n2, x) for x in c2.layers]
    elif layer2:
        arms.append(arm(c1, n1, layer2))
    return arms


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("protocol", type=click.Choice(PROTOCOLS))
@click.argument("cache", type=click.Path(path_type=Path))
@click.argument("cache2", required=False, type=click.Path(path_type=Path))
@click.option("--layer", "-l", default=None, help="Layer of CACHE (default: every layer; overlap: the first).")
@click.option("--layer2", default=None, help="Second layer (of CACHE2, or of CACHE when there is no CACHE2).")
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Number of random queries (localize: planted crops).")
@click.option("--k", "-k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--boot", default=1000, show_default=True, type=click.IntRange(0, 100_000),
              help="Bootstrap resamples for the 95 % confidence intervals.")
@click.option("--queries", "kinds", type=click.Choice(["both", "whole", "region"]), default="both",
              show_default=True, help="Query kinds: whole images, random regions of 2–4 cells, or both.")
@click.option("--column", default=None, help="precision: metadata column for the spread analysis.")
@click.option("--out", "-o", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder (default: eval-PROTOCOL).")
@click.option("--name", default=None, help="File name prefix of the outputs (default: PROTOCOL).")
@click.option("--work", default=None, type=click.Path(path_type=Path),
              help="localize: folder for the planted images and their cache (resumable).")
@click.option("--pool", default=200, show_default=True, type=click.IntRange(1, 1_000_000),
              help="localize: distractor images drawn from the folder (besides the N sources).")
@click.option("--min-side", default=24.0, show_default=True, type=float, help="localize: smallest crop side (px).")
@click.option("--max-side", default=300.0, show_default=True, type=float, help="localize: largest crop side (px).")
@click.option("--label-pattern", default=None, help="localize: label regex on file names (for the cache).")
@click.option("--no-figures", is_flag=True, help="Skip the matplotlib figures.")
@click.option("--quiet", "-q", is_flag=True)
def eval_cmd(protocol, cache, cache2, layer, layer2, n, k, seed, boot, kinds, column, out, name, work,
             pool, min_side, max_side, label_pattern, no_figures, quiet):
    """Quantitative experiments: PROTOCOL is labels, overlap, precision or localize.

    \b
    labels     CACHE [CACHE2]: distinct labels in the top-k (per layer / cache)
    overlap    CACHE --layer A --layer2 B, or CACHE CACHE2: |top-k(A) ∩ top-k(B)| / k
    precision  CACHE [CACHE2] [--column COL]: precision@k by label, spread over COL
    localize   IMAGES --work DIR [--layer A --layer2 B]: planted-crop IoU by area bin
               (CACHE is then a folder of images; the planted set and its cache go to --work)

    Writes PROTOCOL.json, PROTOCOL.md and PNG figures into --out and prints the markdown table.
    """
    try:
        out = out or Path(f"eval-{protocol}")
        kind_list = ("whole", "region") if kinds == "both" else (kinds,)
        progress = not quiet
        if protocol == "localize":
            if cache2 is not None:
                raise EvalError("localize takes one IMAGES folder")
            if work is None:
                raise EvalError("localize needs --work DIR (planted images and their cache go there)")
            if not 0 < min_side < max_side:
                raise EvalError("need 0 < --min-side < --max-side")
            layers = [x for x in (layer, layer2) if x] or list(DEFAULT_LOCALIZE_LAYERS)
            rep = run_localize(cache, work, layers=layers, n=n, pool=pool, k=k, seed=seed, n_boot=boot,
                               sides=(min_side, max_side), label_pattern=label_pattern, progress=progress)
        else:
            if work is not None:
                raise EvalError("--work is only for localize")
            arms = _arms_from_cli(protocol, str(cache), str(cache2) if cache2 else None, layer, layer2)
            if protocol == "labels":
                rep = run_labels(arms, n=n, k=k, seed=seed, n_boot=boot, kinds=kind_list, progress=progress)
            elif protocol == "overlap":
                rep = run_overlap(arms[0], arms[1], n=n, k=k, seed=seed, n_boot=boot, kinds=kind_list,
                                  progress=progress)
            else:
                rep = run_precision(arms, n=n, k=k, seed=seed, n_boot=boot, column=column,
                                    kinds=kind_list, progress=progress)
        rep["options"] = {"cache2": str(cache2) if cache2 else None, "layer": layer, "layer2": layer2,
                          "queries": kinds, "column": column}
        res = write_report(rep, out, prefix=name, figures=not no_figures)
        click.echo(res["text"])
        if progress:
            _log(f"wrote {res['json']}, {res['markdown']}" +
                 "".join(f", {p}" for p in res["figures"]))
    except VfsError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(e.exit_code)

