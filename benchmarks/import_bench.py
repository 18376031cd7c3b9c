"""Import speed of a reference-library cache (``vfsearch import-vfs``): images/s for N images.

    python benchmarks/import_bench.py [--n 50000] [--work /tmp/vfs-import-bench]
                                      [--out benchmarks/results]

Builds what a user of the reference library (Ulrich & Fong's VisualFeatureSearch code) holds: a
Zarr v2 group with one (N, C, H, W) float16 array chunked by 500 images along N (its
``caching.precompute`` layout; here the default layer's shape 112 × 14 × 14, values from a
seeded generator) and the N images it was computed from — the first N training images of
CIFAR-10 (``../shared/datasets/cifar10-jpeg.zip``), extracted once — then imports it with the
default options (8-bit + f32 refine, zstd, thumbnails and sizes from the images, 2 decoding
processes) and reports images/s end to end, with the time the image decoding alone takes on a
sample for comparison. Results: ``import_bench.{json,md}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.zip"
SHAPE = (112, 14, 14)
ARRAY = "blocks.10"


def extract_images(n: int, dest: Path) -> list[str]:
    """The first ``n`` training images of CIFAR-10 (sorted member names) under ``dest``."""
    with zipfile.ZipFile(CIFAR) as z:
        names = sorted(m for m in z.namelist()
                       if "train/" in m and m.lower().endswith((".jpg", ".jpeg", ".png")))[:n]
        if len(names) < n:
            raise SystemExit(f"{CIFAR} has only {len(names)} training images")
        missing = [m for m in names if not (dest / m).exists()]
        for m in missing:
            z.extract(m, dest)
    return names


def write_reference(path: Path, n: int, seed: int = 0) -> float:
    """The reference library's layout: a Zarr v2 group, one (N, C, H, W) float16 array."""
    import zarr

    stamp = path / "bench-stamp.json"
    want = {"n": n, "shape": list(SHAPE), "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return 0.0
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    a = g.create_array(ARRAY, shape=(n, *SHAPE), chunks=(500, *SHAPE), dtype="f2")
    rng = np.random.default_rng(seed)
    for s in range(0, n, 500):
        e = min(n, s + 500)
        a[s:e] = rng.standard_normal((e - s, *SHAPE), dtype=np.float32).astype(np.float16)
    stamp.write_text(json.dumps(want))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vfs-import-bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not CIFAR.exists():
        print(f"skipped: {CIFAR} not found", file=sys.stderr)
        return 0
    from vfsearch.importing import _describe, import_reference

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = extract_images(args.n, work / "images")
    t_extract = time.perf_counter() - t0
    listing = work / "images.txt"
    listing.write_text("".join(f"{work / 'images' / m}\n" for m in names))
    t_write = write_reference(work / "reference.zarr", args.n)
    out = work / "cache"
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rep = import_reference(work / "reference.zarr", listing, out, arrays=[ARRAY],
                           model="efficientnet-lite0")
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()
    sample = [str(work / "images" / m) for m in names[:2000]]
    t0 = time.perf_counter()
    for p in sample:
        _describe(p, 256, 100_000_000)
    describe_ms = (time.perf_counter() - t0) / len(sample) * 1e3
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    src = sum(f.stat().st_size for f in (work / "reference.zarr").rglob("*") if f.is_file())
    res = {"n": args.n, "imported": rep.imported, "skipped": rep.skipped, "seconds": seconds,
           "images_per_s": rep.imported / seconds, "describe_ms_per_image_1proc": describe_ms,
           "reference_bytes": src, "cache_bytes": size, "shape": list(SHAPE),
           "extract_s": t_extract, "reference_write_s": t_write,
           "load_start": load0, "load_end": load1, "cpus": len(os.sched_getaffinity(0))}
    md = (f"`python benchmarks/import_bench.py --n {args.n}`: a {args.n:,}-image reference cache "
          f"(Zarr v2, one float16 array {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} per image, "
          f"{src / 1e9:.2f} GB) of CIFAR-10 training images imported with the default options "
          f"(int8 + f32 refine, zstd, thumbnails), {res['cpus']} CPUs, load average "
          f"{load0[0]:.1f} → {load1[0]:.1f}:\n\n"
          f"| images | seconds | images/s | cache on disk | decode + thumbnail, 1 process |\n"
          f"|---|---|---|---|---|\n"
          f"| {rep.imported:,} | {seconds:.1f} | **{res['images_per_s']:.0f}** | "
          f"{size / 1e9:.2f} GB | {describe_ms:.2f} ms/image |\n")
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "import_bench.json").write_text(json.dumps(res, indent=2))
        (args.out / "import_bench.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
