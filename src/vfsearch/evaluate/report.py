"""Reports of the protocols: markdown tables, the JSON record and matplotlib figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import OutputError
from .metrics import AREA_BINS
from .protocols import Log

__all__ = ["make_figures", "to_markdown", "write_report"]


def _fmt_ci(row: dict, key: str = "mean", digits: int = 3) -> str:
    lo = row.get("lo" if key == "mean" else key + "_lo")
    hi = row.get("hi" if key == "mean" else key + "_hi")
    return f"{row[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def to_markdown(rep: dict) -> str:
    """A markdown rendering of a protocol's report (tables with 95 % bootstrap CIs)."""
    p = rep["protocol"]
    k = rep["k"]
    lines = [f"### {p}: {rep['metric']}", "",
             (f"N = {rep['n']} queries, k = {k}, seed = {rep['seed']}, 95 % CI from "
              f"{rep['bootstrap']} bootstrap resamples of the queries."), ""]
    grids = {a["name"]: "×".join(map(str, a["grid"])) for a in rep["arms"]}
    if p in ("labels", "precision"):
        lines += ["| arm | grid | queries | mean [95 % CI] |", "|---|---|---|---|"]
        lines += [f"| {r['arm']} | {grids[r['arm']]} | {r['queries']} | {_fmt_ci(r)} |"
                  for r in rep["rows"]]
        if rep.get("differences"):
            lines += ["", "Paired differences (B − A, same queries):", "",
                      "| A | B | queries | mean [95 % CI] |", "|---|---|---|---|"]
            lines += [f"| {d['a']} | {d['b']} | {d['queries']} | {_fmt_ci(d)} |"
                      for d in rep["differences"]]
    if p == "overlap":
        lines += [f"| A | B | queries | overlap [95 % CI] | images in common (of {k}) |",
                  "|---|---|---|---|---|"]
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
            cells = [(_fmt_ci(table[c + (lab,)], digits=2) if c + (lab,) in table else "–")
                     for c in cols]
            lines.append(f"| {lab} | {n_lab} | " + " | ".join(cells) + " |")
        if rep.get("column"):
            col = rep["column"]
            if col != "label":  # for the label column this is the precision table above
                lines += ["", f"Fraction of the top-{k} with the query's own `{col}`:", "",
                          "| arm | queries | mean [95 % CI] |", "|---|---|---|"]
                lines += [f"| {r['arm']} | {r['queries']} | {_fmt_ci(r)} |"
                          for r in rep["column_rows"]]
            for a in arms:
                for kd in kinds:
                    sp = [s for s in rep["spread"] if s["arm"] == a and s["queries"] == kd]
                    if not sp:
                        continue
                    vals = list(sp[0]["fractions"].keys())
                    if len(vals) > 20:
                        continue
                    lines += ["", (f"Spread of the top-{k} over `{col}` ({a}, {kd} queries; rows "
                                   "= query value, columns = result value):"), "",
                              f"| query {col} | n | " + " | ".join(vals) + " |",
                              "|---|---|" + "---|" * len(vals)]
                    for s in sp:
                        lines.append(f"| {s['query_value']} | {s['n']} | "
                                     + " | ".join(f"{s['fractions'][v]:.2f}" for v in vals) + " |")
    if p == "localize":
        lines = [f"### localize: {rep['metric']}", "",
                 (f"{rep['n']} planted crops, {rep['images_in_cache']} images in the cache, "
                  f"k = {k}, seed = {rep['seed']}; mean [95 % CI] over plants "
                  f"({rep['bootstrap']} bootstrap resamples). Bins: pasted-box area in original "
                  "pixels."), "",
                 (f"| layer | grid | bin | n | hit@1 | hit@{k} | IoU top-1 | IoU (planted image) | "
                 "cell ceiling | shift ceiling | IoU ≥ 0.5 |"),
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rep["rows"]:
            lines.append(
                f"| {r['layer']} | {grids[r['arm']]} | {r['bin']} | {r['n']} | {r['hit@1']:.2f} | "
                f"{r[f'hit@{k}']:.2f} | {_fmt_ci(r, 'iou', 2)} | {_fmt_ci(r, 'iou_found', 2)} | "
                f"{_fmt_ci(r, 'ceiling_cells', 2)} | {_fmt_ci(r, 'ceiling_shift', 2)} | "
                f"{r['iou>=0.5']:.2f} |")
    return "\n".join(lines) + "\n"


_NO_MATPLOTLIB = "matplotlib is not installed: figures skipped (pip install 'matplotlib>=3.8')"


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _bars(ax, groups: list[str], series: dict[str, list[dict]], key: str = "mean",
          ylabel: str = ""):
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


def make_figures(rep: dict, out: Path, prefix: str | None = None,
                 log: Log | None = None) -> list[Path]:
    """Write the protocol's figures (PNG) into ``out``; returns their paths ([] without matplotlib,
    saying so to ``log``)."""
    plt = _plt()
    if plt is None:
        if log is not None:
            log(_NO_MATPLOTLIB)
        return []
    out.mkdir(parents=True, exist_ok=True)
    p = rep["protocol"]
    prefix = prefix or p
    k = rep["k"]
    paths = []

    def save(fig, name):
        paths.append(save_figure(plt, fig, out / f"{prefix}_{name}.png"))

    if p in ("labels", "precision"):
        kinds = list(dict.fromkeys(r["queries"] for r in rep["rows"]))
        arms = list(dict.fromkeys(r["arm"] for r in rep["rows"]))
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        series = {a: [next(r for r in rep["rows"] if r["arm"] == a and r["queries"] == kd)
                      for kd in kinds]
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
            fig, axes = plt.subplots(len(kinds), 1,
                                     figsize=(max(6, 0.55 * len(labels) * len(arms)),
                                              3.2 * len(kinds)),
                                     squeeze=False)
            for ax, kd in zip(axes[:, 0], kinds, strict=True):
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
            rs = [next(r for r in rep["rows"] if r["layer"] == layer and r["bin"] == b)
                  for b in bins]
            xs = x + (j - (len(layers) - 1) / 2) * width
            mean = np.array([r["iou"] for r in rs])
            err = np.array([[r["iou"] - r["iou_lo"] for r in rs],
                            [r["iou_hi"] - r["iou"] for r in rs]])
            bars = ax.bar(xs, mean, width, yerr=err, capsize=3, label=f"{layer} IoU (top-1)")
            col = bars[0].get_facecolor()
            ax.scatter(xs, [r["ceiling_cells"] for r in rs], marker="_", s=500, color=col,
                       linewidths=2.5, zorder=3)
            ax.scatter(xs, [r["iou_found"] for r in rs], marker="x", s=30, color="k", zorder=4)
        ax.scatter([], [], marker="_", s=200, color="gray", linewidths=2.5,
                   label="cell ceiling (same colour)")
        ax.scatter([], [], marker="x", s=30, color="k", label="IoU in the planted image, any rank")
        ax.set_xticks(x, [f"{b} px²" for b in bins])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IoU with the pasted box")
        ax.set_title(f"planted-crop localisation (N={rep['n']}, 95 % CI)")
        ax.legend(fontsize=8, loc="upper left")
        save(fig, "iou_by_bin")
        fig, axes = plt.subplots(len(layers), len(bins),
                                 figsize=(3.0 * len(bins), 2.5 * len(layers)),
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


def save_figure(plt, fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, 110 dpi) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_files(rep: dict, out, prefix: str, md: str, figures=None,
                log: Log | None = None) -> dict:
    """Write ``<prefix>.json`` (``rep``) and ``<prefix>.md`` (``md``) into ``out``, then
    ``figures(rep, out, prefix)`` → figure paths when given ([] without matplotlib, saying so to
    ``log``). The files of every protocol's report."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        jpath, mpath = out / f"{prefix}.json", out / f"{prefix}.md"
        jpath.write_text(json.dumps(rep, indent=1, default=_json_default))
        mpath.write_text(md)
    except OSError as e:
        raise OutputError(f"cannot write the report to {out}: {e}") from None
    figs = []
    if figures is not None:
        if _plt() is None:
            if log is not None:
                log(_NO_MATPLOTLIB)
        else:
            figs = figures(rep, out, prefix)
    return {"json": jpath, "markdown": mpath, "figures": figs, "text": md}


def write_report(rep: dict, out: Path, prefix: str | None = None, figures: bool = True,
                 log: Log | None = None) -> dict:
    """Write ``<prefix>.json``, ``<prefix>.md`` and the figures into ``out``."""
    return write_files(rep, out, prefix or rep["protocol"], to_markdown(rep),
                       make_figures if figures else None, log)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
