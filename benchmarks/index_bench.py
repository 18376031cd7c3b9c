"""Indexing benchmark: pipeline speed vs the bare forward, cache size per dtype and codec,
time to open a 50k-image cache. All figures are measured side by side in one run.

    python benchmarks/index_bench.py [IMAGES] [--n 256] [--open-n 50000] [--out DIR]

IMAGES defaults to ../shared/datasets/imagenet-sample-1k. The end-to-end comparison of
``vfsearch index`` (a separate process, start to exit) against the bare network, the engines
and the other models, in interleaved rounds, is ``benchmarks/forward_bench.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from vfsearch import index, load_model, open_cache
from vfsearch.cache import compressor, disk_usage, quantize, synthetic_cache
from vfsearch.extract import FeatureExtractor, prepare_image


def bench_extraction(files, layer, batch, workers, tmp: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        lm = load_model()
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    # decode once, outside any timing
    xs = np.stack([prepare_image(f, lm.transform)[0] for f in files])
    x = torch.from_numpy(xs)
    mod = lm.module

    def bare_full():
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                mod(x[i:i + batch])

    def bare_to_layer():
        with FeatureExtractor(mod, [layer]) as fx:
            for i in range(0, len(x), batch):
                fx(x[i:i + batch])

    bare_full()  # warm-up
    t = time.perf_counter()
    bare_full()
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    bare_to_layer()
    t_layer = time.perf_counter() - t
    src = tmp / "imgs"
    src.mkdir(exist_ok=True)
    for f in files:
        dst = src / Path(f).name
        if not dst.exists():
            dst.symlink_to(Path(f).resolve())
    out = tmp / "cache"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    rep = index(src, out, model=lm, layers=[layer], batch_size=batch, workers=workers,
                progress=False)
    t_pipe = time.perf_counter() - t
    n = len(files)
    return {
        "images": n, "layer": layer, "batch": batch, "workers": workers,
        "bare_full_forward_ips": n / t_full, "bare_forward_to_layer_ips": n / t_layer,
        "pipeline_ips": n / t_pipe, "pipeline_ips_excluding_setup": rep.indexed / rep.seconds,
        "pipeline_vs_bare_full": (n / t_pipe) / (n / t_full),
        "pipeline_vs_bare_to_layer": (n / t_pipe) / (n / t_layer),
        "cache": str(out),
    }


def bench_sizes(cache_path: Path, layer: str, tmp: Path) -> list[dict]:
    c = open_cache(cache_path)
    x = np.stack([c.features(i, layer) for i in range(len(c))])  # f32 refine copy = originals
    nonneg = c.layer_info(layer)["nonnegative"]
    rows = []
    for dtype in ("int8", "f16", "f32"):
        q, scale, sqn, qerr2 = quantize(x, dtype, nonneg)
        raw = q.nbytes + sqn.nbytes + (0 if scale is None else scale.nbytes + qerr2.nbytes)
        for codec in ("none", "lz4", "zstd"):
            p = tmp / f"size-{dtype}-{codec}"
            shutil.rmtree(p, ignore_errors=True)
            g = zarr.open_group(str(p), mode="w")
            for name, a in (("features", q), ("sqnorm", sqn), ("scale", scale), ("qerr2", qerr2)):
                if a is None:
                    continue
                arr = g.create_array(name, shape=a.shape, chunks=(256,) + a.shape[1:],
                                     dtype=a.dtype, compressors=compressor(codec) or None)
                arr[:] = a
            t = time.perf_counter()
            for name in g.array_keys():
                g[name][:]
            t_read = time.perf_counter() - t
            on_disk = disk_usage(p)
            rows.append({"dtype": dtype, "codec": codec, "bytes_per_image": on_disk / len(x),
                         "raw_bytes_per_image": raw / len(x), "ratio": raw / on_disk,
                         "read_MBps": raw / t_read / 1e6})
            shutil.rmtree(p)
    return rows


def bench_open(n: int, tmp: Path) -> dict:
    """A synthetic n-image cache (7×7×320 int8 + f32 refine) and the time to open/load it."""
    p = tmp / "open50k"
    root = synthetic_cache(p, n, layer="blocks.15", channels=320, grid=(7, 7), nonnegative=False,
                           refine="none", chunk=256, compression="zstd", model="efficientnet-lite0")
    rng = np.random.default_rng(0)
    g = root["layers/blocks.15"]
    block = 8192
    for s in range(0, n, block):
        e = min(n, s + block)
        g["features"][s:e] = rng.integers(-127, 128, (e - s, 7, 7, 320), dtype=np.int8)
        g["scale"][s:e] = rng.random((e - s, 7, 7), dtype=np.float32)
        g["sqnorm"][s:e] = rng.random((e - s, 7, 7), dtype=np.float32)
        g["qerr2"][s:e] = rng.random((e - s, 7, 7), dtype=np.float32) * 1e-3
        root["images/path"][s:e] = np.array([f"img/{i:07d}.jpg" for i in range(s, e)],
                                            dtype=object)
        root["images/label"][s:e] = np.array([f"class{i % 1000}" for i in range(s, e)],
                                             dtype=object)
    root["images/status"][:] = 1
    t = time.perf_counter()
    c = open_cache(p)
    _ = len(c), c.layers, c.transform
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    _ = c.valid, c.paths, c.labels
    t_index_cols = time.perf_counter() - t
    t = time.perf_counter()
    c.load("blocks.15")
    t_load = time.perf_counter() - t
    res = {"n": n, "open_s": t_open, "read_status_paths_labels_s": t_index_cols,
           "load_features_into_ram_s": t_load, "bytes_on_disk": disk_usage(p)}
    shutil.rmtree(p)
    return res


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="?",
                    default=str(here.parent / "shared/datasets/imagenet-sample-1k"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--layer", default="blocks.15")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--open-n", type=int, default=50_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    files = sorted(str(p) for p in Path(args.images).iterdir()
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[: args.n]
    with tempfile.TemporaryDirectory(prefix="vfs-index-bench-") as td:
        tmp = Path(td)
        ex = bench_extraction(files, args.layer, args.batch, args.workers, tmp)
        print(json.dumps(ex, indent=1))
        sizes = bench_sizes(Path(ex["cache"]), args.layer, tmp)
        print(f"\n{'dtype':<5} {'codec':<5} {'bytes/img':>10} {'raw':>10} {'ratio':>6} "
              f"{'read MB/s':>9}")
        for r in sizes:
            print(f"{r['dtype']:<5} {r['codec']:<5} {r['bytes_per_image']:>10.0f} "
                  f"{r['raw_bytes_per_image']:>10.0f} {r['ratio']:>6.2f} {r['read_MBps']:>9.0f}")
        op = bench_open(args.open_n, tmp)
        print("\n" + json.dumps(op, indent=1))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "index_bench.json").write_text(json.dumps(
                {"extraction": ex, "sizes": sizes, "open": op}, indent=2))


if __name__ == "__main__":
    main()
