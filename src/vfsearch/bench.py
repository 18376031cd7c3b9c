"""``vfsearch bench``: the search engine against the paper's method, measured side by side.

Synthetic 7×7×512 feature maps (as in the paper's Table 1: ResNet50 conv5) for several N. For each
N the same run times

* the reference method exactly as the reference library implements it: batches of 500 float32
  NCHW images, the normalised masked query as a conv2d filter, the squared features convolved
  channel by channel with the squared mask and summed for the norms (PyTorch, both cores);
* our fused kernel on f32, f16 and 8-bit caches (8-bit with the exact refine step);
* one plain read of the 8-bit features with the same threads (the memory floor);
* optionally the 8-bit cache streamed from disk (cold: evicted with posix_fadvise, and warm);

and checks top-10 agreement and the max score error against a float64 reference. The data has
a few planted near-copies of the query region so the top-10 is meaningful.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .engine import kernel
from .engine.searcher import _topk

__all__ = ["run_bench", "reference_method"]

H = W = 7
C = 512
FLOAT_MAX_N = 50_000  # f16/f32 scans are timed up to this N (memory), the 8-bit one at every N


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def reference_method(feats_nhwc: np.ndarray, qfeat: np.ndarray, mask: np.ndarray, batch: int = 500):
    """The paper's conv2d search as the reference library computes it (float32, NCHW batches).

    Returns (best score, best offset index) per image. Each batch is converted to float32 NCHW,
    as the reference does when it reads a batch from its Zarr cache.
    """
    import torch

    ys, xs = np.nonzero(mask > 0)
    top, left, bot, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    m = torch.tensor(mask[top:bot, left:right], dtype=torch.float32)[None, None]
    q = torch.from_numpy(np.ascontiguousarray(qfeat.transpose(2, 0, 1)))
    q = q[None, :, top:bot, left:right]
    region = q * m
    filt = region / torch.linalg.vector_norm(region, dim=[1, 2, 3], keepdim=True) * m
    sq_mask = m * m
    qh, qw = bot - top, right - left
    scores, offs = [], []
    with torch.no_grad():
        for i in range(0, len(feats_nhwc), batch):
            x = torch.from_numpy(np.ascontiguousarray(
                np.asarray(feats_nhwc[i:i + batch], dtype=np.float32).transpose(0, 3, 1, 2)))
            n, c, h, w = x.shape
            sims = torch.conv2d(x, filt)
            mags = torch.conv2d((x * x).view(-1, 1, h, w), sq_mask)
            mags = mags.view(n, c, h - qh + 1, w - qw + 1).sum(1, keepdim=True)
            sims = (sims / (torch.sqrt(mags) + 1e-5)).view(n, -1)
            s, o = sims.max(dim=1)
            scores.append(s.numpy())
            offs.append(o.numpy())
    return np.concatenate(scores), np.concatenate(offs)


@dataclass
class _Data:
    f32: np.ndarray  # (N,7,7,C) original float features
    u8: np.ndarray
    scale: np.ndarray
    sqnorm8: np.ndarray
    qerr2: np.ndarray
    qfeat: np.ndarray
    mask: np.ndarray


def _make_data(n: int, seed: int = 0, block: int = 5000) -> _Data:
    """ReLU-like sparse features; 20 images carry noisy copies of the query region."""
    from .cache import quantize

    rng = np.random.default_rng(seed)
    f32 = np.empty((n, H, W, C), np.float32)
    u8 = np.empty((n, H, W, C), np.uint8)
    scale = np.empty((n, H, W), np.float32)
    sq8 = np.empty((n, H, W), np.float32)
    qe = np.empty((n, H, W), np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        x = rng.standard_normal((e - s, H, W, C), dtype=np.float32)
        x -= 0.8
        np.maximum(x, 0, out=x)
        x *= rng.uniform(0.5, 2.0, (e - s, H, W, 1)).astype(np.float32)
        f32[s:e] = x
    q = rng.standard_normal((H, W, C), dtype=np.float32) - 0.8
    np.maximum(q, 0, out=q)
    mask = np.zeros((H, W), np.float32)
    mask[2:5, 1:4] = [[0.5, 1, 0.7], [1, 1, 1], [0.3, 1, 0.8]]
    plant = rng.choice(n, min(20, n), replace=False)
    for j, i in enumerate(plant):
        a, b = rng.integers(0, H - 2), rng.integers(0, W - 2)
        noise = 0.15 + 0.05 * j
        f32[i, a:a + 3, b:b + 3] = np.maximum(
            0, q[2:5, 1:4] + noise * rng.standard_normal((3, 3, C), dtype=np.float32))
    for s in range(0, n, block):
        e = min(n, s + block)
        u8[s:e], scale[s:e], sq8[s:e], qe[s:e] = quantize(f32[s:e], "int8", True)
    return _Data(f32, u8, scale, sq8, qe, q, mask)


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _time_alternating(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Seconds of each function, timed in alternating rounds (after one warm-up round) so that
    drifts in what the rest of the machine does hit every one alike (a virtual machine's memory
    bandwidth can change by 2x within seconds). Returns the medians and the per-round times."""
    for fn in fns.values():
        fn()
    ts: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in ts.items()}, ts


def _ours_u8(d: _Data, n: int, pq, k: int = 10, threads=None):
    """8-bit scan + exact refine from the f32 copy (what search() does on an 8-bit cache)."""
    r = kernel.scan(d.u8[:n], d.sqnorm8[:n], pq, scale=d.scale[:n], qerr2=d.qerr2[:n],
                    threads=threads,
                    tighten_k=k)
    L = r.lower[_topk(r.lower, k)[-1]]
    cand = np.flatnonzero(r.upper >= L)
    best, off = kernel.exact_best(d.f32[cand], d.mask, d.qfeat)
    top = cand[_topk(best, k)]
    return top, len(cand), r


def _float64_truth(d: _Data, n: int, k: int = 10):
    best = np.concatenate([kernel.exact_best(d.f32[s:min(n, s + 4096)], d.mask, d.qfeat)[0]
                           for s in range(0, n, 4096)])
    return _topk(best, k), best


def _float_rows(d, n, pq, truth, truth_top, row, repeat, threads):
    f16 = d.f32[:n].astype(np.float16)
    sq16 = np.empty((n, H, W), np.float32)
    for s in range(0, n, 10000):
        t = f16[s:s + 10000].astype(np.float32)
        sq16[s:s + 10000] = np.einsum("nhwc,nhwc->nhw", t, t)
    r16 = kernel.scan(f16, sq16, pq, threads=threads)
    row["f16_s"] = _time(partial(kernel.scan, f16, sq16, pq, threads=threads), repeat)
    row["f16_top10_identical"] = bool(np.array_equal(_topk(r16.score, 10), truth_top))
    row["f16_max_err"] = float(np.abs(r16.score - truth).max())
    del f16, sq16, r16
    gc.collect()
    sq32 = np.einsum("nhwc,nhwc->nhw", d.f32[:n], d.f32[:n])
    r32 = kernel.scan(d.f32[:n], sq32, pq, threads=threads)
    row["f32_s"] = _time(partial(kernel.scan, d.f32[:n], sq32, pq, threads=threads), repeat)
    row["f32_top10_identical"] = bool(np.array_equal(_topk(r32.score, 10), truth_top))
    row["f32_max_err"] = float(np.abs(r32.score - truth).max())


def _evict(path: Path) -> None:
    for dirpath, _d, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _disk_cache(d: _Data, n: int, path: Path):
    """Write the 8-bit data as a real (uncompressed) vfsearch cache layer for streaming."""
    from .cache import synthetic_cache

    w = synthetic_cache(path, n, channels=C, grid=(H, W))
    for s in range(0, n, 16384):
        e = min(n, s + 16384)
        w.write_block(s, encoded={"conv5": {"features": d.u8[s:e], "scale": d.scale[s:e],
                                            "sqnorm": d.sqnorm8[s:e], "qerr2": d.qerr2[s:e]}},
                      status=1)


def run_bench(sizes=(25_000, 50_000, 75_000, 100_000), repeat: int = 3, reference: bool = True,
              disk: bool = True, workdir: str | None = None, out: str | None = None,
              threads: int | None = None, log=print) -> dict:
    """Run the benchmark; returns (and optionally writes) the results as JSON + markdown."""
    from .cache import open_cache
    from .engine.searcher import _scan_all

    sizes = sorted(int(s) for s in sizes)
    nmax = sizes[-1]
    need = nmax * H * W * C * (4 + 1) + min(nmax, FLOAT_MAX_N) * H * W * C * 2 + nmax * H * W * 16
    if need > 0.8 * _mem_available():
        from .errors import BadParameter

        raise BadParameter(f"bench needs ~{need / 1e9:.1f} GB RAM for N={nmax}; "
                           f"{_mem_available() / 1e9:.1f} GB available: use smaller sizes",
                           param="sizes")
    log(f"generating {nmax} synthetic 7x7x{C} feature maps …")
    d = _make_data(nmax)
    pq = kernel.PreparedQuery.from_grid(d.qfeat, d.mask)
    backend = kernel.resolve_backend("auto")
    rows = []
    for n in sizes:
        row: dict = {"n": n, "backend": backend}
        truth_top, truth = _float64_truth(d, n)
        top, ncand, r8 = _ours_u8(d, n, pq, threads=threads)
        t, rounds = _time_alternating(
            {"floor_s": partial(kernel.read_floor, d.u8[:n], threads=threads),
             "u8_s": partial(_ours_u8, d, n, pq, threads=threads)}, repeat)
        row.update(t)
        # each round's scan over the same round's read: both see the same memory bandwidth
        row["u8_over_floor_paired"] = float(
            np.median(np.array(rounds["u8_s"]) / np.array(rounds["floor_s"])))
        row["u8_candidates"] = ncand
        row["u8_top10_identical"] = bool(np.array_equal(top, truth_top))
        row["u8_scan_max_err"] = float(np.abs(r8.score - truth).max())
        if n <= FLOAT_MAX_N:
            _float_rows(d, n, pq, truth, truth_top, row, repeat, threads)
        if reference:
            t = time.perf_counter()
            ref_s, _ = reference_method(d.f32[:n], d.qfeat, d.mask)
            row["reference_s"] = time.perf_counter() - t
            row["reference_top10_identical"] = bool(np.array_equal(_topk(ref_s, 10), truth_top))
            row["reference_max_err"] = float(np.abs(ref_s - truth).max())
            row["speedup_u8_vs_reference"] = row["reference_s"] / row["u8_s"]
        row["u8_over_floor"] = row["u8_s"] / row["floor_s"]
        row["peak_rss_gb"] = _peak_rss_gb()
        log(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
        rows.append(row)
    result = {"rows": rows, "machine": _machine(),
              "threads": threads or len(os.sched_getaffinity(0))}
    if disk:
        n = sizes[min(1, len(sizes) - 1)]
        work = Path(workdir or "/tmp/vfsearch-bench")
        free = shutil.disk_usage(work.parent if not work.exists() else work).free
        if free < n * H * W * (C + 12) * 1.2:
            log(f"skipping the disk run: {free / 1e9:.1f} GB free")
        else:
            path = work / "cache"
            _disk_cache(d, n, path)
            c = open_cache(path)
            for label, evict in (("cold", True), ("warm", False)):
                ts = []
                for _ in range(repeat):
                    if evict:
                        _evict(path)
                    t = time.perf_counter()
                    _scan_all(c, "conv5", [pq], memory=256 << 20, backend="auto", threads=threads)
                    ts.append(time.perf_counter() - t)
                result[f"disk_{label}_s"] = float(np.median(ts))
            result["disk_n"] = n
            log(f"disk n={n}: cold {result['disk_cold_s']:.3f} s, "
                f"warm {result['disk_warm_s']:.3f} s "
                "(streamed in 256 MiB blocks)")
            shutil.rmtree(path)
    result["markdown"] = _markdown(result)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "bench.json").write_text(json.dumps(result, indent=2))
        Path(out, "bench.md").write_text(result["markdown"])
    return result


def _machine() -> dict:
    flags = open("/proc/cpuinfo").read()
    return {"cpus": len(os.sched_getaffinity(0)), "avx512_vnni": "avx512_vnni" in flags,
            "avx2": "avx2" in flags, "backends": kernel.available_backends()}


def _ms(r: dict, key: str) -> str:
    return f"{r[key] * 1000:.1f} ms" if key in r else "–"


def _e(r: dict, key: str) -> str:
    return f"{r[key]:.1e}" if key in r else "–"


def _markdown(res: dict) -> str:
    lines = ["| N | floor (u8 read) | ours u8 | × floor (paired rounds) | ours f16 | ours f32 "
             "| reference (paper's method) | speed-up u8 | top-10 = float64 (u8/f16/f32/ref) "
             "| max err u8 scan / f16 / f32 | refined |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ref = f"{r['reference_s']:.2f} s" if "reference_s" in r else "–"
        sp = f"{r['speedup_u8_vs_reference']:.0f}×" if "reference_s" in r else "–"
        same = "/".join("yes" if r.get(f"{k}_top10_identical") else "no"
                        for k in ("u8", "f16", "f32", "reference")
                        if f"{k}_top10_identical" in r)
        lines.append(
            f"| {r['n']:,} | {r['floor_s'] * 1000:.1f} ms | {r['u8_s'] * 1000:.1f} ms "
            f"| {r['u8_over_floor']:.2f} ({r.get('u8_over_floor_paired', float('nan')):.2f}) "
            f"| {_ms(r, 'f16_s')} | {_ms(r, 'f32_s')} | {ref} | {sp} | {same} "
            f"| {r['u8_scan_max_err']:.1e} / {_e(r, 'f16_max_err')} / {_e(r, 'f32_max_err')} "
            f"| {r['u8_candidates']} |")
    if "disk_n" in res:
        lines.append("")
        lines.append(f"Streamed from disk (N={res['disk_n']:,}, 8-bit, 256 MiB blocks, read "
                     f"overlapped with compute): cold {res['disk_cold_s']:.3f} s, "
                     f"warm {res['disk_warm_s']:.3f} s.")
    m = res["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpus']} CPUs, AVX-512 VNNI: {m['avx512_vnni']}, "
                 f"backends {m['backends']}; "
                 f"threads {res['threads']}.")
    return "\n".join(lines) + "\n"


# ============================================================================================ #
# Per layer shape: real features (a user's cache, tiled to N) or synthetic maps
# ============================================================================================ #
#
# For each shape, one run times in interleaved rounds (medians; ratios paired per round):
# one read of the 8-bit features (the floor), the search (scan + exact refine, top-10) on the
# best kernel and on the AVX2 one, the scan alone, a whole-image query, the same query on a
# copy of the data where each image appears ~N/231 times as exact copies, and the reference
# library's method on a subset (scaled linearly to N). The top-10 is checked against a float64
# scoring of every row (kernel.exact_best, which agrees with engine.reference to 1e-12).

#: the default model's layers (real features) and synthetic shapes of the issue
REAL_LAYERS = {"14x14x112": "blocks.10", "28x28x40": "blocks.4", "7x7x320": "blocks.15",
               "7x7x1280": "head"}
SYNTHETIC = ("7x7x512", "16x16x384", "14x14x1024")
COPY_SOURCES = 231  # the exact-copy case: this many source images, each repeated ~N / 231 times


def parse_shape(text: str) -> tuple[int, int, int]:
    """``HxWxC`` → (H, W, C)."""
    from .errors import BadParameter

    try:
        H, W, C = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadParameter(f"a shape is HxWxC (e.g. 14x14x112), got {text!r}",
                           param="shape") from None
    if min(H, W, C) < 1:
        raise BadParameter(f"shape {text!r} has a zero dimension", param="shape")
    return H, W, C


def tile_rows(src: np.ndarray, ids: np.ndarray, vary: bool = True) -> np.ndarray:
    """Rows ``ids`` of ``src`` (M, H, W, C) tiled to any N: row i is source i % M; with ``vary``
    its grid is rolled by r = i // M cells (row-major, wrapping into the next row) and mirrored
    left-right when r is odd, so that copies are different images."""
    M, H, W, C = src.shape
    ids = np.asarray(ids, dtype=np.int64)
    out = src[ids % M]
    if vary:
        r = ids // M
        for rr in np.unique(r):
            if rr == 0:
                continue
            sel = np.flatnonzero(r == rr)
            b = np.roll(out[sel].reshape(len(sel), H * W, C), int(rr) % (H * W), axis=1)
            b = b.reshape(len(sel), H, W, C)
            out[sel] = b[:, :, ::-1] if rr % 2 else b
    return out


def synthetic_sources(H: int, W: int, C: int, m: int = 1000, signed: bool = True,
                      seed: int = 0) -> np.ndarray:
    """``m`` synthetic feature maps with spatial structure (each cell a mix of a few smooth
    per-image patterns, plus noise; ReLU'd when not ``signed``), float32 (m, H, W, C)."""
    rng = np.random.default_rng(seed)
    out = np.empty((m, H, W, C), np.float32)
    yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    basis = rng.standard_normal((16, C)).astype(np.float32)
    for i in range(m):
        fy, fx, ph = rng.uniform(0.5, 3, (3, 8))
        arg = fy[:, None, None] * yy + fx[:, None, None] * xx
        waves = np.sin(2 * np.pi * arg + ph[:, None, None])
        mix = rng.standard_normal((8, 16)).astype(np.float32)
        x = np.tensordot(waves.astype(np.float32), mix @ basis, axes=(0, 0))
        x += 0.5 * rng.standard_normal((H, W, C)).astype(np.float32)
        out[i] = x if signed else np.maximum(x - 0.5, 0)
    return out


def build_tiled_cache(src, layer: str, n: int, path, vary: bool = True,
                      sources: int | None = None, log=print):
    """A real vfsearch cache (8-bit + f32 refine, uncompressed) at ``path`` whose rows tile the
    first ``sources`` images of ``src`` (a FeatureCache or an (M, H, W, C) array) to ``n``
    (:func:`tile_rows`). Reused when a previous build with the same parameters is there."""
    from .cache import CacheWriter, open_cache
    from .transforms import Transform

    path = Path(path)
    if isinstance(src, np.ndarray):
        feats, info = src, {"channels": src.shape[3], "grid": list(src.shape[1:3]),
                            "stride": 1.0, "nonnegative": bool((src >= 0).all()),
                            "kind": "synthetic"}
        model, wh, tr, root, paths, labels, sizes = "synthetic", "0", Transform(), Path("/"), \
            None, None, None
        thumbs = None
    else:
        ids = np.flatnonzero(src.valid)[:sources]
        feats = src.rows_features(layer, ids)
        info = src.meta["layer_info"][layer]
        model, wh, tr, root = src.model, src.weights_hash, src.transform, src.image_root
        paths, labels, sizes = src.paths[ids], src.labels[ids], src.sizes[ids]
        thumbs = np.array(src.thumbnails(ids), dtype=object)
    feats = feats[:sources] if sources else feats
    M = len(feats)
    from .cache.layout import FORMAT_VERSION

    stamp = {"n": n, "vary": vary, "sources": M, "layer": layer, "model": model,
             "format": FORMAT_VERSION,
             "shape": list(feats.shape[1:]), "digest": float(np.float64(feats[:, 0, 0, :4]).sum())}
    sfile = path / "bench-stamp.json"
    if sfile.exists() and json.loads(sfile.read_text()) == stamp:
        return open_cache(path), feats
    shutil.rmtree(path, ignore_errors=True)
    w = CacheWriter.create(path, model=model, weights_hash=wh, weights_path=None, transform=tr,
                           image_root=root, layer_info={layer: info}, dtype="int8", refine="f32",
                           chunk=1024, compression="none")
    w.grow(n)
    log(f"writing {n} rows tiled from {M} images ({'varied' if vary else 'exact'} copies) "
        f"to {path} …")
    for s in range(0, n, 1024):
        ids = np.arange(s, min(n, s + 1024))
        kw = {}
        if paths is not None:
            kw = {"path": paths[ids % M], "label": labels[ids % M], "size": sizes[ids % M],
                  "thumb": thumbs[ids % M]}
        else:
            kw = {"path": [f"{i}" for i in ids], "label": [str(i % M) for i in ids],
                  "size": [(224, 224)] * len(ids)}
        w.write_block(s, features={layer: tile_rows(feats, ids, vary)}, status=1, **kw)
    sfile.write_text(json.dumps(stamp))
    return open_cache(path), feats


def central_query(cache, qid: int, layer: str, cells: int = 3):
    """Query by dataset id: the central ``cells`` x ``cells`` cells of image ``qid``."""
    import dataclasses

    from .engine import make_query

    q = make_query(cache, qid, whole=True, layer=layer)
    H, W = q.weights.shape
    wts = np.zeros((H, W), np.float32)
    h = min(cells, H)
    w = min(cells, W)
    wts[(H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w] = 1
    return dataclasses.replace(q, weights=wts, mode="region")


def float64_top(cache, layer: str, q, k: int = 10, block: int = 2048) -> np.ndarray:
    """Top-k ids (ties by id, the query image excluded) by a float64 scoring of every row's
    refine copy."""
    n = len(cache)
    best = np.empty(n)
    for s in range(0, n, block):
        rows = cache.rows_features(layer, np.arange(s, min(n, s + block)))
        best[s:s + len(rows)] = kernel.exact_best(rows, q.weights, q.features)[0]
    if q.source_id is not None:
        best[q.source_id] = -np.inf
    return _topk(best, k)


def _cpu() -> dict:
    info = {"model": "?", "family": "?", "flags": []}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name":
                info["model"] = val.strip()
            elif key == "cpu family":
                info["family"] = val.strip()
            elif key == "model" and "model_id" not in info:
                info["model_id"] = val.strip()
            elif key == "flags" and not info["flags"]:
                f = val.split()
                info["flags"] = [x for x in ("avx2", "avx512f", "avx512bw", "avx512vl",
                                             "avx512_vnni", "avx_vnni", "avx512_bf16") if x in f]
    except OSError:
        pass
    info["cpus"] = len(os.sched_getaffinity(0))
    info["backends"] = kernel.available_backends()
    info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _time_rounds(fns: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Like :func:`_time_alternating` (one warm-up round, then ``rounds`` interleaved rounds),
    recording each call's wall time and the calling thread's CPU time. Returns (median wall
    times, wall times per round, CPU times per round)."""
    for fn in fns.values():
        fn()
    ts: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            c, t = time.thread_time(), time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
            cpu[k].append(time.thread_time() - c)
    return {k: float(np.median(v)) for k, v in ts.items()}, ts, cpu


def bench_layer(cache, layer: str, *, copies=None, queries=(7,), rounds: int = 5,
                reference: bool = True, ref_n: int = 5000, threads: int | None = None,
                label: str = "", log=print) -> dict:
    """Time one layer of ``cache`` (and of ``copies``, the exact-copy variant, if given) in
    interleaved rounds; see the section comment. Returns a JSON-able row."""
    from .engine import make_query
    from .engine.searcher import search

    H, W = cache.grid(layer)
    C = cache.layer_info(layer)["channels"]
    data = cache.load(layer)
    n = len(cache)
    backends = [b for b in ("avx512", "avx2") if b in kernel.available_backends()]
    best_b = kernel.resolve_backend("auto")
    qs = [central_query(cache, i, layer) for i in queries]
    qw = make_query(cache, queries[0], whole=True, layer=layer)
    qc = [central_query(copies, i % COPY_SOURCES, layer) for i in queries] if copies else []
    ref_n = min(n, ref_n, max(256, int(1.5e9 // (H * W * C * 4))))
    ref_feats = cache.rows_features(layer, np.arange(ref_n)) if reference else None
    fns: dict = {"floor": lambda: kernel.read_floor(data.features, threads=threads)}
    for b in backends:
        for j, q in enumerate(qs):
            fns[f"search/{b}/{j}"] = partial(search, cache, q, k=10, backend=b, threads=threads)
        fns[f"whole/{b}"] = partial(search, cache, qw, k=10, backend=b, threads=threads)
        for j, q in enumerate(qc):
            fns[f"copies/{b}/{j}"] = partial(search, copies, q, k=10, backend=b, threads=threads)
    # the same searches on a second opening of the cache that keeps the layer's interleaved
    # copy (what the web app scans once it has made it)
    from .cache import open_cache

    inter = open_cache(cache.path)
    kept = inter.interleave(layer)
    for b in backends if kept else ():
        for j, q in enumerate(qs):
            fns[f"inter/{b}/{j}"] = partial(search, inter, q, k=10, backend=b, threads=threads)
    pq = kernel.PreparedQuery.from_grid(qs[0].features, qs[0].weights)
    for m in sorted({n // 4, n // 2, n}):  # linear in N: the scan on prefixes
        fns[f"scan/{m}"] = partial(kernel.scan, data.features[:m], data.sqnorm[:m], pq,
                                   scale=data.scale[:m], qerr2=data.qerr2[:m], tighten_k=11,
                                   threads=threads)
    if reference:
        fns["reference"] = partial(reference_method, ref_feats, qs[0].features, qs[0].weights)
    if copies:
        cdata = copies.load(layer)
        fns["floor_copies"] = lambda: kernel.read_floor(cdata.features, threads=threads)
    # one thread, CPU time (what the other jobs of a shared machine cannot inflate): the
    # first query, the read floor and the search on each kernel
    fns["1t/floor"] = lambda: kernel.read_floor(data.features, threads=1)
    for b in backends:
        fns[f"1t/search/{b}"] = partial(search, cache, qs[0], k=10, backend=b, threads=1)
    # exactness (untimed): every query's top-10 against float64 over all rows
    exact = {}
    for j, q in enumerate(qs):
        truth = float64_top(cache, layer, q)
        for b in backends:
            r = search(cache, q, k=10, backend=b, threads=threads)
            exact[f"search/{b}/{j}"] = bool(np.array_equal(r.ids, truth))
            exact[f"stats/{j}"] = r.stats
    for j, q in enumerate(qc):
        truth = float64_top(copies, layer, q)
        r = search(copies, q, k=10, threads=threads)
        exact[f"copies/{j}"] = bool(np.array_equal(r.ids, truth))
        exact[f"copies_stats/{j}"] = r.stats
    tw = float64_top(cache, layer, qw)
    exact["whole"] = bool(np.array_equal(search(cache, qw, k=10, threads=threads).ids, tw))
    gc.collect()
    med, ts, cpu = _time_rounds(fns, rounds)
    fl = np.array(ts["floor"])
    ratio = {k: float(np.median(np.array(v) / fl)) for k, v in ts.items() if k != "floor"}
    fl1 = np.array(cpu["1t/floor"])
    row = {"layer": layer, "shape": f"{H}x{W}x{C}", "label": label, "n": n,
           "dtype": str(data.features.dtype), "floor_s": med["floor"],
           "floor_gb_s": data.features.nbytes / med["floor"] / 1e9, "best_backend": best_b,
           "rounds": rounds, "exact": exact, "queries": list(queries)}
    for b in backends:
        row[f"search_{b}_s"] = float(np.median([med[f"search/{b}/{j}"] for j in range(len(qs))]))
        row[f"search_{b}_x_floor"] = float(np.median([ratio[f"search/{b}/{j}"]
                                                     for j in range(len(qs))]))
        if kept:
            row[f"inter_{b}_s"] = float(np.median([med[f"inter/{b}/{j}"]
                                                  for j in range(len(qs))]))
            row[f"inter_{b}_x_floor"] = float(np.median([ratio[f"inter/{b}/{j}"]
                                                        for j in range(len(qs))]))
        row[f"whole_{b}_s"] = med[f"whole/{b}"]
        row[f"whole_{b}_x_floor"] = ratio[f"whole/{b}"]
        if qc:
            row[f"copies_{b}_s"] = float(np.median([med[f"copies/{b}/{j}"]
                                                   for j in range(len(qc))]))
            row[f"copies_{b}_x_distinct"] = float(np.median(
                [np.median(np.array(ts[f"copies/{b}/{j}"]) / np.array(ts[f"search/{b}/{j}"]))
                 for j in range(len(qc))]))
    if "avx2" in backends and "avx512" in backends:
        row["avx2_over_avx512"] = float(np.median(
            [np.median(np.array(ts[f"search/avx2/{j}"]) / np.array(ts[f"search/avx512/{j}"]))
             for j in range(len(qs))]))
    for b in backends:
        row[f"cpu1_search_{b}_s"] = float(np.median(cpu[f"1t/search/{b}"]))
        row[f"cpu1_search_{b}_x_floor"] = float(np.median(np.array(cpu[f"1t/search/{b}"]) / fl1))
    row["cpu1_floor_s"] = float(np.median(fl1))
    row["round_times_s"] = {k: [round(t, 5) for t in v] for k, v in ts.items()}
    row["scan_us_per_image"] = {str(m): med[f"scan/{m}"] / m * 1e6
                                for m in sorted({n // 4, n // 2, n})}
    row["scan_s"] = med[f"scan/{n}"]
    if reference:
        row["reference_n"] = ref_n
        row["reference_s"] = med["reference"] * n / ref_n
        row["speedup_vs_reference"] = row["reference_s"] / row[f"search_{best_b}_s"]
    log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                    if k not in ("exact", "round_times_s")}))
    return row


def run_layers(*, cache=None, layers=None, shapes=None, n: int = 50_000, vary: bool = True,
               copies: bool = True, queries=(7, 123, 456), rounds: int = 5,
               reference: bool = True, workdir=None, out=None, threads: int | None = None,
               keep: bool = True, log=print) -> dict:
    """``vfsearch bench --cache`` / ``--shape``: one row per layer (real features of ``cache``)
    or per shape (synthetic maps, labelled so), written to ``out`` as JSON + markdown."""
    from .cache import open_cache

    work = Path(workdir or "/tmp/vfsearch-bench")
    rows = []
    todo = []
    if cache is not None:
        src = open_cache(cache) if not hasattr(cache, "load") else cache
        for layer in (layers or [src.default_layer]):
            todo.append((layer, src, "real"))
    for shp in shapes or []:
        H, W, C = parse_shape(shp)
        todo.append((f"synthetic_{H}x{W}x{C}", synthetic_sources(H, W, C, signed=C != 512),
                     "synthetic"))
    for layer, src, label in todo:
        name = layer.replace("/", "_")
        c, _ = build_tiled_cache(src, layer, n, work / f"{name}-{n}", vary=vary, log=log)
        cc = None
        if copies:
            cc, _ = build_tiled_cache(src, layer, n, work / f"{name}-{n}-copies", vary=False,
                                      sources=COPY_SOURCES, log=log)
        qids = [int(i) % min(len(c), COPY_SOURCES) for i in queries]
        rows.append(bench_layer(c, layer, copies=cc, queries=qids, rounds=rounds,
                                reference=reference, threads=threads, label=label, log=log))
        del c, cc
        gc.collect()
        if not keep:
            shutil.rmtree(work / f"{name}-{n}", ignore_errors=True)
            shutil.rmtree(work / f"{name}-{n}-copies", ignore_errors=True)
    result = {"rows": rows, "cpu": _cpu(), "threads": threads or len(os.sched_getaffinity(0)),
              "n": n, "vary": vary}
    result["markdown"] = _layers_markdown(result)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        stem = "bench_" + "+".join(r["layer"].replace("synthetic_", "") for r in rows)
        Path(out, f"{stem}.json").write_text(json.dumps(result, indent=2))
        Path(out, f"{stem}.md").write_text(result["markdown"])
    return result


def _layers_markdown(res: dict) -> str:
    yn = {True: "yes", False: "NO"}
    best = {r["best_backend"] for r in res["rows"] if "search_avx512_s" not in r}
    # the first search column is AVX-512's where it ran, else the best kernel there was
    first = "AVX-512" if not best else "/".join(sorted(b.upper() for b in best))
    lines = [f"| layer | shape | N | floor (u8 read) | search {first} | × floor | AVX2 | AVX2 / "
             "AVX-512 | whole-image × floor | exact copies × distinct | reference (scaled) | "
             "× reference | top-10 = float64 | candidates | 1 thread, CPU time: × floor "
             "AVX-512 / AVX2 | interleaved copy kept: × floor AVX-512 / AVX2 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        b = "avx512" if "search_avx512_s" in r else r["best_backend"]
        ex = r["exact"]
        ok = all(v for k, v in ex.items() if isinstance(v, bool))
        cand = [v["candidates"] for k, v in ex.items() if k.startswith("stats/")]
        lines.append(
            f"| {r['layer']}{' (synthetic)' if r['label'] == 'synthetic' else ''} | {r['shape']} "
            f"| {r['n']:,} | {r['floor_s'] * 1e3:.1f} ms | {r[f'search_{b}_s'] * 1e3:.1f} ms "
            f"| {r[f'search_{b}_x_floor']:.2f} "
            f"| {r.get('search_avx2_s', float('nan')) * 1e3:.1f} ms "
            f"| {r.get('avx2_over_avx512', float('nan')):.2f} | {r[f'whole_{b}_x_floor']:.2f} "
            f"| {r.get(f'copies_{b}_x_distinct', float('nan')):.2f} "
            f"| {r.get('reference_s', float('nan')):.1f} s "
            f"| {r.get('speedup_vs_reference', float('nan')):.0f}× | {yn[ok]} | {cand} "
            f"| {r.get('cpu1_search_avx512_x_floor', float('nan')):.2f} / "
            f"{r.get('cpu1_search_avx2_x_floor', float('nan')):.2f} "
            f"| {r.get('inter_avx512_x_floor', float('nan')):.2f} / "
            f"{r.get('inter_avx2_x_floor', float('nan')):.2f} |")
    cpu = res["cpu"]
    lines += ["", f"CPU: {cpu['model']} (family {cpu['family']}, model {cpu.get('model_id')}), "
              f"{cpu['cpus']} CPUs, flags {', '.join(cpu['flags'])}; backends "
              f"{cpu['backends']}; threads {res['threads']}; load average at the end "
              f"{cpu['load_average']}.",
              "Search = scan + exact refine, top-10, query by dataset id (central 3×3 cells); "
              "medians of interleaved rounds, × floor paired per round."]
    return "\n".join(lines) + "\n"
