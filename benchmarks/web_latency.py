"""Browser latency of the web app: stroke end → results drawn, on a 50k-image cache.

    python benchmarks/web_latency.py [CACHE_DIR] [--n 50000] [--strokes 30] [--k 24]

Builds (or reuses) a synthetic 8-bit cache (``--shape``, default 7×7×320; signed int8, no refine
copy, a few real JPEG thumbnails of a few KB reused for every row) — or, with ``--tile-from
CACHE --layer L``, a cache of N rows tiled from the real features and thumbnails of an indexed
cache (8-bit + f32 refine, as indexing writes it) — starts
``vfsearch serve`` on it in a subprocess, and in headless chromium draws ~30 strokes of about
3×3 feature cells on dataset images, timing each from the stroke's end (pointerup) until every
result thumbnail and overlay is drawn. Prints p50/p95. Target: p95 ≤ 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

H, W, C = 7, 7, 320
LAYER = "blocks.15"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def _thumbs(n: int = 8) -> list[tuple[bytes, tuple[int, int], str]]:
    """A few small real JPEG thumbnails (scikit-image's sample photos)."""
    from PIL import Image

    from vfsearch.datasets import _FILES, _source_dir
    from vfsearch.images import make_thumbnail

    out = []
    names = ["astronaut", "cat", "coffee", "horse", "rocket", "motorcycle", "camera", "brick"]
    for name in names[:n]:
        p = _source_dir() / _FILES[name]
        if not p.exists():
            continue
        with Image.open(p) as im:
            img = im.convert("RGB")
        out.append((make_thumbnail(img, 160, quality=72), img.size, name))
    if not out:  # no sample photos: smooth random pictures
        rng = np.random.default_rng(0)
        for k in range(4):
            small = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC)
            out.append((make_thumbnail(img, 160, quality=72), img.size, f"synthetic{k}"))
    return out


def build_cache(path: Path, n: int, chunk: int = 1024, seed: int = 0) -> None:
    """Write a synthetic int8 cache directly with the layout of vfsearch.cache."""
    from vfsearch import cache as cm
    from vfsearch.transforms import Transform

    per_row = H * W * (C + 12) + 6000
    need = n * per_row
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if need * 1.5 > free:
        raise SystemExit(f"need about {need / 1e9:.1f} GB free for the cache, have "
                         f"{free / 1e9:.1f} GB")
    print(f"building a synthetic {n:,}-image cache at {path} (~{need / 1e9:.2f} GB)…",
          file=sys.stderr)
    t0 = time.time()
    w = cm.synthetic_cache(path, n, layer=LAYER, channels=C, grid=(H, W), nonnegative=False,
                           chunk=chunk, compression="lz4", model="efficientnet-lite0",
                           transform=Transform(), meta_columns=["domain"])
    thumbs = _thumbs()
    rng = np.random.default_rng(seed)
    # features: noisy copies of a few hundred prototype maps, so searches have structure
    protos = rng.standard_normal((256, H, W, C)).astype(np.float32)
    labels = np.array([f"class{k:02d}" for k in range(20)], dtype=object)
    domains = np.array(["photo", "sketch", "painting"], dtype=object)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        m = e - s
        which = rng.integers(0, len(protos), m)
        x = protos[which] + 0.8 * rng.standard_normal((m, H, W, C)).astype(np.float32)
        np.maximum(x, -0.5, out=x)  # a little asymmetric, like post-activation features
        t = [thumbs[(i * 7919) % len(thumbs)] for i in range(s, e)]
        w.write_block(s, features={LAYER: x},
                      path=[f"synthetic/{i // 1000:03d}/img_{i:06d}.jpg" for i in range(s, e)],
                      label=labels[which % len(labels)],
                      meta={"domain": domains[np.arange(s, e) % 3]},
                      thumb=[tt[0] for tt in t], size=np.array([tt[1] for tt in t], np.int32),
                      status=cm.INDEXED)  # status last: the commit point
    print(f"built in {time.time() - t0:.0f} s ({cm.disk_usage(path) / 1e9:.2f} GB)",
          file=sys.stderr)


def ensure_cache(path: Path, n: int) -> Path:
    from vfsearch import open_cache
    from vfsearch.errors import VfsError

    if (path / "zarr.json").exists():
        try:
            c = open_cache(path)
            if len(c) >= n and LAYER in c.layers and c.valid.all():
                return path
        except VfsError:
            pass
        raise SystemExit(f"{path} holds another cache; remove it or pass another directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    build_cache(path, n)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pids: dict[str, set[int]]) -> dict[str, float]:
    """CPU time (user + system) of each group of processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for group, ps in pids.items():
        tot = 0
        for pid in ps:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                tot += int(f[11]) + int(f[12])
            except (OSError, IndexError, ValueError):
                pass
        out[group] = tot / tick
    return out


def _processes() -> dict[str, set[int]]:
    """This run's processes by group: the server, chromium, the Playwright driver, this script."""
    me = os.getpid()
    groups: dict[str, set[int]] = {"server": set(), "chromium": set(), "playwright": set(),
                                   "benchmark": {me}}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "chrom" in comm:
            groups["chromium"].add(int(d.name))
        elif comm == "node" and "playwright" in cmd:
            groups["playwright"].add(int(d.name))
        elif "vfsearch.server import serve" in cmd:
            groups["server"].add(int(d.name))
    return groups


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    global H, W, C, LAYER
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", nargs="?", default=None, help="cache directory (built when missing)")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--strokes", type=int, default=30)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--shape", default=f"{H}x{W}x{C}",
                    help="layer grid and channels, e.g. 14x14x112 for the default layer blocks.10")
    ap.add_argument("--layer", default=LAYER, help="layer name stored in the synthetic cache")
    ap.add_argument("--tile-from", type=Path, default=None, metavar="CACHE",
                    help="build the N-image cache from this cache's real features of --layer "
                         "(its images tiled to N rows, each copy rolled/mirrored, thumbnails "
                         "copied; vfsearch.bench.build_tiled_cache) instead of synthetic ones")
    ap.add_argument("--wait", choices=["event", "raf"], default="event",
                    help="how the benchmark learns that the results are drawn: the page's "
                         "vfs:results event (no polling; default) or Playwright polling a "
                         "predicate every animation frame (the harness then keeps the page "
                         "rendering frames during the search)")
    a = ap.parse_args(argv)
    H, W, C = (int(v) for v in a.shape.lower().split("x"))
    LAYER = a.layer

    tmp = None
    if a.cache is None:
        tmp = Path(tempfile.mkdtemp(prefix="vfsearch-bench-"))
        path = tmp / "synthetic.vfs"
    else:
        path = Path(a.cache).expanduser().resolve()
    if a.tile_from is not None:
        from vfsearch import open_cache
        from vfsearch.bench import build_tiled_cache

        src = open_cache(a.tile_from)
        H, W = src.grid(LAYER)
        C = src.layer_info(LAYER)["channels"]
        build_tiled_cache(src, LAYER, a.n, path, log=lambda m: print(m, file=sys.stderr))
        print(f"real features of {src.path} ({LAYER}, {H}x{W}x{C}) tiled to {a.n:,} rows",
              file=sys.stderr)
    else:
        ensure_cache(path, a.n)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    code = ("import sys; from vfsearch.server import serve; "
            f"serve([{str(path)!r}], host='127.0.0.1', port={port})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        t = time.time()
        while True:
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - t > 120:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise SystemExit("the server did not start:\n" + err) from None
                time.sleep(0.2)
        caches = json.loads(urllib.request.urlopen(base + "/api/caches").read())["caches"]
        name = caches[0]["name"]
        # warm up: layer in RAM, kernel compiled
        t = time.time()
        for i in range(3):
            r = _post(base + "/api/search", {"cache": name, "image": {"id": i}, "k": a.k,
                                             "box": [100, 80, 220, 200]})
        print(f"server ready; warm-up {time.time() - t:.1f} s; server search "
              f"{r['timing']['search_ms']:.0f} ms "
              f"on {caches[0]['images']:,} images", file=sys.stderr)

        from playwright.sync_api import sync_playwright

        rng = np.random.default_rng(1)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=a.chromium, args=ARGS)
            pg = b.new_page(viewport={"width": 1440, "height": 900})
            pg.goto(f"{base}/#c={name}&l={LAYER}&k={a.k}&i=0")
            pg.wait_for_selector("body[data-ready='1']")
            pg.wait_for_selector("#ds-grid .thumb >> nth=100")
            cells: list[int] = []
            bodies: list[str] = []  # the searches the page sends, posted again without it below
            pg.on("request", lambda r: bodies.append(r.post_data or "")
                  if r.url.endswith("/api/search") and r.method == "POST" else None)
            procs = _processes()
            cpu0, wall0 = _cpu_seconds(procs), time.perf_counter()
            for n_done, s in enumerate(range(a.strokes), start=1):
                if s % 5 == 0:  # a new query image every 5 strokes
                    pg.click(f"#ds-grid .thumb >> nth={int(rng.integers(0, 100))}")
                    pg.wait_for_timeout(150)
                    pg.wait_for_function("window.vfs.S.query && "
                                         "!document.querySelector('#stage').classList"
                                         ".contains('empty')")
                    # the query image and its grid settle before the first stroke (a stroke
                    # drawn while they load is cleared by the reset)
                    pg.wait_for_function("document.querySelector('#q-img').complete && "
                                         "document.body.dataset.state === 'idle'")
                    pg.wait_for_timeout(500)
                    pg.evaluate("window.vfs.brush.clear({commit: false})")
                box = pg.locator("#q-canvas").bounding_box()
                qw, qh = pg.evaluate("window.vfs.S.query.size")
                crop = pg.evaluate("window.vfs.brush.grid.crop")
                kx, ky = box["width"] / qw, box["height"] / qh
                cw = (crop[2] - crop[0]) / W * kx  # one cell, in CSS px
                chh = (crop[3] - crop[1]) / H * ky
                # a 3×3-cell region at a random place inside the crop: a brush 0.8 cells wide
                # zig-zagging between the centres of its corner cells
                c0 = int(rng.integers(0, W - 2))
                r0 = int(rng.integers(0, H - 2))
                pg.evaluate(f"window.vfs.brush.setSize({0.8 * min(cw, chh):.2f})")
                x0 = box["x"] + crop[0] * kx + (c0 + 0.5) * cw
                y0 = box["y"] + crop[1] * ky + (r0 + 0.5) * chh
                pg.evaluate("window.vfs.brush.clear({commit: false})")
                if a.wait == "event":  # resolved once this stroke's results are drawn; the
                    # trailing 0 keeps evaluate from awaiting the promise here
                    pg.evaluate("window.__drawn = new Promise((r) => window.addEventListener("
                                "'vfs:results', () => r(true), {once: true})); 0")
                pg.mouse.move(x0, y0)
                pg.mouse.down()
                for j in range(5):
                    pg.mouse.move(x0 + (2 * cw if j % 2 == 0 else 0), y0 + (j + 1) * 0.4 * chh,
                                  steps=3)
                pg.mouse.up()
                if a.wait == "event":
                    pg.evaluate("window.__drawn")
                pg.wait_for_function(f"window.vfs.timings.length >= {n_done} && "
                                     "document.body.dataset.state === 'idle'", timeout=60000)
                cells.append(pg.evaluate("window.vfs.S.panes[0].ctx.query.n_cells"))
            timings = pg.evaluate("window.vfs.timings")
            cpu1, wall1 = _cpu_seconds(procs), time.perf_counter()
            b.close()
        # the first stroke after each new image is measured too (features are read then)
        def col(key):
            return [t[key] for t in timings if t.get(key) is not None]

        def pct(v, q):
            v = sorted(v)
            return v[min(len(v) - 1, round(q * (len(v) - 1)))]

        rows = [
            ("stroke end → results drawn", col("total")),
            ("  mask encode (browser)", col("encode")),
            ("  request → response", col("fetch")),
            ("    server: scan + top-k", col("serverSearch")),
            ("    server: query, response, thumbs",
             [t["serverTotal"] - t["serverSearch"] for t in timings
              if t.get("serverTotal") is not None]),
            ("    transport + JSON", [t["fetch"] - t["serverTotal"] for t in timings
                                      if t.get("serverTotal") is not None]),
            ("  results drawn (thumbs + overlays)", [t["draw"] for t in timings]),
            ("    result cards (thumbs decoded)", col("cards")),
            ("      drawing their canvases", col("cardDraw")),
            ("    curve, strip, rest", [t["draw"] - t["cards"] for t in timings
                                       if t.get("cards") is not None]),
        ]
        # the same requests with no browser running: what the server's search costs alone
        alone = [_post(base + "/api/search", json.loads(bd))["timing"]["search_ms"]
                 for bd in bodies if bd]
        rows.insert(4, ("      the same requests, no browser", alone))
        print(f"\nweb latency on {caches[0]['images']:,} images ({H}×{W}×{C} int8), k={a.k}, "
              f"{len(timings)} strokes of {statistics.median(cells):.0f} cells "
              f"(median; {min(cells)}–{max(cells)}), load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs:")
        for name, v in rows:
            print(f"  {name:36s} p50 {statistics.median(v):6.0f} ms   p95 {pct(v, 0.95):6.0f} ms")
        used = {g: cpu1[g] - cpu0[g] for g in cpu0}
        print(f"  CPU time during the {len(timings)} strokes ({wall1 - wall0:.1f} s of wall "
              "time, also the clicks and waits between strokes): "
              + ", ".join(f"{g} {v:.1f} s" for g, v in used.items()))
        p95 = pct(col("total"), 0.95)
        print(f"  target p95 ≤ 150 ms: {'met' if p95 <= 150 else 'NOT met'}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
