"""Search time while another process uses part of a core (a browser showing the results).

    python benchmarks/contention.py CACHE [--layer blocks.10] [--n 50000] [--rounds 9]
                                    [--duty 0.5] [--workdir DIR]

On a 2-core laptop the web app's search shares the cores with the browser. This times the
exact top-10 search (query by dataset id, the central 3×3 cells) on CACHE's real features tiled
to N rows (``vfsearch.bench.build_tiled_cache``), in interleaved rounds, for each combination of

* the work split: ``even`` (one contiguous range per thread, the split before session 26) or
  ``pieces`` (``PIECES_PER_THREAD`` pieces per thread, each thread taking the next one);
* the competitor: none, or one process busy ``--duty`` of the time in 4 ms bursts (what chromium
  does while it paints, measured with ``benchmarks/web_latency.py``'s CPU report).

Prints median wall times and the ratio of the two splits under load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path


def _burn(duty: float, stop) -> None:
    busy = 0.004
    idle = busy * (1 - duty) / duty
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < busy:
            pass
        time.sleep(idle)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--layer", default="blocks.10")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duty", type=float, default=0.5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vfs-contention"))
    a = ap.parse_args(argv)

    from vfsearch import open_cache
    from vfsearch.bench import build_tiled_cache, central_query
    from vfsearch.engine.kernel import dispatch
    from vfsearch.engine.searcher import search

    src = open_cache(a.cache)
    big, _ = build_tiled_cache(src, a.layer, a.n, a.workdir / f"{a.layer}-{a.n}",
                               log=lambda m: print(m, file=sys.stderr))
    big.load(a.layer)
    q = central_query(big, 7, a.layer)
    splits = {"even": 1, "pieces": dispatch.PIECES_PER_THREAD}

    def run(split: str) -> float:
        dispatch.PIECES_PER_THREAD = splits[split]
        t = time.perf_counter()
        search(big, q, k=10)
        return time.perf_counter() - t

    times: dict = {}
    stop = mp.Event()
    burner = None
    for load in ("idle", "busy"):
        if load == "busy":
            burner = mp.Process(target=_burn, args=(a.duty, stop), daemon=True)
            burner.start()
            time.sleep(0.5)
        for s in splits:
            run(s)  # warm-up
        for _ in range(a.rounds):
            for s in splits:
                times.setdefault((load, s), []).append(run(s))
    stop.set()
    if burner is not None:
        burner.join(5)
    dispatch.PIECES_PER_THREAD = splits["pieces"]
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    H, W = big.grid(a.layer)
    C = big.layer_info(a.layer)["channels"]
    print(f"exact top-10, {a.layer} {H}×{W}×{C}, {len(big):,} rows, {os.cpu_count()} CPUs, "
          f"{a.rounds} interleaved rounds (median ms); competitor busy {a.duty:.0%} of one core:")
    print("| split | idle | with the competitor | slowdown |")
    print("|---|---|---|---|")
    for s in splits:
        print(f"| {s} | {med[('idle', s)]:.1f} | {med[('busy', s)]:.1f} | "
              f"{med[('busy', s)] / med[('idle', s)]:.2f}× |")
    busy = med[("busy", "pieces")] / med[("busy", "even")]
    print(f"pieces / even with the competitor: {busy:.2f}×;"
          f" idle: {med[('idle', 'pieces')] / med[('idle', 'even')]:.2f}×; "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
