"""Concept discovery time and memory at scale: the real features of a cache (e.g. the
1000-image ImageNet sample) tiled to N images, each copy different (grid rolled by a copy-
dependent number of cells, mirrored on odd rounds, plus 2 % Gaussian noise per cell), written as
an ordinary 8-bit cache; then each measurement runs in its own process (peak RSS from
``resource.getrusage``).

    python benchmarks/concepts_bench.py build SRC_CACHE LAYER N DEST
    python benchmarks/concepts_bench.py dictionary DEST LAYER [K]
    python benchmarks/concepts_bench.py saliency DEST LAYER [QUERIES] [K]
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def build(src: str, layer: str, n: int, dest: str, refine: str = "none") -> None:
    from vfsearch import open_cache
    from vfsearch.cache import INDEXED, synthetic_cache

    c = open_cache(src)
    info = c.layer_info(layer)
    H, W = info["grid"]
    base = c.rows_features(layer, np.flatnonzero(c.valid))
    m = len(base)
    w = synthetic_cache(dest, n, layer=layer, channels=info["channels"], grid=(H, W),
                        nonnegative=info["nonnegative"], dtype="int8", refine=refine, chunk=256,
                        compression="zstd", model=c.model, transform=c.transform)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    step = 1024
    for s in range(0, n, step):
        j = np.arange(s, min(n, s + step))
        src_i, copy = j % m, j // m
        x = base[src_i].copy()
        for t in np.unique(copy):
            sel = copy == t
            x[sel] = np.roll(x[sel], (int(t) % H, (int(t) * 3) % W), axis=(1, 2))
            if t % 2:
                x[sel] = x[sel][:, :, ::-1]
        scale = np.abs(x).mean(axis=-1, keepdims=True)
        x = x + 0.02 * scale * rng.standard_normal(x.shape).astype(np.float32)
        if info["nonnegative"]:
            x = np.maximum(x, 0)
        w.write_block(s, features={layer: x}, path=[f"img_{i:07d}.jpg" for i in j],
                      label=[str(c.labels[i]) for i in src_i],
                      size=[c.image_size(int(i)) for i in src_i],
                      status=INDEXED)
    print(json.dumps({"built": n, "seconds": round(time.perf_counter() - t0, 1)}))


def _report(what: str, t0: float, extra: dict) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": what, "seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mb": round(peak), **extra}))


def dictionary(dest: str, layer: str, k: int = 32) -> None:
    from vfsearch import open_cache
    from vfsearch.concepts.dictionary import discover_dictionary

    c = open_cache(dest)
    t0 = time.perf_counter()
    cs = discover_dictionary(c, layer, n_concepts=k)
    _report("dictionary", t0, {"images": len(c), "cells": int(cs.sizes.sum()), "k": k,
                               "sample_s": cs.attrs["seconds_sample"],
                               "history": cs.attrs["history"],
                               "objective_per_cell": cs.attrs["objective_per_cell"]})


def saliency(dest: str, layer: str, queries: int = 200, k: int = 32) -> None:
    from vfsearch import open_cache
    from vfsearch.concepts.saliency import discover_saliency

    c = open_cache(dest)
    t0 = time.perf_counter()
    cs = discover_saliency(c, layer, n_concepts=k, n_queries=queries)
    _report("saliency", t0, {"images": len(c), "queries": queries, "k": k,
                             **{n: cs.attrs[n] for n in ("seconds_knn", "seconds_saliency",
                                                         "crops", "distinct_crops")}})


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "build":
        build(args[0], args[1], int(args[2]), args[3], *args[4:])
    elif cmd == "dictionary":
        dictionary(args[0], args[1], *(int(a) for a in args[2:]))
    elif cmd == "saliency":
        saliency(args[0], args[1], *(int(a) for a in args[2:]))
    else:
        raise SystemExit(__doc__)
