"""Runtimes of every explain method and mode on this CPU with the default model: today's path
and the committed one before it side by side in one run, next to Plummer et al.'s Table 1 (a GPU).

    python benchmarks/explain_bench.py [--out benchmarks/results] [--rounds 3] [--quick]
                                       [--old-rev 2c9c100]

Indexes the embedded sample photos with the default model (efficientnet-lite0, blocks.10), takes a
box on photo 0 as the query and its best match as the result, and times

* sliding-window occlusion and RISE, "fixed" and "both", with their default parameters and with
  Plummer et al.'s (625 windows of ~12 % of the image; 2,000 masks from an 8×8 grid, p = 0.5): the
  old code path (``src/vfsearch/explain/blackbox.py`` and ``auc.py`` as committed at
  ``--old-rev``, loaded from git into this process; batch 16 through the original module's
  hooked forward) against the new one (a prepared copy of the network, batch 8, incremental
  occlusion), in alternating order, ``--rounds`` times; the table gives medians, their ratio,
  and how far the two saliency maps agree (AUC differences, same peak);
* LIME (1,000 samples) and the learned mask (500 iterations, fixed and both) against the time
  their model passes alone take in the same round: the same number of forwards (and, for the
  mask, forward+backward passes at its batch of 1 or 2 images) through the same prepared
  network on stand-in inputs, insertion/deletion forwards included.

Insertion / deletion AUCs (16 steps each: 34 forwards) are part of every model-running time.
``--long-rounds`` (default 1) caps the rounds of the long runs (Plummer et al.'s settings, the
mask). ``--quick`` skips Plummer et al.'s settings and uses one round; ``--only TAG,...`` runs
some configurations. The tables are written after every round (a stopped run keeps its complete
rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "2c9c100"  # the committed explain code before the LIME / mask / speed-up work

# Plummer et al., "Why do these match?", Table 1 (GPU): method, fixed reference?, seconds
SANE = {("occlusion", "fixed"): 0.2, ("lime", "fixed"): 1.2, ("mask", "fixed"): 4.1,
        ("rise", "fixed"): 0.3, ("occlusion", "both"): 2.5, ("mask", "both"): 7.2,
        ("rise", "both"): 5.8}


def load_old_path(rev: str):
    """The old OcclusionExplainer / RISEExplainer (and the insertion/deletion they used) from
    ``git show REV:…``, executed inside the ``vfsearch.explain`` package so their relative
    imports resolve; the registry is left as it was."""
    from vfsearch.explain import METHODS

    def source(path):
        return subprocess.check_output(["git", "show", f"{rev}:{path}"], cwd=ROOT, text=True)

    saved = dict(METHODS)
    mods = {}
    try:
        for name in ("auc", "blackbox"):
            m = types.ModuleType(f"vfsearch.explain._old_{name}")
            m.__package__ = "vfsearch.explain"
            exec(compile(source(f"src/vfsearch/explain/{name}.py"), f"{rev}:{name}.py", "exec"),
                 m.__dict__)
            mods[name] = m
    finally:
        METHODS.clear()
        METHODS.update(saved)
    bb = mods["blackbox"]
    bb.insertion_deletion = mods["auc"].insertion_deletion
    out = {}
    for cls in (bb.OcclusionExplainer, bb.RISEExplainer):
        method = cls.name
        cls.name = f"old-{method}"  # not in METHODS: takes its own declared parameters
        out[method] = cls
    return out


def run_old(cls, cache, q, rid, params):
    full = {p.name: p.default for p in cls.params_spec}
    full.update(params)
    return cls(cache, None, **full).explain(q, rid)


def passes_alone(net, n_fwd: int, batch: int, n_train: int = 0, train_batch: int = 1,
                 size: int = 224) -> float:
    """Seconds of the model passes alone: ``n_fwd`` forwards in batches of ``batch`` under
    inference mode, plus ``n_train`` forward+backward passes of ``train_batch`` images (input
    gradient only), through ``net`` on stand-in inputs."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = time.perf_counter()
    done = 0
    while done < n_fwd:
        k = min(batch, n_fwd - done)
        net.features(x[:k], batch)
        done += k
    if n_train:
        xt = torch.randn(train_batch, 3, size, size, generator=g)
        m = torch.full((train_batch, 1, 14, 14), 0.5, requires_grad=True)
        for _ in range(n_train):
            up = torch.nn.functional.interpolate(m, size=(size, size), mode="bilinear")
            out = net.forward(xt * up)
            torch.autograd.grad(out.mean(), m)
    return time.perf_counter() - t


def peak(sal):
    import numpy as np

    return tuple(int(v) for v in np.unravel_index(int(np.argmax(sal)), sal.shape))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long-rounds", type=int, default=1,
                    help="rounds of the long runs (Plummer et al.'s settings, the mask)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--only", default=None, help="comma-separated config tags to run")
    a = ap.parse_args(argv)
    rounds = 1 if a.quick else a.rounds

    import numpy as np
    import torch

    import vfsearch
    from vfsearch.datasets import sample_images
    from vfsearch.engine import make_query
    from vfsearch.engine.query import model_for_cache
    from vfsearch.explain import explain
    from vfsearch.explain.forward import layer_net

    old = load_old_path(a.old_rev)
    tmp = Path(tempfile.mkdtemp(prefix="vfs-explain-bench-"))
    imgs = sample_images(tmp / "imgs", variants=1)
    cache = vfsearch.index(imgs, tmp / "cache", layers=["blocks.10"], progress=False).cache
    W, H = cache.image_size(0)
    q = make_query(cache, 0, box=(W * 0.3, H * 0.15, W * 0.6, H * 0.5))
    rid = vfsearch.search(cache, q, k=1)[0].id
    lm = model_for_cache(cache)
    net = layer_net(lm, q.layer, cache.transform.size)
    auc = 2 * (16 + 1)  # forward passes of insertion + deletion

    # (tag, method, mode, params, forwards) — compared old vs new
    pairs = [("occ-fixed", "occlusion", "fixed", {}, 49 + auc),
             ("occ-both", "occlusion", "both", {"mode": "both"}, 98 + auc),
             ("rise-fixed", "rise", "fixed", {}, 256 + auc),
             ("rise-both", "rise", "both", {"mode": "both"}, 512 + auc)]
    if not a.quick:
        pairs += [("occ-paper", "occlusion", "fixed", {"window": 78, "stride": 6}, 625 + auc),
                  ("rise-paper", "rise", "fixed", {"n_masks": 2000, "cells": 8}, 2000 + auc)]
    # (tag, method, mode, params, forwards, train passes, train batch) — against passes alone
    alone = [("lime", "lime", "fixed", {}, 1000 + auc, 0, 1),
             ("mask-fixed", "mask", "fixed", {}, auc, 500, 1),
             ("mask-both", "mask", "both", {"mode": "both"}, auc, 500, 2)]
    if a.only:
        keep = set(a.only.split(","))
        pairs = [p for p in pairs if p[0] in keep]
        alone = [p for p in alone if p[0] in keep]

    # warm up both paths (model load, the prepared copy and its checks, the incremental plan)
    run_old(old["occlusion"], cache, q, rid, {"window": 224, "stride": 224})
    explain(cache, q, rid, "occlusion", window=112, stride=112, use_cache=False)
    explain(cache, q, rid, "mask", iterations=2, use_cache=False)

    long_tags = {"occ-paper", "rise-paper", "mask-fixed", "mask-both"}
    long_rounds = 1 if a.quick else min(a.long_rounds, rounds)
    times: dict = {}
    cpu: dict = {}
    last: dict = {}
    runs: list = []

    def report(done: int) -> None:
        """The tables of what is measured after ``done`` rounds (written after every
        round: a stopped run keeps its complete rounds)."""
        med = {k: statistics.median(v) for k, v in times.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        rows = []
        for tag, method, mode, _params, n in pairs:
            if (tag, "old") not in last or (tag, "new") not in last:
                continue
            o, nw = last[(tag, "old")], last[(tag, "new")]
            rows.append({
                "tag": tag, "method": method, "mode": mode, "params": nw.params, "forwards": n,
                "old_s": med[(tag, "old")], "new_s": med[(tag, "new")],
                "speedup": med[(tag, "old")] / med[(tag, "new")],
                "best_speedup": min(times[(tag, "old")]) / min(times[(tag, "new")]),
                "old_cpu_s": cmed[(tag, "old")], "new_cpu_s": cmed[(tag, "new")],
                "cpu_speedup": cmed[(tag, "old")] / cmed[(tag, "new")],
                "old_all_s": times[(tag, "old")], "new_all_s": times[(tag, "new")],
                "old_all_cpu_s": cpu[(tag, "old")], "new_all_cpu_s": cpu[(tag, "new")],
                "insertion_auc": [o.insertion_auc, nw.insertion_auc],
                "deletion_auc": [o.deletion_auc, nw.deletion_auc],
                "same_peak": peak(o.saliency) == peak(nw.saliency),
                "query_same_peak": (None if o.query_saliency is None
                                    else peak(o.query_saliency) == peak(nw.query_saliency)),
                "saliency_corr": float(np.corrcoef(o.saliency.ravel(), nw.saliency.ravel())[0, 1]),
                "sane_gpu_s": SANE.get((method, mode)) if tag.endswith(("fixed", "both", "paper"))
                else None,
            })
        for tag, method, mode, _params, n_fwd, n_train, tb in alone:
            if (tag, "new") not in last or (tag, "passes") not in times:
                continue
            ex = last[(tag, "new")]
            rows.append({
                "tag": tag, "method": method, "mode": mode, "params": ex.params,
                "forwards": n_fwd + n_train * tb, "backwards": n_train * tb,
                "new_s": med[(tag, "method")], "passes_s": med[(tag, "passes")],
                "overhead": med[(tag, "method")] / med[(tag, "passes")],
                "best_overhead": min(times[(tag, "method")]) / min(times[(tag, "passes")]),
                "cpu_s": cmed[(tag, "method")], "passes_cpu_s": cmed[(tag, "passes")],
                "cpu_overhead": cmed[(tag, "method")] / cmed[(tag, "passes")],
                "new_all_s": times[(tag, "method")], "passes_all_s": times[(tag, "passes")],
                "new_all_cpu_s": cpu[(tag, "method")], "passes_all_cpu_s": cpu[(tag, "passes")],
                "insertion_auc": [None, ex.insertion_auc], "deletion_auc": [None, ex.deletion_auc],
                "sane_gpu_s": SANE.get((method, mode)),
            })
        for method in ("exact", "feature"):
            t = time.perf_counter()
            explain(cache, q, rid, method, use_cache=False)
            rows.append({"tag": method, "method": method, "mode": "-", "forwards": 0,
                         "new_s": time.perf_counter() - t})

        head = (f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
                f"threads), efficientnet-lite0 blocks.10, query box on photo 0, result #{rid}; "
                f"old path = `{a.old_rev}`; medians of {done} interleaved round(s) "
                f"({min(done, long_rounds)} for Plummer et al.'s settings and the mask); "
                f"load average at the end {os.getloadavg()[0]:.1f}")
        md = [head, "",
              "Old vs new path (same run):", "",
              "| method | mode | settings | forward passes | old | new | speed-up | fastest-run "
              "speed-up | CPU-time speed-up | AUC ins (old/new) | AUC del (old/new) | same peak | "
              "Plummer et al. (GPU) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "old_s" not in r:
                continue
            p = {k: v for k, v in r["params"].items()
                 if k in ("window", "stride", "n_masks", "cells")}
            same = "yes" if r["same_peak"] else "no"
            if r["query_same_peak"] is not None:
                same += " / query " + ("yes" if r["query_same_peak"] else "no")
            md.append(f"| {r['method']} | {r['mode']} | {p} | {r['forwards']} | "
                      f"{r['old_s']:.2f} s | {r['new_s']:.2f} s | **{r['speedup']:.1f}×** | "
                      f"{r['best_speedup']:.1f}× | {r['cpu_speedup']:.1f}× | "
                      f"{r['insertion_auc'][0]:.3f} / {r['insertion_auc'][1]:.3f} | "
                      f"{r['deletion_auc'][0]:.3f} / {r['deletion_auc'][1]:.3f} | {same} | "
                      f"{r['sane_gpu_s'] if r['sane_gpu_s'] is not None else '–'} s |")
        md += ["", "New methods against their model passes alone (same run):", "",
               "| method | mode | settings | model passes | time | passes alone | ratio | "
               "fastest-run ratio | CPU-time ratio | AUC ins | AUC del | Plummer et al. (GPU) |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "passes_s" not in r:
                continue
            keys = ("n_samples", "segments") if r["method"] == "lime" else ("size", "iterations")
            p = {k: r["params"][k] for k in keys}
            fw = (f"{r['forwards']} ({r['backwards']} with backward)" if r.get("backwards")
                  else str(r["forwards"]))
            md.append(f"| {r['method']} | {r['mode']} | {p} | {fw} | {r['new_s']:.2f} s | "
                      f"{r['passes_s']:.2f} s | **{r['overhead']:.2f}×** | "
                      f"{r['best_overhead']:.2f}× | {r['cpu_overhead']:.2f}× | "
                      f"{r['insertion_auc'][1]:.3f} | {r['deletion_auc'][1]:.3f} | "
                      f"{r['sane_gpu_s']} s |")
        md += ["", "Times are wall-clock medians; \"fastest-run\" is the ratio of the fastest "
               "runs of each side (the least disturbed by other jobs); the CPU-time columns are "
               "the same ratios from the process's CPU seconds (less sensitive to other jobs on "
               "a shared machine). Every run's time, CPU time and load average are in "
               "explain_bench.json and the log."]
        md += ["", "Instant methods (cached features, no model): "
               + ", ".join(f"{r['method']} {1000 * r['new_s']:.0f} ms" for r in rows
                           if r["forwards"] == 0 and "passes_s" not in r)]
        text = "\n".join(md)
        print(text)
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            Path(a.out, "explain_bench.json").write_text(json.dumps(
                {"setup": head, "rows": rows, "runs": runs}, indent=1, default=str))
            Path(a.out, "explain_bench.md").write_text(text + "\n")

    for r in range(rounds):
        for j, (tag, method, _mode, params, _n) in enumerate(pairs):
            if tag in long_tags and r >= long_rounds:
                continue
            order = ("old", "new") if (r + j) % 2 == 0 else ("new", "old")
            for path in order:
                t, c = time.perf_counter(), time.process_time()
                if path == "old":
                    ex = run_old(old[method], cache, q, rid, params)
                else:
                    ex = explain(cache, q, rid, method, use_cache=False, **params)
                s, cs = time.perf_counter() - t, time.process_time() - c
                times.setdefault((tag, path), []).append(s)
                cpu.setdefault((tag, path), []).append(cs)
                last[(tag, path)] = ex
                runs.append({"round": r, "tag": tag, "path": path, "seconds": round(s, 3),
                             "cpu_s": round(cs, 3), "load": os.getloadavg()[0]})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        for j, (tag, method, _mode, params, n_fwd, n_train, tb) in enumerate(alone):
            if tag in long_tags and r >= long_rounds:
                continue
            order = ("method", "passes") if (r + j) % 2 == 0 else ("passes", "method")
            for what in order:
                t, c = time.perf_counter(), time.process_time()
                if what == "method":
                    last[(tag, "new")] = explain(cache, q, rid, method, use_cache=False, **params)
                else:
                    passes_alone(net, n_fwd, 8, n_train, tb, cache.transform.size)
                s, cs = time.perf_counter() - t, time.process_time() - c
                times.setdefault((tag, what), []).append(s)
                cpu.setdefault((tag, what), []).append(cs)
                runs.append({"round": r, "tag": tag, "path": what, "seconds": round(s, 3),
                             "cpu_s": round(cs, 3), "load": os.getloadavg()[0]})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        report(r + 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
