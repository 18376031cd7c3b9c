"""Feasibility study for issue 19: compact first-pass codes in RAM + exact re-rank from disk.

    nice -n 10 .venv/bin/python benchmarks/compact_codes.py [--src CACHE | --images DIR]
        [--n 50000] [--dims 8,16,32] [--queries 20] [--workdir /tmp/vfs-codes]
        [--out benchmarks/results]

Real features of the default layer (efficientnet-lite0 blocks.10, 14x14x112) of ``--src`` (a
cache; or indexed from ``--images`` with ``vfsearch index`` first). Codes
(:mod:`vfsearch.engine.codes`): a PCA basis of d dims trained on the cells of 100 images, 8-bit
codes with a float16 scale per cell, the residual norm (rounded up) and the cell norm (rounded
down). Queries: dataset ids 0, 50, ..., the central 3x3 cells, top-10, the query image excluded.

Part A, the distinct photos of ``--src``: for every d (and, for comparison, every dimension
coded at 4..8 bits on the raw axes) the bound widths, candidates after the bound, the top-10
after the re-rank against float64, the query's energy outside the basis (rho_q) and the cells'
(rho_x).

Part B, ``--n`` images tiled from them (:func:`vfsearch.bench.build_tiled_cache`: each copy
rolled / mirrored; f32 refine copy): bytes per image, first-pass time per query (this numpy
prototype) and the read floor of the code bytes, candidates, the exact re-rank (from RAM, and
from disk with the page cache evicted, per row x candidates), against ``vfsearch.search`` on
the same cache and queries in the same run; projections to 1M images (linear).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vfsearch.bench import _evict, build_tiled_cache, central_query
from vfsearch.cache import open_cache
from vfsearch.engine import codes as cd
from vfsearch.engine import kernel, search
from vfsearch.engine.searcher import _topk

K = 10
TRAIN_IMAGES = 100
RERANK_SAMPLE = 2000  # rows timed for the per-row re-rank cost


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _source(args) -> Path:
    src = Path(args.src)
    if not (src / "zarr.json").exists():
        if not args.images:
            raise SystemExit(f"{src} is no cache: give --images DIR to index it")
        subprocess.run([sys.executable, "-m", "vfsearch", "index", args.images, "--out",
                        str(src), "--label-from", "none"], check=True)
    return src


def _rho(codes: cd.Codes, q) -> tuple[float, float]:
    """Query energy outside the basis (|Q_perp| / |Q|, mask-weighted) and the median cell
    residual ratio (resid / |x|) of the codes."""
    _, _, m2, _, qperp, qnorm = cd._query_terms(codes, q.weights, q.features)
    rq = float(np.sqrt(np.sum(m2 * qperp ** 2)) / qnorm)
    nl = codes.norm_lo.astype(np.float32)
    ok = nl > 0
    rx = float(np.median(codes.resid.astype(np.float32)[ok] / nl[ok]))
    return rq, rx


def _evaluate(codes, qs, exact, timed=True):
    """Per query: first-pass time, candidates, containment, top-10 after the re-rank."""
    rows = []
    for j, q in enumerate(qs):
        t = time.perf_counter()
        lo, up = cd.bounds(codes, q.weights, q.features)
        t_first = time.perf_counter() - t
        truth = exact[j]
        ref = truth.copy()
        ref[q.source_id] = -np.inf
        want = _topk(ref, K)
        cand = cd.candidates(lo, up, K, exclude=[q.source_id])
        cand1 = cd.candidates(lo, up, 1, exclude=[q.source_id])
        sub = np.full(len(truth), -np.inf)
        sub[cand] = truth[cand]  # the re-rank: exact scores of the candidates only
        rq, rx = _rho(codes, q)
        rows.append({
            "query": int(q.source_id), "first_pass_s": t_first if timed else None,
            "candidates": int(len(cand)), "candidates_k1": int(len(cand1)),
            "bounds_hold": bool(np.all(lo <= truth + 1e-6) and np.all(up >= truth - 1e-6)),
            "top10_in_candidates": bool(np.isin(want, cand).all()),
            "top10_equal": bool(np.array_equal(_topk(sub, K), want)),
            "median_width": float(np.median(up - lo)), "s10": float(ref[want[-1]]),
            "median_score": float(np.median(truth)), "rho_q": rq, "rho_x": rx})
    return rows


def _summary(rows, n):
    f = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    s = {"n": n, "candidates_median": f("candidates"), "candidates_k1_median": f("candidates_k1"),
         "candidates_min": min(r["candidates"] for r in rows),
         "candidate_fraction": f("candidates") / n,
         "all_exact": all(r["bounds_hold"] and r["top10_in_candidates"] and r["top10_equal"]
                          for r in rows),
         "median_width": f("median_width"), "s10": f("s10"), "median_score": f("median_score"),
         "rho_q": f("rho_q"), "rho_x": f("rho_x")}
    if rows[0]["first_pass_s"] is not None:
        s["first_pass_s"] = f("first_pass_s")
    return s


def part_a(src, layer, basis_sample, dims, qids, plain=(4, 5, 6, 7, 8), with_qerr=(4, 5, 6, 7)):
    n = len(src)
    feats = src.rows_features(layer, np.arange(n))
    qs = [central_query(src, i, layer) for i in qids]
    exact = np.stack([kernel.exact_best(feats, q.weights, q.features)[0] for q in qs])
    configs = [(f"pca d={d} 8-bit", cd.train_basis(basis_sample, d), 8) for d in dims]
    C = feats.shape[-1]
    configs += [(f"all {C} dims {b}-bit", np.eye(C), b) for b in plain]
    configs += [(f"all {C} dims {b}-bit + qerr", np.eye(C), b) for b in with_qerr]
    out = []
    for name, basis, bits in configs:
        codes = cd.encode(feats, basis, bits=bits, qerr=name.endswith("qerr"))
        rows = _evaluate(codes, qs, exact, timed=False)
        out.append({"config": name, "bytes_per_image": codes.bytes_per_image,
                    **_summary(rows, n), "per_query": rows})
        print(json.dumps({k: v for k, v in out[-1].items() if k != "per_query"}), flush=True)
    return out


def _rerank_costs(cache, layer, q, n, rng):
    """Seconds per row of the exact re-rank: rows read from RAM-cached files + scored, rows
    read with the page cache evicted (random rows of the f32 refine copy), scoring alone."""
    ids = np.sort(rng.choice(n, min(n, RERANK_SAMPLE), replace=False))
    cache.exact_rows(layer, ids[:64], norms=False)
    t = time.perf_counter()
    rows, _ = cache.exact_rows(layer, ids, norms=False)
    t_warm_read = time.perf_counter() - t
    t = time.perf_counter()
    kernel.exact_best(rows, q.weights, q.features)
    t_score = time.perf_counter() - t
    _evict(Path(cache.path))
    ids2 = np.sort(rng.choice(n, min(n, RERANK_SAMPLE), replace=False))
    t = time.perf_counter()
    rows2, _ = cache.exact_rows(layer, ids2, norms=False)
    t_cold_read = time.perf_counter() - t
    m = len(ids)
    return {"rows": m, "row_bytes": int(rows[0].nbytes), "warm_read_s_per_row": t_warm_read / m,
            "cold_read_s_per_row": t_cold_read / m, "score_s_per_row": t_score / m,
            "cold_read_mb_s": rows2.nbytes / t_cold_read / 1e6}


def part_b(src, layer, basis_sample, dims, qids, n, workdir):
    t = time.perf_counter()
    cache, _ = build_tiled_cache(src, layer, n, Path(workdir) / f"tiled-{n}", vary=True)
    t_build = time.perf_counter() - t
    qs = [central_query(cache, i, layer) for i in qids]
    data = cache.load(layer)
    # the current exact 8-bit search (scan + exact refine), same cache and queries
    for q in qs[:2]:
        search(cache, q, k=K)
    t8, cand8, ids8 = [], [], []
    for q in qs:
        t = time.perf_counter()
        r = search(cache, q, k=K)
        t8.append(time.perf_counter() - t)
        cand8.append(r.stats["candidates"])
        ids8.append(r.ids)
    floor8 = min(_time_floor(data.features) for _ in range(5))
    load8 = _load()
    # one pass over the f32 refine rows: exact scores of every row for every query, and the
    # codes of every d
    bases = {d: cd.train_basis(basis_sample, d) for d in dims}
    exact = np.empty((len(qs), n))
    parts: dict = {d: [] for d in dims}
    t_enc = dict.fromkeys(dims, 0.0)
    t = time.perf_counter()
    for s in range(0, n, 2048):
        rows = cache.rows_features(layer, np.arange(s, min(n, s + 2048)))
        for j, q in enumerate(qs):
            exact[j, s:s + len(rows)] = kernel.exact_best(rows, q.weights, q.features)[0]
        for d in dims:
            te = time.perf_counter()
            parts[d].append(cd.encode(rows, bases[d]))
            t_enc[d] += time.perf_counter() - te
    t_pass = time.perf_counter() - t
    truth_equal8 = [bool(np.array_equal(ids8[j], _topk(np.where(np.arange(n) == q.source_id,
                                                                -np.inf, exact[j]), K)))
                    for j, q in enumerate(qs)]
    res = {"n": n, "build_s": t_build, "exact_and_encode_pass_s": t_pass,
           "u8": {"search_s_median": float(np.median(t8)), "search_s": t8,
                  "candidates": cand8, "top10_equal_float": truth_equal8,
                  "read_floor_s": floor8, "bytes_per_image": int(data.features[0].nbytes
                                                                   + 3 * 4 * data.sqnorm[0].size),
                  "load_average": load8}, "codes": []}
    print(json.dumps(res), flush=True)
    for d in dims:
        codes = cd.Codes.concat(parts.pop(d))
        cd.bounds(codes, qs[0].weights, qs[0].features, stop=min(n, 4096))  # warm-up
        rows = _evaluate(codes, qs, exact)
        floor = min(sum(_time_floor(a) for a in (codes.codes, codes.scale, codes.resid,
                                                 codes.norm_lo)) for _ in range(5))
        sm = _summary(rows, n)
        sm.update({"d": d, "bytes_per_image": codes.bytes_per_image, "encode_s": t_enc[d],
                   "codes_read_floor_s": floor, "load_average": _load(), "per_query": rows})
        res["codes"].append(sm)
        print(json.dumps({k: v for k, v in sm.items() if k != "per_query"}), flush=True)
        del codes
    # the re-rank's cost per row, last (it evicts the cache's files from the page cache)
    costs = _rerank_costs(cache, layer, qs[0], n, np.random.default_rng(1))
    res["rerank"] = costs
    c_row = costs["cold_read_s_per_row"] + costs["score_s_per_row"]
    w_row = costs["warm_read_s_per_row"] + costs["score_s_per_row"]
    for sm in res["codes"]:
        sm["rerank_ram_s"] = sm["candidates_median"] * w_row
        sm["rerank_disk_s"] = sm["candidates_median"] * c_row
    print(json.dumps(costs), flush=True)
    return res


def _time_floor(arr) -> float:
    t = time.perf_counter()
    kernel.read_floor(np.ascontiguousarray(arr))
    return time.perf_counter() - t


def _table_a(a) -> list[str]:
    M = 1_000_000
    L = ["| codes | bytes / image | → GB at 1M | median bound width | candidates (median, min) "
         "| fraction | candidates for top-1 | k-th score s10 | median score | ρ_q | ρ_x "
         "| bounds hold, top-10 exact |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in a:
        L.append(f"| {r['config']} | {r['bytes_per_image']:,} "
                 f"| {r['bytes_per_image'] * M / 1e9:.1f} | {r['median_width']:.3f} "
                 f"| {r['candidates_median']:.0f}, {r['candidates_min']} "
                 f"| {r['candidate_fraction']:.1%} | {r['candidates_k1_median']:.0f} "
                 f"| {r['s10']:.3f} "
                 f"| {r['median_score']:.3f} | {r['rho_q']:.2f} | {r['rho_x']:.2f} "
                 f"| {'yes' if r['all_exact'] else 'NO'} |")
    return L


def _md(res) -> str:
    a, b = res["part_a"], res["part_b"]
    M = 1_000_000
    L = ["# Compact first-pass codes: feasibility (issue 19)", "",
         f"Command: `{res['command']}`  ", f"CPU: {res['cpu']}; load average at start "
         f"{res['load_start']}, end {res['load_end']}; peak RSS {res['peak_rss_gb']:.2f} GB; "
         f"wall {res['wall_s']:.0f} s.", "",
         f"## A. {a[0]['n']} distinct photos ({res['layer']}, {res['shape']}), "
         f"{len(a[0]['per_query'])} queries (central 3x3 cells), top-{K}", "",
         "Energy of the cells (uncentred, the basis' sample) in the top d principal directions: "
         + ", ".join(f"{k}: {v:.0%}" for k, v in res["energy"].items()) + "; dims needed for "
         + ", ".join(f"{k}: {v}" for k, v in res["dims_for_energy"].items()) + ".", "",
         *_table_a(a)]
    u8, rr = b["u8"], b["rerank"]
    n = b["n"]
    L += ["", f"## B. {n:,} images tiled from them (rolled / mirrored copies, f32 refine copy)",
          "", f"Current exact 8-bit search (`vfsearch.search`, scan + exact refine), same cache "
          f"and queries: median {u8['search_s_median'] * 1e3:.0f} ms per query "
          f"(→ {u8['search_s_median'] * M / n:.1f} s at 1M if it were in RAM), read floor of the "
          f"8-bit features {u8['read_floor_s'] * 1e3:.0f} ms, candidates {u8['candidates']}, "
          f"top-10 = exact scores of every row: "
          f"{'yes' if all(u8['top10_equal_float']) else 'NO'}; "
          f"{u8['bytes_per_image']:,} B / image (→ {u8['bytes_per_image'] * M / 1e9:.1f} GB at "
          f"1M); load average {u8['load_average']}.", "",
          f"Re-rank cost per row ({rr['rows']} random rows of the f32 refine copy, "
          f"{rr['row_bytes']:,} B each): read warm {rr['warm_read_s_per_row'] * 1e6:.0f} µs, "
          f"read cold (page cache evicted) {rr['cold_read_s_per_row'] * 1e6:.0f} µs "
          f"({rr['cold_read_mb_s']:.0f} MB/s), exact scoring {rr['score_s_per_row'] * 1e6:.0f} µs.",
          "", "| d | bytes / image | → GB at 1M | first pass (numpy) / query | → 1M | codes read "
          "floor → 1M | median bound width | s10 / median score | candidates (median) | fraction "
          "| re-rank RAM | re-rank disk | → 1M (first pass + disk re-rank) | exact | load |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["codes"]:
        x = M / n
        tot = r["first_pass_s"] * x + r["rerank_disk_s"] * x
        L.append(f"| {r['d']} | {r['bytes_per_image']:,} | {r['bytes_per_image'] * M / 1e9:.1f} "
                 f"| {r['first_pass_s']:.2f} s | {r['first_pass_s'] * x:.0f} s "
                 f"| {r['codes_read_floor_s'] * x:.2f} s | {r['median_width']:.3f} "
                 f"| {r['s10']:.3f} / {r['median_score']:.3f} "
                 f"| {r['candidates_median']:.0f} | {r['candidate_fraction']:.1%} "
                 f"| {r['rerank_ram_s']:.1f} s | {r['rerank_disk_s']:.1f} s | {tot:.0f} s "
                 f"| {'yes' if r['all_exact'] else 'NO'} | {r['load_average']} |")
    if "part_c" in res:
        c = res["part_c"]
        L += ["", f"## C. {c[0]['n']:,} distinct images of another set ({res['distinct']}), "
              f"{len(c[0]['per_query'])} queries, top-{K}", "", *_table_a(c)]
    L += ["", "Re-rank times are the median candidate count × the measured per-row cost "
          "(projections to 1M assume the candidate fraction stays the same). ρ_q: the query's "
          "mask-weighted energy outside the basis, |Q⊥|/|Q|; ρ_x: the median cell's residual "
          "ratio |x⊥|/|x|; the residual term of the bound is about ρ_q·ρ_x per window.", ""]
    return "\n".join(L)


def render(path: str) -> str:
    """Re-write the markdown next to a results JSON (after a change of the layout)."""
    res = json.loads(Path(path).read_text())
    md = _md(res)
    Path(path).with_suffix(".md").write_text(md)
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="/tmp/vfs-codes/in1k")
    ap.add_argument("--images", default="/work/shared/datasets/imagenet-sample-1k")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dims", default="8,16,32")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--workdir", default="/tmp/vfs-codes")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip-b", action="store_true", help="part A only")
    ap.add_argument("--distinct", help="part C: another cache of distinct images (same layer)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load0 = _load()
    src = open_cache(_source(args))
    layer = src.default_layer
    dims = [int(v) for v in args.dims.split(",")]
    step = max(1, len(src) // args.queries)
    qids = list(range(0, step * args.queries, step))[:args.queries]
    rng = np.random.default_rng(0)
    train = rng.choice(len(src), min(len(src), TRAIN_IMAGES), replace=False)
    sample = src.rows_features(layer, np.sort(train)).reshape(-1, src.layer_info(layer)["channels"])
    H, W = src.grid(layer)
    nice = f"nice -n {os.nice(0)} " if os.nice(0) else ""
    res = {"command": nice + " ".join([".venv/bin/python", "benchmarks/compact_codes.py",
                                       *(argv or sys.argv[1:])]),
           "layer": layer, "shape": f"{H}x{W}x{sample.shape[1]}", "load_start": load0,
           "cpu": f"{os.cpu_count()} CPUs, kernel backends {kernel.available_backends()}"}
    x = sample.astype(np.float64)
    ev = np.linalg.eigvalsh(x.T @ x)[::-1]
    cum = np.cumsum(ev) / ev.sum()
    res["energy"] = {f"{d} dims": float(cum[d - 1]) for d in (8, 16, 32, 64, 96)}
    res["dims_for_energy"] = {f"{t:.0%}": int(np.searchsorted(cum, t)) + 1
                              for t in (0.5, 0.9, 0.95, 0.99)}
    print(json.dumps({k: res[k] for k in ("energy", "dims_for_energy")}), flush=True)
    res["part_a"] = part_a(src, layer, sample, dims, qids)
    if args.distinct:
        src2 = open_cache(args.distinct)
        ids2 = np.sort(rng.choice(len(src2), min(len(src2), TRAIN_IMAGES), replace=False))
        sample2 = src2.rows_features(layer, ids2).reshape(-1, sample.shape[1])
        step2 = max(1, len(src2) // args.queries)
        res["distinct"] = f"{args.distinct}, {len(src2)} images"
        res["part_c"] = part_a(src2, layer, sample2, dims[-1:],
                               list(range(0, step2 * args.queries, step2))[:args.queries],
                               plain=(5, 6, 7, 8), with_qerr=(5, 6))
    if not args.skip_b:
        res["part_b"] = part_b(src, layer, sample, dims, qids, args.n, args.workdir)
    res.update(load_end=_load(), peak_rss_gb=_rss_gb(), wall_s=time.perf_counter() - t0)
    if args.out and not args.skip_b:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "compact_codes.json").write_text(json.dumps(res, indent=1))
        Path(args.out, "compact_codes.md").write_text(_md(res))
        print(_md(res))


if __name__ == "__main__":
    main()
