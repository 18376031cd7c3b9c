"""Runtimes of every explain method and mode on this CPU with the default model, next to seed 004's
Table 1 (measured there on a GPU).

    python benchmarks/explain_bench.py [--out benchmarks/results] [--quick]

Indexes the embedded sample photos with the default model (efficientnet-lite0, blocks.10), takes a
box on photo 0 as the query and its best match as the result, and times each explainer with its
default parameters, then with 004's settings (625 sliding windows of ~12 % of the image; 2,000
RISE masks from an 8×8 grid, p = 0.5). Insertion / deletion AUCs (16 steps each) are part of every
model-running time. ``--quick`` skips 004's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# seed 004, Table 1 (GPU): method, fixed reference?, seconds
SANE = {("occlusion", "fixed"): 0.2, ("rise", "fixed"): 0.3, ("occlusion", "both"): 2.5,
        ("rise", "both"): 5.8}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)

    import torch

    import vfsearch
    from vfsearch.datasets import sample_images
    from vfsearch.engine import make_query
    from vfsearch.explain import explain

    tmp = Path(tempfile.mkdtemp(prefix="vfs-explain-bench-"))
    imgs = sample_images(tmp / "imgs", variants=1)
    cache = vfsearch.index(imgs, tmp / "cache", layers=["blocks.10"], progress=False).cache
    W, H = cache.image_size(0)
    q = make_query(cache, 0, box=(W * 0.3, H * 0.15, W * 0.6, H * 0.5))
    rid = vfsearch.search(cache, q, k=1)[0].id
    auc = 2 * (16 + 1)  # forward passes of insertion + deletion
    runs = [("exact", "-", {}, 0), ("feature", "-", {}, 0),
            ("occlusion", "fixed", {}, 49 + auc), ("occlusion", "both", {"mode": "both"}, 98 + auc),
            ("rise", "fixed", {}, 256 + auc), ("rise", "both", {"mode": "both"}, 512 + auc)]
    if not a.quick:
        runs += [("occlusion", "fixed", {"window": 78, "stride": 6, "tag": "004"}, 625 + auc),
                 ("rise", "fixed", {"n_masks": 2000, "cells": 8, "tag": "004"}, 2000 + auc)]
    explain(cache, q, rid, "occlusion", window=224, stride=224, use_cache=False)  # load the model
    rows = []
    for method, mode, params, forwards in runs:
        params = dict(params)
        tag = params.pop("tag", "ours")
        t = time.perf_counter()
        ex = explain(cache, q, rid, method, use_cache=False, **params)
        s = time.perf_counter() - t
        row = {"method": method, "mode": mode, "settings": tag, "params": ex.params, "seconds": s,
               "forwards": forwards, "ms_per_forward": 1000 * s / forwards if forwards else None,
               "insertion_auc": ex.insertion_auc, "deletion_auc": ex.deletion_auc,
               "sane_gpu_s": SANE.get((method, mode)) if tag in ("ours", "004") else None}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    md = [f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"efficientnet-lite0 blocks.10, query box on photo 0, result #{rid}", "",
          "| method | mode | settings | forward passes | time (this CPU) | ms / forward | 004 (GPU) |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = {k: v for k, v in r["params"].items() if k in ("window", "stride", "n_masks", "cells", "p")}
        if r["forwards"]:
            line = (f"| {r['method']} | {r['mode']} | {r['settings']} {p} | {r['forwards']} | "
                    f"{r['seconds']:.2f} s | {r['ms_per_forward']:.0f} |")
        else:
            line = (f"| {r['method']} | {r['mode']} | {r['settings']} | 0 (cached features) | "
                    f"{r['seconds'] * 1000:.0f} ms | – |")
        md.append(line + (f" {r['sane_gpu_s']} s |" if r["sane_gpu_s"] is not None else " – |"))
    text = "\n".join(md)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "explain_bench.json").write_text(json.dumps(rows, indent=1))
        Path(a.out, "explain_bench.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
