"""How good are the saliency maps? Insertion / deletion AUC and "does the peak land on the
planted crop" for every explain method × fixed/both, on query/result pairs with a known answer,
in the manner of "Why do these match?" (Plummer et al.).

    python benchmarks/explain_quality.py --images /work/shared/datasets/imagenet-sample-1k \\
        [--n 100] [--work /tmp/vfs-explain-quality] [--out docs/explain_quality.md]

The pairs are the ``localize`` protocol's planted crops (:func:`vfsearch.evaluate.plant_crops`
through :func:`~vfsearch.evaluate.localize.prepare_localize`): a crop of each source image is
pasted at a known box into a distractor; the query is the crop's box in its source, the result
is the planted image (whatever its rank), so the region that should explain the match is the
pasted box. Crop sides cycle over the protocol's four area bins (24–300 px). Model
efficientnet-lite0, layer blocks.10; every method with its declared defaults (``--fast`` cuts
LIME's samples and the mask's iterations, for a trial run).

Per pair and method: the insertion and deletion AUCs of the result-side map (16 steps, the
blurred image as the baseline, as the explainers compute them), whether the map's peak lies in
the pasted box (the peak of a map with ties, e.g. LIME's superpixels, is the centre of its
maximal pixels), and in "both" modes whether the query-side peak lies in the query box. Means
with 95 % bootstrap intervals (:func:`vfsearch.evaluate.metrics.bootstrap_ci`, 1,000
resamples of the pairs). Baselines: ``exact`` (the exact per-cell shares of the score, from the
cache) and ``random`` (a random map: what the AUCs are worth by chance). Results are appended to
``WORK/results.jsonl`` as they come, so a stopped run resumes; ``--summary-only`` writes the
table of the pairs done so far (those with every method run) without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: what runs per pair. Occlusion and RISE run in "both" mode only: their result-side map there
#: is computed exactly as in "fixed" mode (the same perturbations through the same scorer), so
#: the "fixed" rows are those maps (checked on the first pairs with --check-fixed)
METHODS = [("exact", "-", {}), ("random", "-", {}),
           ("occlusion", "both", {"mode": "both"}), ("rise", "both", {"mode": "both"}),
           ("lime", "fixed", {}),
           ("mask", "fixed", {}), ("mask", "both", {"mode": "both"})]
ROWS = [("exact", "-"), ("random", "-"), ("occlusion", "fixed"), ("occlusion", "both"),
        ("rise", "fixed"), ("rise", "both"), ("lime", "fixed"), ("mask", "fixed"),
        ("mask", "both")]
FAST = {"lime": {"n_samples": 300}, "mask": {"iterations": 100}}


def peak_xy(sal):
    import numpy as np

    m = sal.max()
    ys, xs = np.nonzero(sal >= m - 1e-9 * max(1.0, abs(float(m))))
    return float(ys.mean()), float(xs.mean())


def peak_in(sal, geom, box) -> bool:
    """Whether the map's peak (model-input pixels or feature cells) lands in ``box`` (original
    pixels of the image the map is over)."""
    y, x = peak_xy(sal)
    scale = geom.size / sal.shape[0]
    px, py = geom.to_image((x + 0.5) * scale, (y + 0.5) * scale)
    return box[0] <= px <= box[2] and box[1] <= py <= box[3]


def _scorer(cache, q):
    from vfsearch.engine.query import model_for_cache
    from vfsearch.explain.blackbox import Scorer
    from vfsearch.explain.forward import layer_net

    return Scorer(layer_net(model_for_cache(cache), q.layer, cache.transform.size), q, 8)


def baseline_aucs(cache, q, rid, sal):
    """Insertion / deletion AUCs of any result-side map through the explainers' own scorer."""
    from vfsearch.explain.auc import insertion_deletion
    from vfsearch.explain.blackbox import image_for, input_arrays

    x, xb = input_arrays(image_for(cache, rid), cache.transform)
    return insertion_deletion(sal, x, xb, _scorer(cache, q).results, steps=16)


def query_aucs(cache, q, src, rid, qsal):
    """Insertion / deletion AUCs of a query-side map: the query image perturbed, its region
    scored against the result's (unperturbed) features."""
    from vfsearch.explain.auc import insertion_deletion
    from vfsearch.explain.blackbox import image_for, input_arrays

    x, xb = input_arrays(image_for(cache, src), cache.transform)
    ref = cache.features(rid, q.layer)
    sc = _scorer(cache, q)
    return insertion_deletion(qsal, x, xb, lambda b: sc.queries(b, ref), steps=16)


def run_pair(cache, plant, idx, method, params, seed):
    import numpy as np

    from vfsearch.engine import make_query
    from vfsearch.explain import explain

    src, rid = idx[plant["source"]], idx[plant["planted"]]
    q = make_query(cache, src, box=tuple(plant["crop"]), layer="blocks.10")
    geom = cache.transform.geometry(*cache.image_size(rid))
    t = time.perf_counter()
    if method == "random":  # one deterministic random map per pair
        sal = np.random.default_rng(seed).random((224, 224))
        ins, dele = baseline_aucs(cache, q, rid, sal)
        qsal = None
    else:
        ex = explain(cache, q, rid, method, use_cache=False, **params)
        sal, qsal = ex.saliency, ex.query_saliency
        ins, dele = ex.insertion_auc, ex.deletion_auc
        if ins is None:  # the instant methods compute no AUCs themselves
            ins, dele = baseline_aucs(cache, q, rid, sal)
    row = {"planted": plant["planted"], "bin": plant["bin"], "method": method,
           "insertion": float(ins), "deletion": float(dele),
           "peak_on_crop": bool(peak_in(sal, geom, plant["pasted"])),
           "seconds": time.perf_counter() - t}
    if qsal is not None and method != "exact":
        row["query_peak_on_crop"] = bool(peak_in(qsal, q.geometry, plant["crop"]))
        qi, qd = query_aucs(cache, q, src, rid, qsal)
        row["query_insertion"], row["query_deletion"] = float(qi), float(qd)
        row["sal"] = sal  # kept in memory for --check-fixed, not written
    return row


def summarise(rows, n_boot=1000):
    from vfsearch.evaluate.metrics import bootstrap_ci

    out = []
    for method, mode in ROWS:
        run_mode = "both" if method in ("occlusion", "rise") else mode
        rs = [r for r in rows if r["method"] == method and r.get("mode", "-") == run_mode]
        if not rs:
            continue
        d = {"method": method, "mode": mode, "n": len(rs),
             "seconds": sum(r["seconds"] for r in rs) / len(rs)}
        keys = ["insertion", "deletion", "peak_on_crop"]
        if mode == "both":
            keys += ["query_insertion", "query_deletion", "query_peak_on_crop"]
        for key in keys:
            vals = [float(r[key]) for r in rs if key in r]
            if vals:
                d[key] = bootstrap_ci(vals, n_boot=n_boot, seed=0)
        d["peak_by_bin"] = {b: bootstrap_ci([float(r["peak_on_crop"]) for r in rs
                                             if r["bin"] == b], n_boot=n_boot, seed=0)
                            for b in sorted({r["bin"] for r in rs}, key=_bin_order)}
        out.append(d)
    return out


def _bin_order(b: str) -> int:
    return ["<1k", "1k-5k", "5k-20k", ">20k"].index(b) if b in ("<1k", "1k-5k", "5k-20k",
                                                                   ">20k") else 9


def to_markdown(summary, setup) -> str:
    def ci(d, digits=3, pct=False):
        if d is None:
            return "–"
        f = (lambda v: f"{100 * v:.0f} %") if pct else (lambda v: f"{v:.{digits}f}")
        return f"{f(d['mean'])} [{f(d['lo'])}, {f(d['hi'])}]"

    lines = [
        "# How good are the explanations? (planted crops)", "",
        "Insertion AUC (↑: the score comes back fast when the most salient parts are restored "
        "into the blurred image) and deletion AUC (↓: it drops fast when they are blurred "
        "first), 16 steps each, of the result-side map; how often the map's peak lands on the "
        "planted crop (and, in \"both\" mode, the query-side peak on the query's box). Means "
        "with 95 % bootstrap intervals over the pairs.", "",
        f"Made by `{setup['command']}` ({setup['n']} query/result pairs: the localize "
        f"protocol's planted crops from `{setup['images']}`, seed {setup['seed']}; "
        f"efficientnet-lite0, blocks.10; {setup['settings']}; {setup['cpus']} CPUs, "
        f"{setup['hours']:.1f} h of explaining; load average (1 min) at the start and the end "
        f"of this run {setup['load'][0]:.1f} / {setup['load'][1]:.1f}).", "",
        "| method | mode | pairs | insertion AUC ↑ | deletion AUC ↓ | peak on the crop ↑ | "
        "query map: insertion ↑ | query map: deletion ↓ | query peak on its box ↑ | s / pair |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for d in summary:
        lines.append(f"| {d['method']} | {d['mode']} | {d['n']} | {ci(d.get('insertion'))} | "
                     f"{ci(d.get('deletion'))} | {ci(d.get('peak_on_crop'), pct=True)} | "
                     f"{ci(d.get('query_insertion'))} | {ci(d.get('query_deletion'))} | "
                     f"{ci(d.get('query_peak_on_crop'), pct=True)} | {d['seconds']:.1f} |")
    bins = sorted({b for d in summary for b in d["peak_by_bin"]}, key=_bin_order)
    lines += ["", "Peak on the planted crop by the crop's area (original pixels², the protocol's "
              "bins; about a quarter of the pairs each):", "",
              "| method | mode | " + " | ".join(bins) + " |",
              "|---|---|" + "---|" * len(bins)]
    for d in summary:
        lines.append(f"| {d['method']} | {d['mode']} | " + " | ".join(
            ci(d["peak_by_bin"].get(b), pct=True) for b in bins) + " |")
    lines += ["", "`exact` is the exact split of the score over the matched cells (from the "
              "cache, no model); `random` is a random map (chance level of the AUCs and of the "
              "peak, which then lands on the crop about as often as the crop covers the input). "
              "The planted crop covers on average "
              f"{100 * setup['crop_fraction']:.1f} % of the model input. Occlusion and RISE ran "
              "in \"both\" mode; their result-side map is computed there exactly as in "
              "\"fixed\" mode (same perturbations, same scorer), so the fixed rows are those "
              f"maps{setup.get('fixed_check', '')}; their s / pair is that of the \"both\" "
              "run. The query-side AUCs perturb the query image and score its region against "
              "the result's unperturbed features.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default="/work/shared/datasets/imagenet-sample-1k")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--pool", type=int, default=100, help="distractor images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/vfs-explain-quality")
    ap.add_argument("--out", default="docs/explain_quality.md")
    ap.add_argument("--json", default="benchmarks/results/explain_quality.json")
    ap.add_argument("--methods", default=None, help="comma-separated method:mode to run")
    ap.add_argument("--fast", action="store_true", help="fewer LIME samples / mask iterations")
    ap.add_argument("--check-fixed", type=int, default=3,
                    help="pairs on which occlusion/RISE fixed are run too and compared")
    ap.add_argument("--summary-only", action="store_true",
                    help="run nothing: the table of the pairs done so far (every method run)")
    a = ap.parse_args(argv)

    import numpy as np

    from vfsearch.evaluate.localize import prepare_localize
    from vfsearch.evaluate.protocols import _path_index

    work = Path(a.work)
    cache, plants, _setup = prepare_localize(a.images, work, n=a.n, pool=a.pool, seed=a.seed,
                                             layers=["blocks.10"], progress=False)
    idx = _path_index(cache)
    res_path = work / ("results_fast.jsonl" if a.fast else "results.jsonl")
    rows = [json.loads(ln) for ln in res_path.read_text().splitlines()] if res_path.exists() else []
    done = {(r["planted"], r["method"], r.get("mode", "-")) for r in rows}
    todo = METHODS
    if a.methods:
        want = set(a.methods.split(","))
        todo = [m for m in METHODS if f"{m[0]}:{m[1]}" in want or m[0] in want]
    t0 = time.time()
    load0 = os.getloadavg()[0]
    checks: list[bool] = [r["fixed_identical"] for r in rows if "fixed_identical" in r]
    with res_path.open("a") as fh:
        for j, p in enumerate([] if a.summary_only else plants):
            for method, mode, params in todo:
                if (p["planted"], method, mode) in done:
                    continue
                kw = dict(params, **(FAST.get(method, {}) if a.fast else {}))
                row = run_pair(cache, p, idx, method, kw, seed=a.seed + j)
                row["mode"] = mode
                sal = row.pop("sal", None)
                if sal is not None and method in ("occlusion", "rise") and j < a.check_fixed:
                    fixed = run_pair(cache, p, idx, method, {}, seed=a.seed + j)
                    same = bool(np.array_equal(fixed.pop("sal", sal), sal)) and (
                        fixed["insertion"] == row["insertion"])
                    checks.append(same)
                    row["fixed_identical"] = same
                rows.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(f"[{j + 1}/{len(plants)}] {method} {mode}: ins {row['insertion']:.3f} "
                      f"del {row['deletion']:.3f} peak {row['peak_on_crop']} "
                      f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)
    want = {(m, mode) for m, mode, _ in todo}
    got: dict = {}
    for r in rows:
        got.setdefault(r["planted"], set()).add((r["method"], r.get("mode", "-")))
    plants = [p for p in plants if want <= got.get(p["planted"], set())]  # the complete pairs
    keep = {p["planted"] for p in plants}
    rows = [r for r in rows if r["planted"] in keep]
    summary = summarise(rows)
    geo = [cache.transform.geometry(*cache.image_size(idx[p["planted"]])) for p in plants]
    frac = sum(((p["pasted"][2] - p["pasted"][0]) * g.sx) ** 2 / g.size ** 2
               for p, g in zip(plants, geo, strict=True)) / len(plants)
    hours = sum(r["seconds"] for r in rows) / 3600
    settings = ("LIME 300 samples, mask 100 iterations (--fast)" if a.fast
                else "every method with its declared defaults")
    cmd = "python benchmarks/explain_quality.py" + (" --fast" if a.fast else "") + (
        f" --n {a.n}" if a.n != 100 else "") + (f" --pool {a.pool}" if a.pool != 100 else "")
    setup = {"command": cmd, "n": len(plants), "images": a.images, "seed": a.seed,
             "settings": settings, "cpus": os.cpu_count(), "hours": hours,
             "crop_fraction": frac, "elapsed_h": (time.time() - t0) / 3600,
             "load": [load0, os.getloadavg()[0]],
             "fixed_check": (f" (run in fixed mode too on {len(checks)} pair×method cases: "
                             f"{'identical maps and AUCs' if all(checks) else 'DIFFERENT'})"
                             if checks else "")}
    text = to_markdown(summary, setup)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"setup": setup, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
