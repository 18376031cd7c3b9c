"""Index mode ``full`` against ``crop`` on the ImageNet sample: disk, index and search time, and
how much a score differs between the modes where the match lies inside the centre crop.

    python benchmarks/full_mode.py [--images ../shared/datasets/imagenet-sample-1k]
                                   [--work /tmp/vfs-full-bench] [--queries 40] [--rounds 7]
                                   [--out benchmarks/results]

Both caches are built with the default model and layer and the default options (8-bit + f32
refine). Queries: ``--queries`` images, each with the pixel box of the central 3×3 cells of its
centre crop, the same pixels in both modes. Search times: exact top-10, both caches loaded in
RAM, the modes alternated query by query over ``--rounds`` rounds (medians). Scores inside the
crop: for each query and every other image, the full-mode score map restricted to the windows
that lie inside that image's centre crop, its best, against the crop-mode best (the same
query pixels, the same image pixels; the features differ where the crop cut the context off,
and the grids are offset by up to half a cell). Results: ``full_mode.{json,md}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vfsearch  # noqa: E402
from vfsearch.cache.reader import disk_usage  # noqa: E402
from vfsearch.geometry import offset_rc  # noqa: E402

LABEL = r"^n\d+_(?P<label>.+)\.\w+$"


def build(images: Path, out: Path, mode: str) -> dict:
    t = time.perf_counter()
    rep = vfsearch.index(images, out, mode=mode, label_pattern=LABEL, progress=False)
    secs = time.perf_counter() - t
    c = vfsearch.open_cache(out)
    return {"cache": c, "seconds": secs if rep.indexed else None, "indexed": rep.indexed,
            "engine": rep.engine, "bytes": disk_usage(Path(out)),
            "bytes_per_image": disk_usage(Path(out)) / max(1, int(c.valid.sum()))}


def query_box(c, i: int, layer: str) -> tuple[float, float, float, float]:
    """Pixel box of the central 3×3 cells of image i's centre crop (crop-mode geometry)."""
    t = c.transform.with_mode("crop")
    g = c.grid(layer)
    fr = t.frame(*c.image_size(i), g)
    r0, c0 = g[0] // 2 - 1, g[1] // 2 - 1
    return fr.cell_image_box(r0, c0, 3, 3)


def inside_crop_best(full, i: int, q, layer: str) -> float:
    """Best full-mode score of q in image i over the windows inside i's centre crop."""
    smap = vfsearch.engine.searcher.exact_scores(full.features(i, layer)[None], q.weights,
                                                 q.features)[2][0]
    if not smap.size:
        return -np.inf
    crop = full.transform.with_mode("crop").geometry(*full.image_size(i)).crop
    fr = full.frame(i, layer)
    _, _, h, w = q.cell_box
    best = -np.inf
    for o in range(smap.size):
        a, b = offset_rc(o, fr.grid, w)
        x0, y0, x1, y1 = fr.cell_image_box(a, b, h, w)
        if x0 >= crop[0] - 1 and y0 >= crop[1] - 1 and x1 <= crop[2] + 1 and y1 <= crop[3] + 1:
            best = max(best, float(smap.reshape(-1)[o]))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path,
                    default=ROOT.parent / "shared" / "datasets" / "imagenet-sample-1k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vfs-full-bench"))
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    if not a.images.is_dir():
        print(f"no images at {a.images}", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    arms = {m: build(a.images, a.work / m, m) for m in ("crop", "full")}
    crop, full = arms["crop"]["cache"], arms["full"]["cache"]
    layer = crop.default_layer
    for c in (crop, full):
        c.load(layer)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.flatnonzero(crop.valid & full.valid), a.queries, replace=False))
    qs = {m: [vfsearch.make_query(arms[m]["cache"], int(i), box=query_box(crop, int(i), layer),
                                  layer=layer) for i in ids] for m in arms}
    for m in arms:  # warm up
        vfsearch.search(arms[m]["cache"], qs[m][0], k=10)
    times: dict[str, list[float]] = {m: [] for m in arms}
    for _ in range(a.rounds):
        for j in range(len(ids)):
            for m in arms:
                t = time.perf_counter()
                vfsearch.search(arms[m]["cache"], qs[m][j], k=10)
                times[m].append(time.perf_counter() - t)
    # scores inside the centre crop: full (restricted) against crop, every image for 10 queries
    diffs = []
    for j in range(min(10, len(ids))):
        rc = vfsearch.search(crop, qs["crop"][j], k=10, return_scores=True)
        for i in np.flatnonzero(crop.valid & full.valid):
            if i == ids[j]:
                continue
            diffs.append(inside_crop_best(full, int(i), qs["full"][j], layer) - rc.scores[i])
    d = np.abs(np.asarray(diffs))
    top = []
    for j in range(len(ids)):
        r1 = vfsearch.search(crop, qs["crop"][j], k=10).ids
        r2 = vfsearch.search(full, qs["full"][j], k=10).ids
        top.append(len(set(r1) & set(r2)) / 10)
    res = {
        "images": int(crop.valid.sum()), "layer": layer, "grid": {m: list(arms[m]["cache"].grid(
            layer)) for m in arms},
        "load": os.getloadavg()[0],
        "index_seconds": {m: arms[m]["seconds"] for m in arms},
        "engine": {m: arms[m]["engine"] for m in arms},
        "bytes_per_image": {m: arms[m]["bytes_per_image"] for m in arms},
        "search_ms_median": {m: 1e3 * statistics.median(times[m]) for m in arms},
        "portraits": int(full.transposed(layer).sum()),
        "inside_crop_abs_diff": {"median": float(np.median(d)), "p90": float(np.quantile(d, .9)),
                                 "max": float(d.max()), "pairs": int(len(d))},
        "top10_overlap_mean": float(np.mean(top)),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "full_mode.json").write_text(json.dumps(res, indent=1))
    ratio = lambda k: res[k]["full"] / res[k]["crop"] if res[k]["crop"] else float("nan")  # noqa
    lines = [
        f"# `--mode full` against `crop`: {res['images']} ImageNet images, layer {layer}",
        "",
        f"grid: crop {res['grid']['crop']}, full {res['grid']['full']} "
        f"({res['portraits']} portraits stored transposed); load average {res['load']:.1f}",
        "",
        "| | crop | full | full / crop |",
        "|---|---|---|---|",
        f"| bytes per image | {res['bytes_per_image']['crop'] / 1e3:.1f} KB | "
        f"{res['bytes_per_image']['full'] / 1e3:.1f} KB | {ratio('bytes_per_image'):.2f} |",
    ]
    if all(res["index_seconds"].values()):
        lines.append(f"| index (s, {res['images']} images) | {res['index_seconds']['crop']:.1f} | "
                     f"{res['index_seconds']['full']:.1f} | {ratio('index_seconds'):.2f} |")
    lines += [
        f"| search, exact top-10, 3×3 cells (ms, median) | "
        f"{res['search_ms_median']['crop']:.2f} | {res['search_ms_median']['full']:.2f} | "
        f"{ratio('search_ms_median'):.2f} |",
        "",
        f"Scores inside the centre crop ({d.size} query–image pairs): |full − crop| median "
        f"{res['inside_crop_abs_diff']['median']:.3f}, 90th percentile "
        f"{res['inside_crop_abs_diff']['p90']:.3f}, max {res['inside_crop_abs_diff']['max']:.3f}. "
        f"Top-10 overlap between the modes: {res['top10_overlap_mean']:.2f}.",
    ]
    (a.out / "full_mode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
