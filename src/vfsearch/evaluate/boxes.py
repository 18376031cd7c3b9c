"""The ``boxes`` protocol (the face experiment of "Interactive Visual Feature Search" §4.4,
Fig. 8) on any ground-truth boxes: every box is a region query on its own image; each of its
top-k results (other images) is scored by the IoU of the matched box with the best-overlapping
ground-truth box of that result image (0 when the image has none); means with bootstrap CIs per
query-size bin (the §4.4 area bins, original pixels), for every arm (layers or caches) on the
same queries.

Boxes come from a CSV ``path,x0,y0,x1,y1[,label]`` (a header row is optional; paths as stored in
the cache, relative to its image root, or absolute under it; several rows per image allowed),
or from a detector (:mod:`.faces`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import BadMask, EvalError
from .metrics import AREA_BINS, area_bin, bootstrap_ci, iou, match_box
from .protocols import Arm, Log, _header

__all__ = ["boxes_markdown", "read_boxes", "run_boxes", "write_boxes_report"]


def read_boxes(path) -> list[dict]:
    """Rows ``{"path", "box": (x0, y0, x1, y1), "label"}`` of a boxes CSV (header optional)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise EvalError(f"cannot read the boxes file {path}: {e.strerror or e}",
                        param="boxes") from None
    rows = list(csv.reader(text.splitlines()))
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        head = [h.strip().lower() for h in rows[0]]
        need = ["path", "x0", "y0", "x1", "y1"]
        if head[:5] != need:
            raise EvalError(f"{path}: the columns must start with {','.join(need)}",
                            param="boxes")
        rows = rows[1:]
    out = []
    for n, r in enumerate(rows, start=2):
        if not r or not "".join(r).strip():
            continue
        if len(r) < 5:
            raise EvalError(f"{path}, row {n}: need path,x0,y0,x1,y1[,label]", param="boxes")
        try:
            x0, y0, x1, y1 = (float(v) for v in r[1:5])
        except ValueError:
            raise EvalError(f"{path}, row {n}: the box is not four numbers",
                            param="boxes") from None
        if not (x1 > x0 and y1 > y0) or not all(map(math.isfinite, (x0, y0, x1, y1))):
            raise EvalError(f"{path}, row {n}: a box needs x1 > x0 and y1 > y0", param="boxes")
        out.append({"path": r[0].strip(), "box": (x0, y0, x1, y1),
                    "label": r[5].strip() if len(r) > 5 else ""})
    if not out:
        raise EvalError(f"{path} holds no boxes", param="boxes")
    return out


def _resolve(cache, rows: Sequence[dict]) -> tuple[dict[int, list[tuple]], list[str]]:
    """Boxes by cache id (paths matched as stored, relative to the image root, or absolute
    under it) and the paths that match no indexed image."""
    index = {str(p): i for i, p in enumerate(cache.paths)}
    root = Path(cache.image_root)
    valid = cache.valid
    by_id: dict[int, list[tuple]] = {}
    missing = []
    for r in rows:
        p = r["path"]
        i = index.get(p)
        if i is None:
            q = Path(p)
            if q.is_absolute():
                try:
                    q = q.resolve().relative_to(root.resolve())
                except ValueError:
                    q = None
            i = index.get(str(PurePosixPath(*q.parts))) if q is not None and q.parts else None
        if i is None or not valid[i]:
            missing.append(p)
            continue
        by_id.setdefault(int(i), []).append(tuple(r["box"]))
    return by_id, missing


def _best_iou(box, gts) -> float:
    return max((iou(box, g) for g in gts), default=0.0)


def boxes_arm(arm: Arm, rows: Sequence[dict], k: int = 5, ceiling: bool = True) -> dict:
    """Search every box of ``rows`` in ``arm`` and score the matches: per-query records plus
    the queries skipped (box outside what the model sees) and the unmatched paths."""
    from .. import make_query, search_many

    cache, layer = arm.cache, arm.layer
    by_id, missing = _resolve(cache, rows)
    qs, meta, skipped = [], [], []
    for i, gts in sorted(by_id.items()):
        for b in gts:
            try:
                qs.append(make_query(cache, i, box=b, layer=layer))
            except BadMask as e:
                skipped.append({"path": str(cache.paths[i]), "box": list(b), "reason": e.message})
                continue
            meta.append((i, b))
    t0 = time.perf_counter()
    results = search_many(cache, qs, k=k) if qs else []
    seconds = time.perf_counter() - t0
    grid = cache.grid(layer)
    tf = cache.transform
    recs = []
    for q, (i, b), res in zip(qs, meta, results, strict=True):
        ious, cells = [], []
        for m in res:
            gts = by_id.get(m.id, [])
            ious.append(_best_iou(m.box, gts))
            if ceiling:
                cells.append(_shift_ceiling(q, gts, tf.geometry(*m.image_size), grid,
                                            m.image_size) if gts else 0.0)
        area = (b[2] - b[0]) * (b[3] - b[1])
        rec = {"path": str(cache.paths[i]), "box": [round(v, 2) for v in b], "area": area,
               "bin": area_bin(area), "results": [int(m.id) for m in res],
               "ious": [round(v, 4) for v in ious], "iou": float(np.mean(ious)) if ious else 0.0,
               "iou_top1": float(ious[0]) if ious else 0.0,
               "with_box": float(np.mean([m.id in by_id for m in res])) if len(res) else 0.0,
               "query_cells": list(q.cell_box)}
        if ceiling:
            rec["ceiling"] = float(np.mean(cells)) if cells else 0.0
        recs.append(rec)
    return {"records": recs, "skipped": skipped, "missing": missing, "seconds": seconds,
            "images_with_boxes": len(by_id)}


def _shift_ceiling(q, gts, geometry, grid, size) -> float:
    """The best IoU the query's carried box could reach with any ground-truth box of a result
    image, over every offset (what the grid allows the engine's box to be)."""
    _, _, h, w = q.cell_box
    best = 0.0
    for a in range(grid[0] - h + 1):
        for b in range(grid[1] - w + 1):
            best = max(best, _best_iou(match_box(q, (a, b), geometry, grid, size), gts))
    return best


def run_boxes(arms: Sequence[Arm], rows: Sequence[dict], *, k: int = 5, seed: int = 0,
              n_boot: int = 1000, ceiling: bool = True, log: Log | None = None) -> dict:
    """The boxes protocol on ``arms`` (same queries in each; results compared by IoU)."""
    if not arms:
        raise EvalError("no cache/layer to evaluate")
    rows_out, per_query, skipped = [], {}, {}
    n_q = None
    info = {}
    for arm in arms:
        r = boxes_arm(arm, rows, k, ceiling)
        if not r["records"]:
            raise EvalError(f"{arm.name}: none of the boxes is a usable query (matched "
                            f"{r['images_with_boxes']} images; {len(r['missing'])} paths are not "
                            "indexed in the cache)", param="boxes")
        if log is not None:
            log(f"  {arm.name}: {len(r['records'])} box queries in {r['seconds']:.1f} s"
                + (f" ({len(r['skipped'])} skipped)" if r["skipped"] else ""))
        recs = r["records"]
        per_query[arm.name] = recs
        skipped[arm.name] = r["skipped"]
        info[arm.name] = {"missing": len(r["missing"]), "missing_examples": r["missing"][:5],
                          "images_with_boxes": r["images_with_boxes"],
                          "seconds": round(r["seconds"], 3)}
        n_q = len(recs) if n_q is None else n_q
        for bname in [b for b, _, _ in AREA_BINS] + ["all"]:
            sel = [x for x in recs if bname == "all" or x["bin"] == bname]
            if not sel:
                continue
            row = {"arm": arm.name, "layer": arm.layer, "bin": bname, "n": len(sel),
                   **bootstrap_ci([x["iou"] for x in sel], n_boot=n_boot, seed=seed)}
            for key in ("iou_top1", "with_box") + (("ceiling",) if ceiling else ()):
                ci = bootstrap_ci([x[key] for x in sel], n_boot=n_boot, seed=seed)
                row[key], row[key + "_lo"], row[key + "_hi"] = ci["mean"], ci["lo"], ci["hi"]
            rows_out.append(row)
    out = _header("boxes", arms, n_q or 0, k, seed, n_boot)
    out.update({
        "metric": (f"mean IoU of the top-{k} matched boxes with the best-overlapping "
                   "ground-truth box of each result image (0 when it has none)"),
        "rows": rows_out, "differences": _differences(arms, per_query, n_boot, seed),
        "per_query": per_query, "skipped": skipped, "arm_info": info, "n_boxes": len(rows)})
    return out


def _differences(arms, per_query, n_boot, seed) -> list[dict]:
    """Paired differences (arm − first arm) on the queries both ran, per bin."""
    out = []
    base = {(x["path"], tuple(x["box"])): x for x in per_query[arms[0].name]}
    for arm in arms[1:]:
        pairs = [(base[key], x) for x in per_query[arm.name]
                 if (key := (x["path"], tuple(x["box"]))) in base]
        for bname in [b for b, _, _ in AREA_BINS] + ["all"]:
            d = [b["iou"] - a["iou"] for a, b in pairs if bname == "all" or a["bin"] == bname]
            if d:
                out.append({"a": arms[0].name, "b": arm.name, "bin": bname,
                            **bootstrap_ci(d, n_boot=n_boot, seed=seed)})
    return out


def _ci(r: dict, key: str = "mean", digits: int = 3) -> str:
    lo, hi = (r["lo"], r["hi"]) if key == "mean" else (r[key + "_lo"], r[key + "_hi"])
    return f"{r[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def boxes_markdown(rep: dict) -> str:
    k = rep["k"]
    grids = {a["name"]: "×".join(map(str, a["grid"])) for a in rep["arms"]}
    lines = [f"### boxes: {rep['metric']}", "",
             (f"{rep['n']} box queries ({rep['n_boxes']} boxes in the file), k = {k}, seed = "
              f"{rep['seed']}; mean [95 % CI] over queries ({rep['bootstrap']} bootstrap "
              "resamples). Bins: query-box area in original pixels (§4.4)."), "",
             (f"| arm | grid | bin | n | IoU top-{k} | IoU top-1 | results with a box | "
              "grid ceiling |"), "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        ceil = _ci(r, "ceiling", 2) if "ceiling" in r else "–"
        lines.append(f"| {r['arm']} | {grids[r['arm']]} | {r['bin']} | {r['n']} | {_ci(r)} | "
                     f"{_ci(r, 'iou_top1')} | {_ci(r, 'with_box', 2)} | {ceil} |")
    if rep.get("differences"):
        lines += ["", "Paired differences (B − A, same queries):", "",
                  "| A | B | bin | n | mean [95 % CI] |", "|---|---|---|---|---|"]
        lines += [f"| {d['a']} | {d['b']} | {d['bin']} | {d['n']} | {_ci(d)} |"
                  for d in rep["differences"]]
    lines += ["", ("Grid ceiling: the best IoU the query's box, moved by whole cells, could reach "
                   "with a ground-truth box of each result image (0 for results without one).")]
    return "\n".join(lines) + "\n"


def boxes_figures(rep: dict, out: Path, prefix: str) -> list[Path]:
    """Fig. 8 of the paper: mean IoU per query-size bin, one bar per arm, 95 % CI whiskers."""
    from .report import _plt, save_figure

    plt = _plt()
    if plt is None:
        return []
    arms = list(dict.fromkeys(r["arm"] for r in rep["rows"]))
    bins = [b for b, _, _ in AREA_BINS if any(r["bin"] == b for r in rep["rows"])]
    table = {(r["arm"], r["bin"]): r for r in rep["rows"]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(arms))
    x = np.arange(len(bins))
    for ax, key, title in ((axes[0], "mean", f"top-{rep['k']} matches"),
                           (axes[1], "iou_top1", "top-1 match")):
        for j, a in enumerate(arms):
            rs = [table.get((a, b)) for b in bins]
            lo_k, hi_k = ("lo", "hi") if key == "mean" else (key + "_lo", key + "_hi")
            m = np.array([r[key] if r else np.nan for r in rs])
            err = np.array([[r[key] - r[lo_k] if r else 0 for r in rs],
                            [r[hi_k] - r[key] if r else 0 for r in rs]])
            xs = x + (j - (len(arms) - 1) / 2) * width
            bars = ax.bar(xs, m, width, yerr=err, capsize=3, label=a)
            if key == "mean" and all(r and "ceiling" in r for r in rs):
                ax.scatter(xs, [r["ceiling"] for r in rs], marker="_", s=400, linewidths=2.5,
                           color=bars[0].get_facecolor(), zorder=3)
        ax.set_xticks(x, [f"{b} px²\n(n={table.get((arms[0], b), {}).get('n', 0)})" for b in bins])
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("IoU with the ground-truth box")
        ax.set_title(f"{title} (N={rep['n']}, 95 % CI)")
        ax.legend(fontsize=8)
    if any("ceiling" in r for r in rep["rows"]):
        axes[0].scatter([], [], marker="_", s=200, color="gray", linewidths=2.5,
                        label="grid ceiling (same colour)")
        axes[0].legend(fontsize=8)
    return [save_figure(plt, fig, out / f"{prefix}_iou_by_bin.png")]


def write_boxes_report(rep: dict, out, prefix: str | None = None, figures: bool = True,
                       log: Log | None = None) -> dict:
    """``<prefix>.json``, ``<prefix>.md`` and the figure in ``out``."""
    from .report import write_files

    return write_files(rep, out, prefix or "boxes", boxes_markdown(rep),
                       boxes_figures if figures else None, log)
