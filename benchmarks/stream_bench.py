"""Search a cache larger than RAM, streamed from disk with a memory budget.

    python benchmarks/stream_bench.py [--n 1000000] [--workdir /tmp/vfs-stream] [--memory-mb 1024]
                                      [--keep] [--no-reference] [--out benchmarks/results]

Builds (or reuses) an uncompressed synthetic 8-bit cache of N images of 7×7×512 (as in the
paper's Table 1; 25.7 GB at 1M, more than this machine's RAM), chunk by chunk with bounded
memory; 20 images carry noisy copies of the query region. Then, each in a fresh process (so that
its peak RSS is its own), with the page cache evicted first (cold) and not (warm):

* the disk floor: every byte of the feature files read once (2 threads, plain reads);
* vfsearch's streamed search: blocks of the cache read in a background thread while the kernel
  scans the previous one (``memory`` bounds the two blocks alive), top-10 with tightened bounds;
* optionally a float64 reference (numpy, the formula on the dequantised features, streamed) whose
  top-10 the search must equal.

Prints a markdown table and a projection (time per image) for larger N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

H = W = 7
C = 512
LAYER = "conv5"
CHUNK = 4096


def _query():
    rng = np.random.default_rng(123)
    q = np.maximum(rng.standard_normal((H, W, C), dtype=np.float32) - 0.8, 0)
    mask = np.zeros((H, W), np.float32)
    mask[2:5, 1:4] = [[0.5, 1, 0.7], [1, 1, 1], [0.3, 1, 0.8]]
    return q, mask


def build(path: Path, n: int, seed: int = 0) -> dict:
    from vfsearch.cache import INDEXED, quantize, synthetic_cache

    need = n * H * W * (C + 12)
    free = shutil.disk_usage(path.parent).free
    if need * 1.05 > free:
        raise SystemExit(f"need {need / 1e9:.1f} GB on {path.parent}, {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    w = synthetic_cache(path, n, layer=LAYER, channels=C, grid=(H, W), chunk=CHUNK,
                        compression="none")
    rng = np.random.default_rng(seed)
    bank = np.maximum(rng.standard_normal((CHUNK, H, W, C), dtype=np.float32) - 0.8, 0)
    q, _mask = _query()
    plant = set(rng.choice(n, min(20, n), replace=False).tolist())
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        x = bank[rng.permutation(CHUNK)[: e - s]]
        x *= rng.uniform(0.5, 2.0, (e - s, H, W, 1)).astype(np.float32)
        for i in sorted(i for i in plant if s <= i < e):
            a, b = rng.integers(0, H - 2), rng.integers(0, W - 2)
            noise = 0.15 + 0.05 * (i % 20)
            x[i - s, a:a + 3, b:b + 3] = np.maximum(
                0, q[2:5, 1:4] + noise * rng.standard_normal((3, 3, C), dtype=np.float32))
        u8, scale, sq, qe = quantize(x, "int8", True)
        w.write_block(s, encoded={LAYER: {"features": u8, "scale": scale, "sqnorm": sq,
                                          "qerr2": qe}}, status=INDEXED)
        if (s // CHUNK) % 16 == 0:
            print(f"  built {e:,}/{n:,} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    return {"build_s": time.perf_counter() - t0, "bytes": need}


def _feature_files(path: Path) -> list[Path]:
    return sorted((p for p in (path / "layers" / LAYER / "features").rglob("*") if p.is_file()
                   and p.name != "zarr.json"), key=lambda p: int(p.parts[-4]))


def worker(kind: str, path: str, memory: int) -> dict:
    from vfsearch.cache import open_cache
    from vfsearch.engine import kernel
    from vfsearch.engine.searcher import _scan_all, _topk, exact_scores

    c = open_cache(path)
    n = len(c)
    q, mask = _query()
    out: dict = {"kind": kind}
    kernel.available_backends()  # build / load the kernel before the clock starts
    t = time.perf_counter()
    if kind == "floor":
        buf_size = 64 << 20

        def read(p: Path) -> int:
            b = bytearray(buf_size)
            total = 0
            with open(p, "rb", buffering=0) as f:
                while (k := f.readinto(b)) > 0:
                    total += k
            return total

        with ThreadPoolExecutor(2) as pool:
            out["bytes"] = sum(pool.map(read, _feature_files(Path(path))))
    elif kind == "search":
        pq = kernel.PreparedQuery.from_grid(q, mask)
        res = _scan_all(c, LAYER, [pq], memory=memory, backend="auto", threads=None,
                        tighten_k=11)[0]
        L = res["lower"][_topk(res["lower"], 10)[-1]]
        cand = np.flatnonzero(res["upper"] >= L)
        # no refine copy in this cache: the top-10 of the (tight) 8-bit bounds must be certain
        out["candidates"] = int(len(cand))
        top = _topk(res["score"], 10)
        rest = np.ones(n, bool)
        rest[top] = False
        out["top10"] = top.tolist()
        out["certain"] = bool(res["lower"][top].min() >= res["upper"][rest].max())
        out["backend"] = kernel.resolve_backend("auto")
    elif kind == "reference":
        best = np.empty(n)
        for data in c.iter_chunks(LAYER, rows=CHUNK):
            f = data.features.astype(np.float32) * data.scale[..., None]
            best[data.start:data.start + data.n] = exact_scores(f, mask, q, block=256)[0]
        out["top10"] = _topk(best, 10).tolist()
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(kind: str, path: Path, memory: int, cold: bool) -> dict:
    from vfsearch.bench import _evict

    if cold:
        _evict(path)
    cmd = [sys.executable, __file__, "--worker", kind, "--workdir", str(path.parent),
           "--memory-mb", str(memory >> 20), "--path", str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{kind} failed")
    r = json.loads(line[-1][7:])
    r["cold"] = cold
    print(json.dumps(r), file=sys.stderr, flush=True)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/vfs-stream")
    ap.add_argument("--memory-mb", type=int, default=1024, help="streaming budget (two blocks)")
    ap.add_argument("--keep", action="store_true", help="keep the cache for later runs")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    memory = a.memory_mb << 20
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.path, memory)))
        return 0
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"stream_{a.n}"
    info: dict = {"n": a.n, "memory_mb": a.memory_mb, "ram_gb": os.sysconf("SC_PHYS_PAGES")
                  * os.sysconf("SC_PAGE_SIZE") / 1e9}
    from vfsearch.cache import open_cache

    reuse = False
    try:
        reuse = len(open_cache(path)) == a.n and bool(open_cache(path).valid.all())
    except Exception:  # noqa: BLE001
        reuse = False
    if not reuse:
        print(f"building {a.n:,} synthetic 7×7×512 u8 feature maps at {path} …", file=sys.stderr)
        info.update(build(path, a.n))
    info["bytes"] = a.n * H * W * C
    rows = []
    try:
        for cold in (True, False):
            rows.append(_run("floor", path, memory, cold))
            rows.append(_run("search", path, memory, cold))
        if not a.no_reference:
            rows.append(_run("reference", path, memory, False))
    finally:
        if not a.keep:
            shutil.rmtree(path, ignore_errors=True)
    get = {(r["kind"], r["cold"]): r for r in rows}
    ref = get.get(("reference", False))
    md = [f"N = {a.n:,} images of 7×7×512 u8 ({info['bytes'] / 1e9:.1f} GB of features; RAM "
          f"{info['ram_gb']:.0f} GB), streaming budget {a.memory_mb} MiB, backend "
          f"{get[('search', True)]['backend']}, {os.cpu_count()} CPUs", "",
          "| | disk floor (read once) | streamed search | × floor | peak RSS of the search "
          "| µs / image |",
          "|---|---|---|---|---|---|"]
    big = info["bytes"] > 0.8 * info["ram_gb"] * 1e9
    for cold in (True, False):
        f, s = get[("floor", cold)], get[("search", cold)]
        label = "cold" if cold else ("again (page cache holds part)" if big else "warm")
        md.append(f"| {label} | {f['seconds']:.1f} s ({f['bytes'] / f['seconds'] / 1e9:.2f} GB/s) "
                  f"| {s['seconds']:.1f} s | {s['seconds'] / f['seconds']:.2f} | "
                  f"{s['peak_rss_mb']:.0f} MB "
                  f"| {s['seconds'] / a.n * 1e6:.1f} |")
    s = get[("search", True)]
    md.append("")
    md.append(f"Top-10 certain from the 8-bit bounds: {s['certain']} ({s['candidates']} candidates)"
              + (f"; equal to the float64 reference: {s['top10'] == ref['top10']} (reference "
                 f"{ref['seconds']:.0f} s)" if ref else "") + ".")
    per = s["seconds"] / a.n
    md.append(f"Projection (linear, same disk): 10M images {per * 1e7 / 60:.1f} min cold.")
    text = "\n".join(md)
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "stream_bench.json").write_text(json.dumps({"info": info, "runs": rows},
                                                               indent=1))
        Path(a.out, "stream_bench.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
