"""Dataset-map benchmark: time and peak memory of pooled features → PCA → t-SNE/UMAP → gridify
(and of the thumbnail atlas) for 1k / 10k / 50k images.

    python benchmarks/map_bench.py --sizes 1000,10000,50000 --cache /path/to/cache \\
        --out benchmarks/results

Each size runs in its own process, so ``peak_rss`` (ru_maxrss) is that size's peak; ``base_rss``
is the same process after its imports. With ``--cache``, sizes up to the cache's indexed count
use the cache's real pooled features (the whole cache is pooled, streamed; then a seeded random
sample of n indexed images; its labels give a label-purity score); larger sizes use synthetic
clustered 112-D vectors (40 classes × 8 sub-clusters, like a pooled, L2-normalised layer). The
atlas part builds a synthetic cache holding N real-sized JPEG thumbnails (256 px) and times
``build_atlas`` on a map of N images.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, d: int = 112, classes: int = 40, sub: int = 8, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    top = rng.normal(size=(classes, d)).astype(np.float32)
    mids = top[:, None, :] + 0.6 * rng.normal(size=(classes, sub, d)).astype(np.float32)
    lab = rng.integers(0, classes, n)
    sl = rng.integers(0, sub, n)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 8192):  # bounded temporaries
        e = min(n, s + 8192)
        x[s:e] = mids[lab[s:e], sl[s:e]] + 0.45 * rng.normal(size=(e - s, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, lab


def grid_purity(cell, labels) -> float:
    """Fraction of 4-neighbour grid pairs (both occupied) whose images share a label."""
    import numpy as np

    side = int(cell.max()) + 1
    g = np.full((side, side), -1, np.int64)
    g[cell[:, 1], cell[:, 0]] = np.arange(len(cell))
    same = tot = 0
    for a, b in ((g[:, :-1], g[:, 1:]), (g[:-1, :], g[1:, :])):
        ok = (a >= 0) & (b >= 0)
        same += int((labels[a[ok]] == labels[b[ok]]).sum())
        tot += int(ok.sum())
    return same / max(1, tot)


def worker_map(n: int, cache: str | None, layer: str | None, method: str, seed: int,
               jobs: int | None, synth: bool = False) -> dict:
    import numpy as np

    from vfsearch import open_cache
    from vfsearch.embed import EXACT_MAX, _pca, embed, gridify, knn_preservation, pooled_features

    base = rss_mb()
    out = {"n": n, "method": method}
    t0 = time.perf_counter()
    c = open_cache(cache) if cache else None
    if c is not None and int(c.valid.sum()) >= n and not synth:
        valid = np.flatnonzero(np.asarray(c.valid))
        feats = pooled_features(c, layer)  # streamed over the whole cache
        ids = np.sort(np.random.default_rng(seed).choice(valid, n, replace=False))
        x = feats[ids]
        out["pooled_rows"] = len(feats)
        labels = np.asarray(c.labels)[ids]
        out["data"] = f"real ({c.path.name}, {layer or c.default_layer}, " \
                      f"{'×'.join(map(str, c.grid(layer)))}×{x.shape[1]} {c.dtype})"
        del feats
    else:
        x, labels = synthetic(n)
        out["data"] = "synthetic 112-D clusters"
    out["dim"] = int(x.shape[1])
    out["pool_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    xp = _pca(x, 50)
    out["pca_s"] = time.perf_counter() - t
    t = time.perf_counter()
    xy = embed(xp, method, seed=seed, n_jobs=jobs)
    out["embed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cells = gridify(xy, seed=seed)
    out["gridify_s"] = time.perf_counter() - t
    out["gridify"] = "exact" if n <= EXACT_MAX else "tiled"
    out["total_s"] = out["pool_s"] + out["pca_s"] + out["embed_s"] + out["gridify_s"]
    out["side"] = math.ceil(math.sqrt(n))
    out["peak_rss_mb"] = rss_mb()
    out["base_rss_mb"] = base
    side = out["side"]
    perm = np.random.default_rng(1).permutation(side * side)[:n]
    rand = np.stack([perm % side, perm // side], 1)
    t = time.perf_counter()
    out["knn10_embedding"] = knn_preservation(xp, xy, 10, 1000, seed)
    out["knn10_grid"] = knn_preservation(xp, cells, 10, 1000, seed)
    out["knn10_random"] = knn_preservation(xp, rand, 10, 1000, seed)
    out["purity_grid"] = grid_purity(cells, labels)
    out["purity_random"] = grid_purity(rand, labels)
    out["quality_s"] = time.perf_counter() - t
    return out


def _photo_jpegs(count: int = 256, seed: int = 0) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 255, (13, 17, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((256, 192), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def worker_atlas(n: int, workdir: str) -> dict:
    """A cache of n thumbnails (no features needed) + a random map → build_atlas."""
    import numpy as np

    from vfsearch import open_cache
    from vfsearch.cache import INDEXED, synthetic_cache
    from vfsearch.embed import MapResult, build_atlas

    path = Path(workdir) / f"atlas_{n}"
    if not (path / "zarr.json").exists():
        w = synthetic_cache(path, n, channels=8, grid=(2, 2), dtype="f16")
        pics = _photo_jpegs()
        for s in range(0, n, 4096):
            e = min(n, s + 4096)
            w.write_block(s, thumb=[pics[i % len(pics)] for i in range(s, e)],
                          status=np.full(e - s, INDEXED, np.uint8))
    c = open_cache(path)
    base = rss_mb()
    side = math.ceil(math.sqrt(n))
    perm = np.random.default_rng(0).permutation(side * side)[:n]
    cell = np.stack([perm % side, perm // side], 1).astype(np.int32)
    m = MapResult(layer="-", method="tsne", seed=0, side=side, xy=cell.astype(np.float32),
                  cell=cell)
    t = time.perf_counter()
    pages = build_atlas(c, m, progress=False, store=False)
    return {"n": n, "atlas_s": time.perf_counter() - t, "pages": len(pages),
            "atlas_mb": sum(map(len, pages)) / 1e6, "peak_rss_mb": rss_mb(), "base_rss_mb": base,
            "thumb_bytes_mean": float(np.mean([len(p) for p in _photo_jpegs(8)]))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--cache", default=None, help="A vfsearch cache for real pooled features.")
    ap.add_argument("--layer", default=None)
    ap.add_argument("--method", default="tsne", choices=["tsne", "umap"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=None, help="t-SNE threads (default: automatic).")
    ap.add_argument("--synthetic", action="store_true", help="Synthetic features for every size.")
    ap.add_argument("--no-atlas", action="store_true")
    ap.add_argument("--workdir", default=None, help="Where the atlas benchmark's caches go.")
    ap.add_argument("--out", default=None, help="Write map_bench.json / map_bench.md here.")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kind, n = a.worker.split(":")
        res = worker_map(int(n), a.cache, a.layer, a.method, a.seed, a.jobs,
                                               a.synthetic) if kind == "map" \
            else worker_atlas(int(n), a.workdir)
        print("RESULT " + json.dumps(res))
        return
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    workdir = a.workdir or tempfile.mkdtemp(prefix="vfs_mapbench_")
    rows, atl = [], []

    def run(kind, n):
        cmd = [sys.executable, __file__, "--worker", f"{kind}:{n}", "--method", a.method,
               "--seed", str(a.seed), "--workdir", workdir]
        for flag, v in (("--cache", a.cache), ("--layer", a.layer), ("--jobs", a.jobs)):
            if v is not None:
                cmd += [flag, str(v)]
        if a.synthetic:
            cmd.append("--synthetic")
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.stderr.write(p.stderr[-3000:])
            raise SystemExit(f"{kind} {n} failed")
        r = json.loads(line[-1][7:])
        print(json.dumps(r), file=sys.stderr, flush=True)
        return r

    for n in sizes:
        rows.append(run("map", n))
    if not a.no_atlas:
        for n in sizes:
            atl.append(run("atlas", n))
    md = [(f"CPU: {os.cpu_count()} cores, load average at end {os.getloadavg()[0]:.1f}; "
           f"method {a.method}, seed {a.seed}"), "",
          ("| n | data | pool s | PCA s | embed s | gridify s | total s | peak RSS MB (base) | "
           "10-NN kept emb / grid / random | grid-neighbour same label (random) |"),
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']} | {r['data']} | {r['pool_s']:.1f} | {r['pca_s']:.2f} | "
                  f"{r['embed_s']:.1f} | {r['gridify_s']:.1f} ({r['gridify']}) | "
                  f"{r['total_s']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} ({r['base_rss_mb']:.0f}) | {r['knn10_embedding']:.3f} / "
                  f"{r['knn10_grid']:.3f} / {r['knn10_random']:.4f} | {r['purity_grid']:.3f} "
                  f"({r['purity_random']:.3f}) |")
    if atl:
        md += ["", "| n | atlas s | pages (2048 px, 32 px tiles) | MB | peak RSS MB (base) |",
               "|---|---|---|---|---|"]
        for r in atl:
            md.append(f"| {r['n']} | {r['atlas_s']:.1f} | {r['pages']} | {r['atlas_mb']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} ({r['base_rss_mb']:.0f}) |")
    text = "\n".join(md)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "map_bench.json").write_text(json.dumps({"map": rows, "atlas": atl}, indent=1))
        (out / "map_bench.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
