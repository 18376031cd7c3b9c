"""The README's screenshot: the demo with a brushed query and its results.

    .venv/bin/python scripts/screenshot.py                  # → docs/screenshot.png
    .venv/bin/python scripts/screenshot.py --url http://127.0.0.1:8123/ --out /tmp/shot.png

Without --url it serves the demo cache in this process (building it first with
``vfsearch demo --no-serve`` when --dir has none: about a minute). It drives headless Chromium
(Debian's /usr/bin/chromium, else Playwright's own) through Playwright: picks the astronaut photo,
brushes her face, waits for the results and saves a 1280 × 800 PNG.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# the stroke, in pixels of the 512 × 512 astronaut photo: around her face
STROKE = [(205, 120), (290, 125), (285, 160), (210, 165), (215, 195), (285, 195)]


def serve(cache_dir: Path):
    """Serve the cache at cache_dir on a free port in a thread: (url, stop)."""
    import uvicorn

    from vfsearch import open_cache
    from vfsearch.server import create_app

    cache = open_cache(cache_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app({cache_dir.name: cache}), host="127.0.0.1",
                                        port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t = time.time()
    while not srv.started:
        if not th.is_alive() or time.time() - t > 30:
            raise SystemExit("the server did not start")
        time.sleep(0.05)

    def stop():
        srv.should_exit = True
        th.join(10)

    return f"http://127.0.0.1:{port}/", stop


def shoot(url: str, out: Path, width: int, height: int, scale: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        kw = {"executable_path": str(CHROMIUM)} if CHROMIUM.exists() else {}
        browser = p.chromium.launch(args=["--no-sandbox", "--disable-gpu"], **kw)
        pg = browser.new_page(viewport={"width": width, "height": height},
                              device_scale_factor=scale)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url)
        pg.wait_for_selector("body[data-ready='1']")
        qid = pg.evaluate("""async () => {
          const c = window.vfs.S.choice.cache;
          const url = `/api/caches/${encodeURIComponent(c)}/images?q=astronaut_0&limit=1`;
          const r = await (await fetch(url)).json();
          return r.items.length ? r.items[0].id : null;
        }""")
        if qid is None:
            raise SystemExit("the cache has no astronaut_0 image (is it the demo cache?)")
        # one search first: the server loads the layer and its search kernel once (the timings on
        # the page are then those of a warm server)
        pg.evaluate("""async (id) => {
          const S = window.vfs.S;
          await fetch('/api/search', {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({cache: S.choice.cache, layer: S.choice.layer, image: {id},
                                  mode: 'whole', k: 1})});
        }""", qid)
        pg.evaluate("(id) => document.querySelector(`#ds-grid .thumb[data-id='${id}']`)"
                    "?.scrollIntoView()", qid)
        pg.click(f"#ds-grid .thumb[data-id='{qid}']")
        pg.wait_for_function(f"window.vfs.S.query && window.vfs.S.query.id === {qid}")
        box = pg.locator("#q-canvas").bounding_box()
        w, h = pg.evaluate("window.vfs.S.query.size")

        def at(x, y):
            return box["x"] + x / w * box["width"], box["y"] + y / h * box["height"]

        pg.mouse.move(*at(*STROKE[0]))
        pg.mouse.down()
        for pt in STROKE[1:]:
            pg.mouse.move(*at(*pt), steps=5)
        pg.mouse.up()
        pg.mouse.move(width - 5, 5)  # the brush cursor off the image
        pg.wait_for_function("+(document.body.dataset.searches || 0) >= 1 && "
                             "document.body.dataset.state === 'idle'", timeout=60000)
        pg.wait_for_function("document.querySelectorAll('.pane .card[data-drawn]').length >= 8")
        pg.wait_for_timeout(500)  # thumbnails of the dataset column
        out.parent.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(out))
        browser.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    from PIL import Image  # a vfsearch dependency

    Image.open(out).save(out, optimize=True)  # a smaller file for the repository, the same pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running vfsearch server on the demo cache")
    ap.add_argument("--dir", type=Path, default=ROOT / ".vfsearch-demo",
                    help="the demo's directory (its cache is DIR/cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    a = ap.parse_args()
    stop = None
    url = a.url
    if not url:
        cache = a.dir / "cache"
        if not cache.exists():
            exe = Path(sys.executable).with_name("vfsearch")
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vfsearch.cli"]
            subprocess.run([*cmd, "demo", "--dir", str(a.dir), "--no-serve"], check=True)
        url, stop = serve(cache)
    try:
        shoot(url, a.out, a.width, a.height, a.scale)
    finally:
        if stop:
            stop()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
