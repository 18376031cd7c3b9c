"""What ``tighten_k`` (re-scanning the images that may reach the top k with the int16 query)
costs on the data where it was measured at 4-6x a plain scan (benchmarks/kernel_split_check.py's
random 8-bit features, whose best scores are all within the bounds' width of each other), and
on the real features of a tiled cache built by ``vfsearch bench --cache``.

    python benchmarks/tighten_bench.py [--n 50000] [--rounds 7] [--cache TILED_CACHE]
                                       [--out benchmarks/results/tighten_bench.md]

Per case and kernel: the plain fast scan, the scan with tighten_k=11, the fine (int16) scan,
in interleaved rounds (medians; ratios per round), how many images were re-scanned and the
query-rounding bound eps_q.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from vfsearch.engine import kernel as K

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_split_check import make_data, queries  # noqa: E402


def cases(args):
    rng = np.random.default_rng(0)
    yield "random 14x14x112 int8", make_data(rng, args.n, 14, 14, 112, np.int8), \
        queries(rng, 14, 14, 112, True)["region"]
    yield "random 7x7x512 uint8", make_data(rng, args.n, 7, 7, 512, np.uint8), \
        queries(rng, 7, 7, 512, False)["region"]
    if args.cache:
        from vfsearch.bench import central_query
        from vfsearch.cache import open_cache

        c = open_cache(args.cache)
        d = c.load(c.default_layer)
        q = central_query(c, 7, c.default_layer)
        yield f"real {c.default_layer} (tiled, {len(c)})", {
            "feats": d.features, "sqnorm": d.sqnorm, "scale": d.scale, "qerr2": d.qerr2}, \
            (q.features, q.weights)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = ["| data | kernel | plain scan | tighten_k=11 | × plain | re-scanned | eps_q | "
             "fine scan | × plain |", "|---|---|---|---|---|---|---|---|---|"]
    for name, d, (qf, wts) in cases(args):
        pq = K.PreparedQuery.from_grid(qf, wts)
        kw = {"scale": d["scale"], "qerr2": d["qerr2"]}
        for b in [x for x in ("avx512", "avx2") if x in K.available_backends()]:
            run = partial(K.scan, d["feats"], d["sqnorm"], pq, backend=b, **kw)
            fns = {"plain": run, "tight": partial(run, tighten_k=11),
                   "fine": partial(run, precision="fine")}
            ts = {k: [] for k in fns}
            for f in fns.values():
                f()
            for _ in range(args.rounds):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    ts[k].append(time.perf_counter() - t)
            r = fns["tight"]()
            p = np.array(ts["plain"])
            tt, tf = np.array(ts["tight"]), np.array(ts["fine"])
            lines.append(
                f"| {name} | {b} | {np.median(p) * 1e3:.0f} ms | {np.median(tt) * 1e3:.0f} ms "
                f"| {np.median(tt / p):.2f} | {r.rescanned:,} of {len(r.score):,} "
                f"| {r.eps_q:.4f} | {np.median(tf) * 1e3:.0f} ms | {np.median(tf / p):.2f} |")
            print(lines[-1], flush=True)
    lines += ["", f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
              f"`python benchmarks/tighten_bench.py --n {args.n} --rounds {args.rounds}"
              + (f" --cache {args.cache}`" if args.cache else "`")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
