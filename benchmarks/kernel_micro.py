"""Micro-benchmark of the search kernel against the memory-bandwidth floor.

    python benchmarks/kernel_micro.py [--n 50000] [--nf 10000] [--reps 5] [--threads T]

uint8: n images x 7x7x512 (50k -> 1.25 GB); float16/float32 at --nf images
(10k -> 0.5 / 1.0 GB); the numpy backend at --numpy-n images (median of 2).
Query: 3x3 cells with a soft mask. Timed in rounds (read_floor, then each
backend) after a warm-up round; each row is the median of --reps rounds;
"x floor" = time / (median read_floor time of the same array, scaled to n).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vfsearch.engine import kernel as K
from vfsearch.engine.kernel.dispatch import default_threads


def _make_u8(n: int, H: int, W: int, C: int, rng) -> np.ndarray:
    x = np.empty((n, H, W, C), np.uint8)
    # "random-ish": sparse-ish post-ReLU-like bytes, generated chunk by chunk
    base = rng.integers(0, 256, (4096, H, W, C), dtype=np.uint8)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        np.bitwise_and(base[: e - s], rng.integers(0, 256, dtype=np.uint8), out=x[s:e])
        np.right_shift(x[s:e], s // 4096 % 3, out=x[s:e])
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000, help="images for uint8")
    ap.add_argument("--nf", type=int, default=10_000, help="images for float16/float32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--numpy-n", type=int, default=5_000, help="images for the numpy backend (slow)"
    )
    args = ap.parse_args()

    H = W = 7
    C = 512
    rng = np.random.default_rng(0)
    backends = K.available_backends()
    threads = args.threads or default_threads()
    print(f"backends: {backends}; threads: {threads}")

    wts = np.zeros((H, W))
    wts[2:5, 1:4] = rng.uniform(0.3, 1.0, (3, 3))
    qfeat = rng.random((H, W, C)).astype(np.float32)
    query = K.PreparedQuery.from_grid(qfeat, wts)

    rows = []

    def bench(label, feats, sqnorm, scale, qerr2, backend_list):
        """Rounds of (read_floor, each backend), so that every timing sees the
        same machine state; median per row over the rounds after a warm-up."""
        n = feats.shape[0]
        jobs = [("read_floor", n, lambda: K.read_floor(feats, threads=threads))]
        for b in backend_list:
            nb = n if b != "numpy" else min(n, args.numpy_n)
            kw = {
                "scale": None if scale is None else scale[:nb],
                "qerr2": None if qerr2 is None else qerr2[:nb],
                "threads": threads,
                "backend": b,
            }
            f, s = feats[:nb], sqnorm[:nb]
            jobs.append((b, nb, lambda f=f, s=s, kw=kw: K.scan(f, s, query, **kw)))
        times: dict[str, list[float]] = {name: [] for name, _, _ in jobs}
        for r in range(args.reps + 1):
            for name, _, fn in jobs:
                if name == "numpy" and r > 2:
                    continue  # slow: warm-up + 2 timed runs
                t = time.perf_counter()
                fn()
                if r > 0:
                    times[name].append(time.perf_counter() - t)
        floor = statistics.median(times["read_floor"])
        for name, nb, _ in jobs:
            rows.append((label, name, nb, statistics.median(times[name]), floor * nb / n))

    # uint8
    x = _make_u8(args.n, H, W, C, rng)
    scale = rng.uniform(0.01, 0.05, (args.n, H, W)).astype(np.float32)
    sqn = np.empty((args.n, H, W), np.float32)
    for s in range(0, args.n, 4096):
        xs = x[s : s + 4096].astype(np.float32)
        sqn[s : s + 4096] = np.einsum("nhwc,nhwc->nhw", xs, xs) * scale[s : s + 4096] ** 2
    qerr2 = (sqn * 1e-4).astype(np.float32)
    bench("uint8", x, sqn, scale, qerr2, backends)
    del x, scale, sqn, qerr2

    # float16 / float32 at a smaller n
    for dt in (np.float16, np.float32):
        xf = np.empty((args.nf, H, W, C), dt)
        for s in range(0, args.nf, 2048):
            xf[s : s + 2048] = rng.random((min(2048, args.nf - s), H, W, C), dtype=np.float32)
        sqn = np.empty((args.nf, H, W), np.float32)
        for s in range(0, args.nf, 2048):
            xs = xf[s : s + 2048].astype(np.float32)
            sqn[s : s + 2048] = np.einsum("nhwc,nhwc->nhw", xs, xs)
        bench(np.dtype(dt).name, xf, sqn, None, None, [b for b in backends if b != "numpy"])
        del xf, sqn

    print(f"{'dtype':8s} {'backend':10s} {'n':>7s} {'time s':>9s} {'img/s':>12s} {'x floor':>8s}")
    for label, b, n, t, floor in rows:
        print(f"{label:8s} {b:10s} {n:7d} {t:9.4f} {n / t:12,.0f} {t / floor:8.2f}")


if __name__ == "__main__":
    main()
