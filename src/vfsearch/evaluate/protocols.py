"""The protocols on existing caches: query sampling, arms, and the ``labels``, ``overlap`` and
``precision`` experiments, each seeded and reported with bootstrap confidence intervals.

Progress messages (one line per arm with its timing) go to ``log`` when one is given; nothing
is printed otherwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EvalError, NotFound
from .metrics import (
    bootstrap_ci,
    distinct_labels,
    overlap_fraction,
    precision_at_k,
    same_value_fraction,
)

__all__ = [
    "Arm",
    "QuerySpec",
    "run_arm",
    "run_labels",
    "run_overlap",
    "run_precision",
    "sample_queries",
]

#: where progress messages go: a function taking one line of text
Log = Callable[[str], None]


@dataclass(frozen=True)
class QuerySpec:
    """One query, independent of any cache: an image (by its cache path) and a region."""

    path: str
    kind: str  # "whole" | "region" | "global"
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


def sample_queries(arms: Sequence[Arm], n: int, seed: int = 0,
                   kinds: Sequence[str] = ("whole", "region"),
                   region_cells: tuple[int, int] = (2, 4)) -> list[QuerySpec]:
    """``n`` random query images (valid in every arm) and, per kind, a region.

    Regions are random boxes of ``region_cells`` (min, max) cells per side of the coarsest grid
    among the arms, placed on that grid inside the model's centre crop (so every arm sees exactly
    the same cells; in a ``full`` cache, on the image's own cells of that grid), and rounded
    inwards to whole original pixels. The same images are used for
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
        common = np.array([i for i in common
                           if (j := idx.get(str(paths[i]))) is not None and ok[j]],
                          dtype=np.int64)
    if len(common) < 2:
        raise EvalError("fewer than two images are indexed in every cache; nothing to evaluate "
                        "(do the caches hold the same image set?)")
    rng = np.random.default_rng(seed)
    pick = rng.choice(common, size=min(n, len(common)), replace=False)
    coarse = min((a.cache.grid(a.layer) for a in arms), key=min)
    grid = min(coarse)
    tf = ref.transform
    cell = tf.size / grid
    lo_c, hi_c = region_cells
    lo_c, hi_c = max(1, min(lo_c, grid)), max(1, min(hi_c, grid))
    specs: list[QuerySpec] = []
    for i in pick:
        w, h = ref.image_size(int(i))
        geom = tf.geometry(w, h)
        rows = cols = grid
        cw = ch = cell
        if ref.padded:  # a full-mode cache: regions within the image's own cells
            fr = tf.frame(w, h, coarse)
            (rows, cols), (cw, ch) = fr.valid, fr.cell
        # draw the region for every image (kept even if kind "region" is unused: same stream)
        hc, wc = (int(v) for v in rng.integers(lo_c, hi_c + 1, 2))
        hc, wc = min(hc, rows), min(wc, cols)
        r0, c0 = int(rng.integers(0, rows - hc + 1)), int(rng.integers(0, cols - wc + 1))
        x0, y0 = geom.to_image(c0 * cw, r0 * ch)
        x1, y1 = geom.to_image((c0 + wc) * cw, (r0 + hc) * ch)
        x0, y0 = math.ceil(max(0.0, x0) - 1e-6), math.ceil(max(0.0, y0) - 1e-6)
        x1, y1 = math.floor(min(float(w), x1) + 1e-6), math.floor(min(float(h), y1) + 1e-6)
        if x1 <= x0:
            x0, x1 = math.floor((x0 + x1) / 2), math.floor((x0 + x1) / 2) + 1
        if y1 <= y0:
            y0, y1 = math.floor((y0 + y1) / 2), math.floor((y0 + y1) / 2) + 1
        for kind in kinds:
            if kind in ("whole", "global"):
                specs.append(QuerySpec(str(paths[i]), kind))
            elif kind == "region":
                specs.append(QuerySpec(str(paths[i]), "region",
                                       (float(x0), float(y0), float(x1), float(y1))))
            else:
                raise EvalError(f"unknown query kind {kind!r} (use whole, region or global)",
                                param="kinds")
    return specs


def run_arm(arm: Arm, specs: Sequence[QuerySpec], k: int,
            log: Log | None = None) -> list[np.ndarray]:
    """Search every spec in ``arm`` (one batched pass) → top-k ids (``arm.cache`` ids) per spec;
    the timing goes to ``log``."""
    idx = _path_index(arm.cache)
    queries = []
    for s in specs:
        i = idx.get(s.path)
        if i is None:
            raise EvalError(f"image {s.path} is not in cache {arm.cache.path}")
        if s.kind in ("whole", "global"):
            queries.append(_make_query(arm.cache, i, mode=s.kind, layer=arm.layer))
        else:
            queries.append(_make_query(arm.cache, i, box=s.box, layer=arm.layer))
    from .. import search_many

    t0 = time.perf_counter()
    res = search_many(arm.cache, queries, k=k)
    if log is not None:
        log(f"  {arm.name}: {len(queries)} queries in {time.perf_counter() - t0:.1f} s")
    return [r.ids for r in res]


def _make_query(cache, image_id, **kw):
    from .. import make_query

    return make_query(cache, int(image_id), **kw)


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


# -- protocols on existing caches ------------------------------------------------------------------


def run_labels(arms: Sequence[Arm], *, n: int = 200, k: int = 5, seed: int = 0, n_boot: int = 1000,
               kinds: Sequence[str] = ("whole", "region"), log: Log | None = None) -> dict:
    """Average number of distinct labels in the top-k, per arm and query kind (+ paired
    differences between the first arm and each other one)."""
    specs = sample_queries(arms, n, seed, kinds)
    groups = _by_kind(specs)
    per_arm = {}
    rows = []
    for arm in arms:
        ids = run_arm(arm, specs, k, log)
        if any(len(x) < k for x in ids):
            raise EvalError(f"{arm.name}: fewer than k={k} results for some queries "
                            "(cache too small)")
        vals = distinct_labels(ids, arm.cache.labels)
        per_arm[arm.name] = vals
        for kind, js in groups.items():
            rows.append(_ci_row(vals[js], n_boot, seed, arm=arm.name, layer=arm.layer,
                                queries=kind))
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


def run_overlap(arm_a: Arm, arm_b: Arm, *, n: int = 200, k: int = 5, seed: int = 0,
                n_boot: int = 1000, kinds: Sequence[str] = ("whole", "region"),
                log: Log | None = None) -> dict:
    """Average ``|top-k(A) ∩ top-k(B)| / k`` for the same queries (results compared by image
    path, so two caches of the same image set can be compared)."""
    specs = sample_queries([arm_a, arm_b], n, seed, kinds)
    groups = _by_kind(specs)
    ids_a = run_arm(arm_a, specs, k, log)
    ids_b = run_arm(arm_b, specs, k, log)
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


def run_precision(arms: Sequence[Arm], *, n: int = 200, k: int = 5, seed: int = 0,
                  n_boot: int = 1000, column: str | None = None,
                  kinds: Sequence[str] = ("whole", "region"), log: Log | None = None) -> dict:
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
        ids = run_arm(arm, specs, k, log)
        labels = c.labels
        qlab = labels[qids]
        prec = precision_at_k(ids, labels, qlab, k)
        per_arm[arm.name] = prec
        for kind, js in groups.items():
            rows.append(_ci_row(prec[js], n_boot, seed, arm=arm.name, layer=arm.layer,
                                queries=kind))
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
                    spread.append({"arm": arm.name, "queries": kind, "column": column,
                                   "query_value": str(v), "n": len(sel),
                                   "fractions": {u: cnt / tot for u, cnt in counts.items()}})
    out = _header("precision", arms, len(groups[next(iter(groups))]), k, seed, n_boot)
    out.update({"metric": f"precision@{k} (same label)", "rows": rows, "per_label": per_label,
                "differences": _paired_diffs(arms, per_arm, groups, n_boot, seed),
                "queries": [s.to_dict() for s in specs]})
    if column:
        out.update({"column": column, "column_rows": col_rows, "spread": spread})
    return out
