"""End-to-end test of the web app in headless Debian chromium (Playwright, sync API).

Screenshots go to artifacts/screenshots/*.png.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("browser tests need Debian chromium at /usr/bin/chromium (scripts/setup.sh "
                "installs it)", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    pytest.skip("browser tests need the python 'playwright' package", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def server(small_cache):
    yield from _serve(small_cache)


@pytest.fixture(scope="module")
def map_cache(small_cache, tmp_path_factory):
    """A copy of the shared cache with a stored map (other tests expect the shared one to have
    none)."""
    import shutil

    from vfsearch import open_cache
    from vfsearch.embed import build_atlas, compute_map

    dst = tmp_path_factory.mktemp("mapcache") / "c"
    shutil.copytree(small_cache.path, dst)
    c = open_cache(dst)
    build_atlas(c, compute_map(c, "blocks.10", method="tsne", progress=False), progress=False)
    return c


@pytest.fixture(scope="module")
def map_server(map_cache):
    yield from _serve(map_cache)


def _serve(small_cache):
    import uvicorn

    from vfsearch.engine import make_query, search
    from vfsearch.server import create_app

    # compile/load the search kernel before the browser's first stroke (a one-off per machine)
    search(small_cache, make_query(small_cache, 0, whole=True), k=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app({"small": small_cache}), host="127.0.0.1",
                                        port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t = time.time()
    while not srv.started:
        assert th.is_alive() and time.time() - t < 20, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
          and problems.append(f"console: {m.text}"))
    pg.problems = problems
    yield pg
    ctx.close()
    assert not problems, problems


def searches(pg) -> int:
    return int(pg.evaluate("document.body.dataset.searches || '0'"))


def wait_search(pg, n: int):
    pg.wait_for_function(f"+(document.body.dataset.searches || 0) >= {n} && document.body.dataset.state === 'idle'",
                         timeout=30000)


def image_to_page(pg, x: float, y: float) -> tuple[float, float]:
    """Image pixels of the query → page coordinates on the brush canvas."""
    box = pg.locator("#q-canvas").bounding_box()
    w, h = pg.evaluate("window.vfs.S.query.size")
    return box["x"] + x / w * box["width"], box["y"] + y / h * box["height"]


def stroke(pg, pts):
    x, y = image_to_page(pg, *pts[0])
    pg.mouse.move(x, y)
    pg.mouse.down()
    for p in pts[1:]:
        x, y = image_to_page(pg, *p)
        pg.mouse.move(x, y, steps=4)
    pg.mouse.up()


def drag(pg, sel, f0, f1, fy=0.5):
    b = pg.locator(sel).bounding_box()
    pg.mouse.move(b["x"] + f0 * b["width"], b["y"] + fy * b["height"])
    pg.mouse.down()
    pg.mouse.move(b["x"] + f1 * b["width"], b["y"] + fy * b["height"], steps=6)
    pg.mouse.up()


def locate_crop(big: Image.Image, small: Image.Image) -> tuple[int, int, float]:
    """Where ``small`` (an unscaled crop) sits in ``big``: (x0, y0, mean abs error)."""
    a = np.asarray(big.convert("L"), np.float32)
    b = np.asarray(small.convert("L"), np.float32)
    f = 4
    A, Bs = a[::f, ::f], b[::f, ::f]
    best = (1e9, 0, 0)
    for y in range(A.shape[0] - Bs.shape[0] + 1):
        for x in range(A.shape[1] - Bs.shape[1] + 1):
            e = np.abs(A[y:y + Bs.shape[0], x:x + Bs.shape[1]] - Bs).mean()
            best = min(best, (e, x * f, y * f))
    _, x0, y0 = best
    best = (1e9, 0, 0)
    for y in range(max(0, y0 - f), min(a.shape[0] - b.shape[0], y0 + f) + 1):
        for x in range(max(0, x0 - f), min(a.shape[1] - b.shape[1], x0 + f) + 1):
            e = np.abs(a[y:y + b.shape[0], x:x + b.shape[1]] - b).mean()
            best = min(best, (e, x, y))
    return best[1], best[2], best[0]


OVERLAY_CHECK = """(id) => {
  // the card's pixels vs the bare thumbnail: inside the match box the region overlay keeps the
  // image as is, far outside it the image is shaded
  const card = document.querySelector(`.pane[data-pane="0"] .card[data-id="${id}"]`);
  const cv = card.querySelector('canvas');
  const m = window.vfs.S.panes[0].matches.find(x => x.id === id);
  const W = cv.width, H = cv.height;
  const s = Math.min(W / m.image_size[0], H / m.image_size[1]);
  const R = {x: (W - m.image_size[0] * s) / 2, y: (H - m.image_size[1] * s) / 2};
  const raw = document.createElement('canvas'); raw.width = W; raw.height = H;
  const g = raw.getContext('2d');
  g.imageSmoothingQuality = 'high';
  g.drawImage(m._img, R.x, R.y, m.image_size[0] * s, m.image_size[1] * s);
  const lum = (c, x, y) => { const d = c.getContext('2d').getImageData(Math.round(x) - 2, Math.round(y) - 2, 5, 5).data;
    let t = 0; for (let i = 0; i < d.length; i += 4) t += d[i] + d[i+1] + d[i+2]; return t / 75 + 1; };
  const [x0, y0, x1, y1] = m.box;
  const cx = R.x + (x0 + x1) / 2 * s, cy = R.y + (y0 + y1) / 2 * s;
  // the brightest of a few points far from the box, inside the image
  let far = null;
  for (let i = 1; i < 10; i++) for (let j = 1; j < 10; j++) {
    const px = m.image_size[0] * i / 10, py = m.image_size[1] * j / 10;
    if (px > x0 - 40 && px < x1 + 40 && py > y0 - 40 && py < y1 + 40) continue;
    const X = R.x + px * s, Y = R.y + py * s, l = lum(raw, X, Y);
    if (!far || l > far[2]) far = [X, Y, l];
  }
  return {inside: lum(cv, cx, cy) / lum(raw, cx, cy), outside: lum(cv, far[0], far[1]) / far[2]};
}"""


def test_end_to_end(server, page, small_cache, sample_dir, tmp_path):
    pg = page
    t_start = time.time()
    pg.goto(server)
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_selector("#ds-grid .thumb >> nth=17")
    assert pg.locator("#ds-count").inner_text().startswith("18 images")
    pg.screenshot(path=str(SHOTS / "01-start.png"))

    # dataset filter
    pg.fill("#ds-q", "coffee")
    pg.wait_for_function("document.querySelectorAll('#ds-grid .thumb').length === 3")
    pg.fill("#ds-q", "")
    pg.wait_for_function("document.querySelectorAll('#ds-grid .thumb').length === 18")

    # pick astronaut_0 and brush its face
    astro = [i for i, p in enumerate(small_cache.paths) if str(p).startswith("astronaut/")]
    q_id = astro[0]
    pg.click(f"#ds-grid .thumb[data-id='{q_id}']")
    pg.wait_for_function(f"window.vfs.S.query && window.vfs.S.query.id === {q_id}")
    assert pg.evaluate("window.vfs.brush.grid.rows") == 7
    stroke(pg, [(205, 120), (290, 125), (285, 160), (210, 165), (215, 195), (285, 195)])
    wait_search(pg, 1)
    pg.wait_for_selector(".pane[data-pane='0'] .card[data-drawn='region'] >> nth=5")
    cards = pg.locator(".pane[data-pane='0'] .card")
    top = [int(cards.nth(i).get_attribute("data-id")) for i in range(2)]
    # ranks are 1-based as the API sends them (no "+ 1" in the page)
    assert cards.nth(0).get_attribute("data-rank") == "1" and cards.nth(0).locator(".rank").inner_text() == "#1"
    assert set(top) == set(astro[1:]), "the query's own crops should be found first"
    timing = pg.evaluate("window.vfs.S.lastTiming")
    assert timing["total"] < 5000

    # the match is where the face is in the crop (within ~1.5 feature cells)
    q_bbox = pg.evaluate("window.vfs.brush.bbox()")
    qc = ((q_bbox[0] + q_bbox[2]) / 2, (q_bbox[1] + q_bbox[3]) / 2)
    big = Image.open(sample_dir / str(small_cache.paths[q_id]))
    crop_id = astro[1]
    small = Image.open(sample_dir / str(small_cache.paths[crop_id]))
    x0, y0, err = locate_crop(big, small)
    assert err < 12, "astronaut_1 should be an unscaled crop of astronaut_0"
    m = pg.evaluate(f"window.vfs.S.panes[0].matches.find(m => m.id === {crop_id})")
    mc = ((m["box"][0] + m["box"][2]) / 2, (m["box"][1] + m["box"][3]) / 2)
    cell = 224 / 7 / m["geometry"]["sx"]
    assert abs(mc[0] - (qc[0] - x0)) < 1.5 * cell and abs(mc[1] - (qc[1] - y0)) < 1.5 * cell, (mc, qc, x0, y0)
    # and the overlay is drawn there: image kept inside the match, shaded far outside
    ov = pg.evaluate(OVERLAY_CHECK, crop_id)
    assert ov["inside"] > 0.85 and ov["outside"] < 0.6, ov
    # spread chart shows labels of the results
    assert "astronaut" in pg.locator(".pane[data-pane='0'] .spread").inner_text()
    pg.screenshot(path=str(SHOTS / "02-results.png"))

    # the distribution: drag windows on the curve, the strip follows
    drag(pg, "#dist-canvas", 0.35, 0.7)
    pg.wait_for_function("document.querySelector('#strip').dataset.start !== '' && document.querySelectorAll('#strip .mini').length > 0")
    first = pg.evaluate("(s => [+s.dataset.start, +s.dataset.stop])(document.querySelector('#strip'))")
    ranks = [int(r) for r in pg.eval_on_selector_all("#strip .mini", "els => els.map(e => e.dataset.rank)")]
    # window start/stop are positions (0-based), the strip's ranks 1-based: ranks start+1 … stop
    assert first[0] > 0 and ranks and all(first[0] < r <= first[1] for r in ranks)
    drag(pg, "#dist-canvas", 0.85, 0.99)
    pg.wait_for_function(f"+document.querySelector('#strip').dataset.start > {first[0]}")
    ranks2 = [int(r) for r in pg.eval_on_selector_all("#strip .mini", "els => els.map(e => e.dataset.rank)")]
    assert ranks2 and min(ranks2) > max(ranks)
    pg.wait_for_timeout(150)
    pg.screenshot(path=str(SHOTS / "03-rank-window.png"))

    # heat overlay
    pg.click("#overlay-mode [data-mode='heat']")
    pg.wait_for_selector(".pane[data-pane='0'] .card[data-drawn='heat'] >> nth=3")
    pg.screenshot(path=str(SHOTS / "04-heat.png"))
    pg.click("#overlay-mode [data-mode='region']")

    # switch layer: a finer grid, a new search
    n = searches(pg)
    pg.select_option("#choice", "small::blocks.10")
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.brush.grid.rows") == 14
    assert "blocks.10" in pg.locator(".pane[data-pane='0'] .pane-head").inner_text()
    # compare with the other layer side by side
    n = searches(pg)
    pg.select_option("#compare", "small::blocks.15")
    wait_search(pg, n + 1)
    pg.wait_for_selector(".pane[data-pane='1'] .card >> nth=3")
    assert "blocks.15" in pg.locator(".pane[data-pane='1'] .pane-head").inner_text()
    assert pg.locator("#legend .item").count() >= 2
    pg.wait_for_timeout(150)
    pg.screenshot(path=str(SHOTS / "05-compare.png"))

    # the shared URL restores the same query
    url = pg.url
    assert "#" in url and "mz=" in url and "l=blocks.10" in url and "cmp=" in url
    ids_before = pg.evaluate("window.vfs.S.panes[0].matches.map(m => m.id)")
    bbox_before = pg.evaluate("window.vfs.brush.bbox()")
    pg2 = pg.context.new_page()
    pg2.on("pageerror", lambda e: pg.problems.append(f"page error (2): {e}"))
    pg2.goto(url)
    wait_search(pg2, 1)
    pg2.wait_for_selector(".pane[data-pane='1'] .card >> nth=3")
    st = pg2.evaluate("({q: window.vfs.S.query.id, c: window.vfs.S.choice, cmp: window.vfs.S.compare,"
                      " ids: window.vfs.S.panes[0].matches.map(m => m.id), bbox: window.vfs.brush.bbox()})")
    assert st["q"] == q_id and st["c"]["layer"] == "blocks.10" and st["cmp"]["layer"] == "blocks.15"
    assert st["ids"] == ids_before
    assert np.allclose(st["bbox"], bbox_before, atol=512 / 64 * 1.5)
    pg2.screenshot(path=str(SHOTS / "06-restored.png"))
    pg2.close()

    # open a result large, then search from the matched region
    n = searches(pg)  # counted before the change: the search may finish before a later count
    pg.select_option("#compare", "")
    wait_search(pg, n + 1)
    pg.locator(".pane[data-pane='0'] .card").first.click()
    pg.wait_for_selector("#modal:not([hidden])")
    pg.wait_for_timeout(200)
    pg.screenshot(path=str(SHOTS / "07-modal.png"))
    first_id = int(pg.locator(".pane[data-pane='0'] .card").first.get_attribute("data-id"))
    n = searches(pg)
    pg.click("#modal-carry")
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.S.query.id") == first_id
    assert pg.evaluate("window.vfs.brush.isEmpty()") is False
    labels = pg.eval_on_selector_all(".pane[data-pane='0'] .card .label", "els => els.slice(0, 2).map(e => e.textContent)")
    assert labels == ["astronaut", "astronaut"]

    # history holds the earlier queries; clicking one restores it
    assert pg.locator("#history .hist").count() >= 3

    # errors from the server are shown on the page
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    pg.set_input_files("#upload", str(bad))
    pg.wait_for_selector("#toast:not([hidden])")
    assert "not a recognised image format" in pg.locator("#toast").inner_text()

    # upload a picture and brush it
    cat = next(i for i, p in enumerate(small_cache.paths) if str(p).startswith("cat/"))
    pg.set_input_files("#upload", str(sample_dir / str(small_cache.paths[cat])))
    pg.wait_for_function("window.vfs.S.query && window.vfs.S.query.kind === 'upload'")
    w, h = pg.evaluate("window.vfs.S.query.size")
    n = searches(pg)
    stroke(pg, [(w * 0.35, h * 0.4), (w * 0.6, h * 0.45), (w * 0.5, h * 0.6)])
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.S.panes[0].matches[0].label") == "cat"
    assert pg.evaluate("window.vfs.S.panes[0].matches[0].id") == cat
    pg.screenshot(path=str(SHOTS / "08-upload.png"))
    print(f"\nbrowser end-to-end: {time.time() - t_start:.1f} s; first search {timing['total']:.0f} ms")


def test_brush_module_standalone(browser, server):
    """brush.js works on its own (as the Jupyter widget uses it): paint, erase, undo, encode."""
    pg = browser.new_page()
    pg.goto(server + "static/index.html")  # same origin, any page: the module is imported alone
    res = pg.evaluate("""async () => {
      const { Brush, encodeMask, decodeMask } = await import('/static/brush.js');
      const cv = document.createElement('canvas');
      cv.style.cssText = 'position:fixed;left:0;top:0;width:300px;height:200px';
      document.body.append(cv);
      const b = new Brush(cv, { size: 30 });
      b.setImageSize(600, 400);
      const commits = [];
      b.addEventListener('commit', e => commits.push(e.detail.reason));
      const ev = (type, x, y) => cv.dispatchEvent(new PointerEvent(type, { clientX: x, clientY: y,
          pointerId: 1, pointerType: 'mouse', button: 0, buttons: 1, bubbles: true }));
      ev('pointerdown', 50, 100); ev('pointermove', 150, 100); ev('pointerup', 150, 100);
      const m = b.getMask();
      const painted = m.data.reduce((a, v) => a + (v > 0), 0);
      const bb = b.bbox();
      const soft = m.data.some(v => v > 0 && v < 255);
      b.setTool('erase');
      ev('pointerdown', 100, 100); ev('pointerup', 100, 100);
      const afterErase = b.getMask().data.reduce((a, v) => a + (v > 0), 0);
      b.undo();
      const afterUndo = b.getMask().data.reduce((a, v) => a + (v > 0), 0);
      b.redo(); b.undo();
      const enc = encodeMask(b.getMask().data, b.w, b.h, 64);
      const dec = decodeMask(enc);
      b.invert();
      const inverted = b.getMask().data.reduce((a, v) => a + (v > 0), 0);
      b.clear();
      return { painted, bb, soft, afterErase, afterUndo, enc, decW: dec.width, decH: dec.height,
               inverted, empty: b.isEmpty(), commits, total: m.width * m.height, w: m.width, h: m.height };
    }""")
    pg.close()
    assert res["w"] / res["h"] == pytest.approx(1.5, rel=0.01)
    assert 0 < res["painted"] < res["total"] and res["soft"]
    x0, y0, x1, y1 = res["bb"]  # the stroke went from (100, 200) to (300, 200) in image pixels
    assert 60 < x0 < 100 and 300 < x1 < 340 and 150 < y0 < 200 and 200 < y1 < 250
    assert res["afterErase"] < res["painted"] and res["afterUndo"] == res["painted"]
    assert res["decW"] == 64 and res["decH"] in (42, 43)
    assert res["inverted"] >= res["total"] - res["painted"]
    assert res["empty"] and res["commits"][:2] == ["stroke", "stroke"]
    assert {"undo", "redo", "invert", "clear"} <= set(res["commits"])


MAP_TILE_COLOUR = """(cell) => {
  // the mean colour in the middle of a tile on the map canvas (cell < 0: the cells by score)
  const M = window.vfs.MAP, T = M.info.tile, side = M.info.side, k = window.devicePixelRatio || 1;
  if (cell < 0)  // the cells by score, lowest first
    return Array.from(M.grid.keys()).filter((i) => M.grid[i] >= 0 && isFinite(M.scores[M.grid[i]]))
      .sort((a, b) => M.scores[M.grid[a]] - M.scores[M.grid[b]]);
  const col = cell % side, row = Math.floor(cell / side);
  const X = (M.view.tx + (col + 0.5) * T * M.view.s) * k, Y = (M.view.ty + (row + 0.45) * T * M.view.s) * k;
  const d = document.querySelector('#map-canvas').getContext('2d').getImageData(X - 2, Y - 2, 5, 5).data;
  const o = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) for (let c = 0; c < 3; c++) o[c] += d[i + c] / 25;
  return {cell, rgb: o};
}"""


def test_map_explain_overlap(map_server, page, map_cache):
    """Map tab: click a tile → a whole-image query runs and the map shows its scores; explain a
    result; compare two layers and see the shared top-k images."""
    small_cache = map_cache
    pg = page
    pg.goto(map_server)
    pg.wait_for_function("document.body.dataset.ready === '1'")
    pg.select_option("#choice", "small::blocks.10")
    pg.click("#view-tabs [data-view=map]")
    pg.wait_for_function("document.body.dataset.mapReady === '1'", timeout=20000)
    target = 3
    x, y = pg.evaluate("""(id) => {
      const M = window.vfs.MAP, ci = M.cellOf.get(id), T = M.info.tile, side = M.info.side;
      const r = document.querySelector('#map-canvas').getBoundingClientRect();
      return [r.left + M.view.tx + ((ci % side) + 0.5) * T * M.view.s, r.top + M.view.ty + (Math.floor(ci / side) + 0.5) * T * M.view.s];
    }""", target)
    pg.mouse.move(x, y)
    pg.wait_for_function("!document.querySelector('#map-tip').hidden && document.querySelector('#map-tip b')")
    assert small_cache.labels[target] in pg.inner_text("#map-tip")
    pg.screenshot(path=str(SHOTS / "map_hover.png"))
    n = searches(pg)
    pg.mouse.click(x, y)
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.S.query.id") == target and pg.evaluate("window.vfs.S.whole")
    # a tile click runs "similar images" (global), and the switch to the rigid mode is shown
    assert pg.evaluate("window.vfs.S.panes[0].ctx.query.mode") == "global"
    assert pg.locator("#q-mode").is_visible() and "on" in pg.get_attribute("#q-mode [data-wmode=global]", "class")
    pg.wait_for_function("window.vfs.MAP.scores !== null && window.vfs.MAP.top.size > 0")
    pg.wait_for_timeout(200)
    # the Results-only controls are not on the Map tab; the legend says what the outlines mean
    assert pg.locator("#r-controls").is_hidden() and pg.locator("#map-legend").is_visible()
    legend = pg.inner_text("#map-legend")
    assert "top 17" in legend and "query image" in legend and "score" in legend
    # scores dim low tiles with a neutral veil, no colour over the thumbnail: the middle of the
    # lowest-scoring tile keeps its colour, darker but readable (with the scores vs without)
    pg.click("#map-scores")
    off = next(c for c in (pg.evaluate(MAP_TILE_COLOUR, i) for i in pg.evaluate(MAP_TILE_COLOUR, -1))
               if min(c["rgb"]) > 50)  # the lowest-scoring tile that is bright there
    pg.click("#map-scores")
    on = pg.evaluate(MAP_TILE_COLOUR, off["cell"])
    ratios = [(a + 8) / (b + 8) for a, b in zip(on["rgb"], off["rgb"], strict=True)]
    assert 0.4 < min(ratios) and max(ratios) < 1.01 and max(ratios) / min(ratios) < 1.3, (on, off)
    # the tooltip of the rightmost tile stays inside the view
    xr, yr = pg.evaluate("""() => {
      const M = window.vfs.MAP, T = M.info.tile, side = M.info.side, r = document.querySelector('#map-canvas').getBoundingClientRect();
      let best = -1;
      for (let i = 0; i < M.grid.length; i++) if (M.grid[i] >= 0 && (best < 0 || i % side > best % side)) best = i;
      return [r.left + M.view.tx + ((best % side) + 0.8) * T * M.view.s, r.top + M.view.ty + (Math.floor(best / side) + 0.5) * T * M.view.s];
    }""")
    pg.mouse.move(xr, yr)
    pg.wait_for_function("!document.querySelector('#map-tip').hidden && document.querySelector('#map-tip b')")
    pg.wait_for_timeout(50)
    tip, stage = pg.locator("#map-tip").bounding_box(), pg.locator("#map-stage").bounding_box()
    assert tip["x"] >= stage["x"] and tip["x"] + tip["width"] <= stage["x"] + stage["width"] + 0.5
    pg.screenshot(path=str(SHOTS / "map_scores.png"))

    # linked views: a rank window dragged on the curve is highlighted on the map, and the strip
    # shows the same images
    drag(pg, "#dist-canvas", 0.3, 0.6)
    pg.wait_for_function("document.body.dataset.mapWindow && window.vfs.MAP.winCells"
                         " && document.querySelectorAll('#strip .mini').length > 0")
    lo, hi = (int(v) for v in pg.evaluate("document.body.dataset.mapWindow").split("-"))
    assert 0 < lo < hi
    on_map = set(pg.evaluate("Array.from(window.vfs.MAP.winCells, ci => window.vfs.MAP.grid[ci])"))
    want = pg.evaluate(f"""async () => {{
      const sid = window.vfs.S.activeCurve;
      const r = await (await fetch(`/api/searches/${{sid}}/window?start={lo}&stop={hi}&limit=60`)).json();
      return r.items.map(m => m.id);
    }}""")
    assert on_map == set(want) and len(on_map) == hi - lo
    strip = {int(v) for v in pg.eval_on_selector_all("#strip .mini", "els => els.map(e => e.dataset.id)")}
    assert strip <= on_map
    assert pg.locator("#map-win").is_visible() and f"{lo + 1}" in pg.inner_text("#map-win")
    pg.screenshot(path=str(SHOTS / "map_rank_window.png"))

    # explain the top result (exact: instant)
    pg.click("#view-tabs [data-view=results]")
    pg.click('.pane[data-pane="0"] .card >> nth=0')
    pg.click("#modal-explain")
    pg.wait_for_function("document.body.dataset.explained === 'exact'", timeout=20000)
    assert pg.locator(".explain-channels .chan").count() > 0
    # one dialog at a time: the large view steps aside while explain is open
    assert pg.locator("#modal").is_hidden()
    pg.wait_for_timeout(300)
    pg.screenshot(path=str(SHOTS / "explain_exact.png"))
    pg.keyboard.press("Escape")
    assert pg.locator("#explain").is_hidden() and pg.locator("#modal").is_visible()
    pg.keyboard.press("Escape")

    # compare two layers: the shared top-k images are counted and outlined
    n = searches(pg)
    pg.select_option("#k", "12")
    wait_search(pg, n + 1)
    pg.select_option("#compare", "small::blocks.15")
    wait_search(pg, n + 2)
    pg.wait_for_function("document.body.dataset.overlap !== undefined")
    shared = int(pg.evaluate("document.body.dataset.overlap"))
    ids = [{m["id"] for m in pg.evaluate(f"window.vfs.S.panes[{i}].matches.map(m => ({{id: m.id}}))")} for i in (0, 1)]
    assert shared == len(ids[0] & ids[1])
    assert 0 < shared < 12
    assert pg.locator('.pane[data-pane="0"] .card.shared').count() == shared
    assert pg.locator('.pane[data-pane="1"] .card.shared').count() == shared
    pg.screenshot(path=str(SHOTS / "compare_overlap.png"))


SNAPSHOT = """() => {
  // what a share link must reproduce: the query's cells and weights, the results (rank, id,
  // score), and the mask itself (its size, a hash of its values, how many levels it has)
  const p = window.vfs.S.panes[0], q = p.ctx.query, m = window.vfs.brush.getMask();
  let h = 0;
  for (let i = 0; i < m.data.length; i++) h = (Math.imul(h, 31) + m.data[i] * (i + 1)) | 0;
  return {mode: q.mode, cell_box: q.cell_box, n_cells: q.n_cells, weights: q.weights,
          matches: p.matches.map(x => [x.rank, x.id, x.score]), mask: [m.width, m.height, h],
          levels: new Set(m.data).size};
}"""


def copy_link(pg) -> str:
    """Press "Copy link" and read the link back from the clipboard."""
    pg.evaluate("navigator.clipboard.writeText('')")
    pg.click("#share")
    pg.wait_for_function("navigator.clipboard.readText().then(t => t.includes('#'))")
    return pg.evaluate("navigator.clipboard.readText()")


def test_share_link_is_exact(server, page, small_cache):
    """A link restores the brushed mask losslessly: reloaded (or pasted into the open tab) it gives
    the same cells, weights and results, bit for bit; a whole-image link its mode."""
    pg = page
    pg.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.rstrip("/"))
    pg.goto(server)
    pg.wait_for_selector("body[data-ready='1']")
    astro = next(i for i, p in enumerate(small_cache.paths) if str(p).startswith("astronaut/"))
    cat = next(i for i, p in enumerate(small_cache.paths) if str(p).startswith("cat/"))
    pg.click(f"#ds-grid .thumb[data-id='{astro}']")
    pg.wait_for_function(f"window.vfs.S.query && window.vfs.S.query.id === {astro}")
    stroke(pg, [(190, 110), (300, 130), (270, 180), (200, 200)])  # a soft brush: 256 levels
    wait_search(pg, 1)
    first = pg.evaluate(SNAPSHOT)
    assert first["levels"] > 16 and first["n_cells"] > 0  # more than the old 16-level code kept
    link1 = copy_link(pg)
    assert "mz=" in link1 and f"i={astro}" in link1

    pg.click(f"#ds-grid .thumb[data-id='{cat}']")
    pg.wait_for_function(f"window.vfs.S.query.id === {cat}")
    w, h = pg.evaluate("window.vfs.S.query.size")
    stroke(pg, [(w * 0.3, h * 0.35), (w * 0.62, h * 0.4), (w * 0.5, h * 0.62)])
    wait_search(pg, 2)
    second = pg.evaluate(SNAPSHOT)
    link2 = copy_link(pg)

    # pasted into the open tab (a hash change): the first query comes back exactly
    n = searches(pg)
    pg.evaluate("(h) => { location.hash = h; }", link1.split("#", 1)[1])
    wait_search(pg, n + 1)
    assert pg.evaluate(SNAPSHOT) == first
    # a reload of it, too
    pg.reload()
    wait_search(pg, 1)
    assert pg.evaluate(SNAPSHOT) == first
    # and the second link in a fresh tab
    pg2 = pg.context.new_page()
    pg2.on("pageerror", lambda e: pg.problems.append(f"page error (2): {e}"))
    pg2.goto(link2)
    wait_search(pg2, 1)
    assert pg2.evaluate(SNAPSHOT) == second
    pg2.close()

    # a whole-image query: "similar images" is in the link, and comes back as such
    n = searches(pg)
    pg.click("#whole")
    wait_search(pg, n + 1)
    whole = pg.evaluate(SNAPSHOT)
    assert whole["mode"] == "global"
    link3 = copy_link(pg)
    assert "w=g" in link3
    pg.goto(link3)
    pg.reload()
    wait_search(pg, 1)
    got = pg.evaluate(SNAPSHOT)
    assert got["mode"] == "global" and got["matches"] == whole["matches"]


def test_query_modes_and_layout(server, page, small_cache):
    """Whole = similar images with a visible switch to the rigid mode (the toolbar shows one active
    query); a global query's heat maps; the query's notes; the spread panel folds; compare at
    1280 px keeps three cards a row; the Map tab offers computing a missing map."""
    pg = page
    pg.set_viewport_size({"width": 1280, "height": 800})
    pg.goto(server)
    pg.wait_for_selector("body[data-ready='1']")
    astro = next(i for i, p in enumerate(small_cache.paths) if str(p).startswith("astronaut/"))
    pg.click(f"#ds-grid .thumb[data-id='{astro}']")
    pg.wait_for_function(f"window.vfs.S.query && window.vfs.S.query.id === {astro}")
    assert pg.locator("#q-mode").is_hidden()
    # box tool, then Whole: the whole-image query is the active one, the box only the next tool
    pg.click("[data-tool=box]")
    pg.click("#whole")
    wait_search(pg, 1)
    assert pg.evaluate("window.vfs.S.panes[0].ctx.query.mode") == "global"
    assert "on" in pg.get_attribute("#whole", "class") and pg.locator("#q-mode").is_visible()
    box_bg = pg.evaluate("getComputedStyle(document.querySelector('[data-tool=box]')).backgroundColor")
    whole_bg = pg.evaluate("getComputedStyle(document.querySelector('#whole')).backgroundColor")
    assert box_bg != whole_bg and box_bg in ("rgba(0, 0, 0, 0)", "transparent"), (box_bg, whole_bg)
    assert "similar images" in pg.inner_text("#q-meta")
    # a global query's heat maps are per-cell shares (windows of one cell)
    pg.click("#overlay-mode [data-mode='heat']")
    pg.wait_for_selector(".pane[data-pane='0'] .card[data-drawn='heat'] >> nth=3")
    assert pg.evaluate("window.vfs.S.panes[0].ctx.heatBox") == [0, 0, 1, 1]
    pg.click("#overlay-mode [data-mode='region']")
    # the switch to the paper's rigid mode
    n = searches(pg)
    pg.click("#q-mode [data-wmode=whole]")
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.S.panes[0].ctx.query.mode") == "whole"
    pg.wait_for_function("location.hash.includes('w=1')")

    # a stroke partly outside the model's view (left of the centre crop): the query's note
    w, h = pg.evaluate("window.vfs.S.query.size")
    crop = pg.evaluate("window.vfs.S.query.geometry.crop")
    assert crop[0] > 0.04 * w
    pg.click("[data-tool=paint]")
    n = searches(pg)
    stroke(pg, [(w * 0.01, h * 0.3), (w * 0.02, h * 0.5), (w * 0.12, h * 0.55)])
    wait_search(pg, n + 1)
    assert pg.evaluate("window.vfs.S.panes[0].ctx.query.mode") == "region"
    assert pg.locator("#q-mode").is_hidden()
    assert pg.locator("#q-notes").is_visible() and "outside" in pg.inner_text("#q-notes")

    # the spread panel folds and unfolds
    assert pg.locator(".pane[data-pane='0'] .spread").is_visible()
    pg.click(".pane[data-pane='0'] .spread-title")
    assert pg.locator(".pane[data-pane='0'] .spread").count() == 0
    assert pg.get_attribute(".pane[data-pane='0'] .spread-title", "aria-expanded") == "false"
    pg.click(".pane[data-pane='0'] .spread-title")
    assert pg.locator(".pane[data-pane='0'] .spread").is_visible()

    # compare at 1280 px: three cards a row in each pane, a one-row title over a stats line
    n = searches(pg)
    pg.select_option("#compare", "small::blocks.10")
    wait_search(pg, n + 1)
    pg.wait_for_selector(".pane[data-pane='1'] .card >> nth=5")
    pg.wait_for_timeout(100)
    for pi in (0, 1):
        tops = pg.eval_on_selector_all(f".pane[data-pane='{pi}'] .card", "els => els.slice(0, 6).map(e => e.getBoundingClientRect().top)")
        assert tops[0] == tops[1] == tops[2], tops
        head = pg.locator(f".pane[data-pane='{pi}'] .pane-head").bounding_box()
        assert head["height"] < 46, head
    pg.screenshot(path=str(SHOTS / "compare_1280.png"))

    # no map for this cache yet: the Map tab offers to compute it (and hides the results' controls)
    pg.click("#view-tabs [data-view=map]")
    pg.wait_for_selector("#map-compute-empty")
    assert pg.locator("#map-compute-empty").is_visible() and pg.locator("#r-controls").is_hidden()
    assert pg.locator("#map-fit").is_hidden()
    pg.screenshot(path=str(SHOTS / "map_missing.png"))


# -- a 50,000-image map: load time and pan/zoom steps ----------------------------------------------

BIG_N = 50_000


@pytest.fixture(scope="module")
def big_map_cache(tmp_path_factory):
    """50,000 rows (tiny feature maps; one of eight small JPEG thumbnails each) with a stored map
    (images of a label in one block of the grid) and its real thumbnail atlas."""
    import io

    from vfsearch import open_cache
    from vfsearch.cache import INDEXED, synthetic_cache
    from vfsearch.embed import MapResult, _store, build_atlas

    path = tmp_path_factory.mktemp("bigmap") / "c"
    w = synthetic_cache(path, BIG_N, layer="conv5", channels=8, grid=(2, 2), dtype="f16")
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(8):
        small = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((64, 48), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=70)
        jpegs.append(buf.getvalue())
    lab = np.arange(BIG_N) % 8
    feats = rng.standard_normal((8, 2, 2, 8)).astype(np.float16)
    w.write_block(0, features={"conv5": feats[lab].astype(np.float32)},
                  thumb=[jpegs[v] for v in lab], label=[f"class{v}" for v in lab],
                  path=[f"img_{i:05d}.jpg" for i in range(BIG_N)],
                  size=np.tile(np.array([[64, 48]], np.int32), (BIG_N, 1)), status=INDEXED)
    c = open_cache(path)
    side = int(np.ceil(np.sqrt(BIG_N)))
    order = np.argsort(lab, kind="stable")  # grid cells in label order: one block per label
    cell = np.empty((BIG_N, 2), np.int32)
    cell[order, 0], cell[order, 1] = np.arange(BIG_N) % side, np.arange(BIG_N) // side
    m = MapResult(layer="conv5", method="tsne", seed=0, side=side, xy=cell.astype(np.float32),
                  cell=cell, attrs={"side": side, "n": BIG_N, "rows": BIG_N, "method": "tsne",
                                    "layer": "conv5", "fingerprint": c.fingerprint()})
    _store(c, m)
    build_atlas(c, m, progress=False)
    return open_cache(path)


@pytest.mark.timeout(300)
def test_map_of_50k_images_loads_and_pans(big_map_cache, page):
    """The map of 50,000 images loads every atlas page, zooms and pans, and a click on a tile runs
    a query. Prints the load time and the time of a pan / zoom step next to an empty frame (headless
    chromium renders in software: the figures are relative)."""
    import json

    gen = _serve(big_map_cache)
    url = next(gen)
    try:
        pg = page
        pg.goto(url)
        pg.wait_for_function("document.body.dataset.ready === '1'")
        t0 = time.perf_counter()
        pg.click("#view-tabs [data-view=map]")
        pg.wait_for_function("document.body.dataset.mapReady === '1'", timeout=60000)
        wall_ms = (time.perf_counter() - t0) * 1000
        timing = pg.evaluate("window.vfs.MAP.timing")
        assert timing["images"] == BIG_N and timing["pages"] == pg.evaluate("window.vfs.MAP.info.pages")
        assert pg.evaluate("window.vfs.MAP.pages.every(p => p && p.naturalWidth > 0)")
        # one frame with nothing changed, then zoom and pan steps, each timed to the frame after it
        steps = pg.evaluate("""async () => {
          const stage = document.querySelector('#map-stage'), r = stage.getBoundingClientRect();
          const frame = () => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)));
          const cx = r.left + r.width / 2, cy = r.top + r.height / 2, out = {idle: [], zoom: [], pan: []};
          const M = window.vfs.MAP, s0 = M.view.s;
          for (let i = 0; i < 10; i++) { const t = performance.now(); await frame(); out.idle.push(performance.now() - t); }
          for (let i = 0; i < 12; i++) {
            const t = performance.now();
            stage.dispatchEvent(new WheelEvent('wheel', {clientX: cx, clientY: cy, deltaY: i < 8 ? -120 : 60, bubbles: true, cancelable: true}));
            await frame(); out.zoom.push(performance.now() - t);
          }
          out.zoomed = M.view.s / s0;
          const o = {pointerId: 1, bubbles: true, clientX: cx, clientY: cy, button: 0, buttons: 1};
          stage.dispatchEvent(new PointerEvent('pointerdown', o));
          const tx0 = M.view.tx;
          for (let i = 1; i <= 12; i++) {
            const t = performance.now();
            stage.dispatchEvent(new PointerEvent('pointermove', {...o, clientX: cx + 15 * i, clientY: cy + 6 * i}));
            await frame(); out.pan.push(performance.now() - t);
          }
          stage.dispatchEvent(new PointerEvent('pointerup', {...o, clientX: cx + 180, clientY: cy + 72, buttons: 0}));
          out.panned = M.view.tx - tx0;
          out.draw = M.draws.slice(-24);
          return out;
        }""")
        assert steps["zoomed"] > 2 and abs(steps["panned"] - 180) < 1

        def med(v):
            return float(np.median(v))

        report = {"images": BIG_N, "pages": timing["pages"], "load_ms": round(timing["ready_ms"]),
                  "map_info_ms": round(timing["info_ms"]), "tab_click_to_ready_ms": round(wall_ms),
                  "idle_frame_ms": round(med(steps["idle"]), 1),
                  "zoom_step_ms": round(med(steps["zoom"]), 1), "pan_step_ms": round(med(steps["pan"]), 1),
                  "drawMap_ms": round(med(steps["draw"]), 1)}
        report["zoom_step_vs_idle_frame"] = round(report["zoom_step_ms"] / max(report["idle_frame_ms"], 1e-3), 2)
        report["pan_step_vs_idle_frame"] = round(report["pan_step_ms"] / max(report["idle_frame_ms"], 1e-3), 2)
        print("\n50k map in headless chromium: " + json.dumps(report))
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS.parent / "map_50k_timing.json").write_text(json.dumps(report, indent=1))
        pg.screenshot(path=str(SHOTS / "map_50k_zoomed.png"))
        # a click on a tile starts a whole-image query of that image
        n = searches(pg)
        x, y = pg.evaluate("""() => {
          const M = window.vfs.MAP, r = document.querySelector('#map-canvas').getBoundingClientRect();
          return [r.left + r.width / 2, r.top + r.height / 2];
        }""")
        pg.mouse.click(x, y)
        wait_search(pg, n + 1)
        assert pg.evaluate("window.vfs.S.whole")
        qid = pg.evaluate("window.vfs.S.query.id")
        ci = pg.evaluate(f"window.vfs.MAP.cellOf.get({qid})")
        assert ci is not None and 0 <= ci < pg.evaluate("window.vfs.MAP.grid.length")
    finally:
        next(gen, None)


# -- a full-mode cache: padded grids, portraits turned --------------------------------------------


@pytest.fixture(scope="module")
def full_server(tmp_path_factory):
    """A cache in index mode full: a 2:1 panorama, its right half, a portrait and a landscape."""
    from vfsearch import index
    from vfsearch.datasets import _FILES, _source_dir

    d = tmp_path_factory.mktemp("full_imgs")
    photo = lambda n: Image.open(_source_dir() / _FILES[n]).convert("RGB")  # noqa: E731
    cat = photo("cat").resize((512, 512))
    pano = Image.new("RGB", (1024, 512))
    pano.paste(photo("astronaut").resize((512, 512)), (0, 0))
    pano.paste(cat, (512, 0))
    pano.save(d / "a_pano.png")
    cat.save(d / "b_half.png")
    photo("coffee").transpose(Image.Transpose.ROTATE_90).save(d / "c_portrait.png")
    photo("coffee").save(d / "d_coffee.png")
    c = index(d, tmp_path_factory.mktemp("full_cache") / "c", mode="full", layers=["blocks.10"],
              workers=0, progress=False).cache
    yield from _serve(c)


def test_full_mode_cache_in_the_page(full_server, page):
    """A portrait's query grid is its own (turned) one, a stroke at its bottom border searches,
    heat maps draw on each result's own grid, and a match is boxed at the panorama's border."""
    pg = page
    pg.goto(full_server)
    pg.wait_for_selector("body[data-ready='1']")
    pg.click("#ds-grid .thumb[data-id='2']")  # the portrait
    pg.wait_for_function("window.vfs.S.query && window.vfs.S.query.id === 2")
    grid = pg.evaluate("window.vfs.S.query.geometry.cells['blocks.10']")
    assert (grid["rows"], grid["cols"]) == (24, 16) and grid["box"] == [0, 0, 400, 600]
    w, h = pg.evaluate("window.vfs.S.query.size")
    pg.click("[data-tool=paint]")
    n = searches(pg)
    stroke(pg, [(w * 0.3, h * 0.97), (w * 0.5, h * 0.99), (w * 0.7, h * 0.97)])
    wait_search(pg, n + 1)
    err = pg.evaluate("window.vfs.S.panes[0].error && String(window.vfs.S.panes[0].error.message)")
    assert not err, err
    q = pg.evaluate("window.vfs.S.panes[0].ctx.query")
    assert q["grid"] == [32, 16] and q["cell_box"][0] + q["cell_box"][2] == 24  # the last row
    pg.click("#overlay-mode [data-mode='heat']")
    pg.wait_for_selector(".pane[data-pane='0'] .card[data-drawn='heat'] >> nth=2")
    pg.screenshot(path=str(SHOTS / "full_mode_heat.png"))
    pg.click("#overlay-mode [data-mode='region']")
    # the right half found in the panorama's right half
    pg.click("#ds-grid .thumb[data-id='1']")
    pg.wait_for_function("window.vfs.S.query && window.vfs.S.query.id === 1")
    n = searches(pg)
    pg.click("[data-tool=box]")
    a, b = image_to_page(pg, 8, 8), image_to_page(pg, 504, 504)
    pg.mouse.move(*a)
    pg.mouse.down()
    pg.mouse.move(*b, steps=6)
    pg.mouse.up()
    wait_search(pg, n + 1)
    top = pg.evaluate("window.vfs.S.panes[0].matches[0]")
    assert top["id"] == 0 and top["box"][0] >= 480 and abs(top["box"][2] - 1024) <= 16
    pg.screenshot(path=str(SHOTS / "full_mode_border.png"))
