"""Global ("similar images") search time: pooled-feature cosine over N stored vectors, with
the exact float64 re-check, timed against one read of the pooled vectors and a float64 numpy
reference, in interleaved rounds (median).

    python benchmarks/global_bench.py --sizes 50000,1000000 --channels 112
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vfsearch.cache import INDEXED, open_cache, synthetic_cache
from vfsearch.engine.global_search import global_scores, global_top, pooled_cosine


def build(path: Path, n: int, c: int, seed: int = 0):
    w = synthetic_cache(path, n, channels=c, grid=(1, 1), dtype="f16", chunk=1 << 16)
    rng = np.random.default_rng(seed)
    protos = np.maximum(rng.standard_normal((500, c)), 0).astype(np.float32)
    for s in range(0, n, 1 << 16):
        e = min(n, s + (1 << 16))
        x = (protos[rng.integers(0, 500, e - s)]
             + 0.5 * rng.standard_normal((e - s, c)).astype(np.float32))
        w.write_block(s, encoded={"conv5": {"pooled": x}}, status=np.full(e - s, INDEXED, np.uint8))
    return open_cache(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50000,1000000")
    ap.add_argument("--channels", type=int, default=112)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            c = build(Path(tmp) / f"g{n}", n, args.channels)
            P = c.pooled("conv5")
            q = P[7].copy()
            times = {"read": [], "ours": [], "float64": []}
            for _ in range(args.rounds):
                t = time.perf_counter()
                float(np.asarray(P, np.float32).sum())
                times["read"].append(time.perf_counter() - t)
                t = time.perf_counter()
                s = global_scores(c, "conv5", q)
                top, exact, checked = global_top(c, "conv5", q, s, 10)
                times["ours"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ref = pooled_cosine(P.astype(np.float64), q)
                want = np.lexsort((np.arange(n), -ref))[:10]
                times["float64"].append(time.perf_counter() - t)
            assert list(top) == list(want), "top-10 differs from the float64 reference"
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"n": n, "channels": args.channels, "read_s": med["read"],
                         "ours_s": med["ours"], "float64_s": med["float64"],
                         "x_read": med["ours"] / med["read"], "rechecked": int(checked),
                         "pooled_mb": P.nbytes / 1e6})
            print(json.dumps(rows[-1]))
    md = ["| N | pooled vectors | one read | ours (exact top-10) | × read | float64 numpy "
          "| re-checked |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']:,} | {r['pooled_mb']:.0f} MB | {r['read_s'] * 1e3:.1f} ms | "
                  f"{r['ours_s'] * 1e3:.1f} ms | {r['x_read']:.2f}× | "
                  f"{r['float64_s'] * 1e3:.0f} ms | "
                  f"{r['rechecked']} |")
    text = "\n".join(md)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
        Path(args.out).with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
