"""The Jupyter widgets' Python side (mask decoding, search on mask change, static gallery) and the
example notebooks, executed headless."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("anywidget", reason="the widgets need anywidget (pip install anywidget)")
pytest.importorskip("ipywidgets", reason="the widgets need ipywidgets")

from conftest import photo

from vfsearch import search
from vfsearch.errors import BadMask, BadParameter
from vfsearch.widget import (
    BRUSH_JS_PATH,
    HighlightWidget,
    MultiHighlightWidget,
    SearchWidget,
    decode_mask,
    results_html,
    show,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


# -- mask decoding ---------------------------------------------------------------------------------


def test_decode_raw_mask_resizes_to_image_resolution():
    small = np.zeros((30, 40), np.uint8)
    small[10:20, 0:20] = 255
    m = decode_mask(small.tobytes(), 40, 30, size=(320, 240))
    assert m.shape == (240, 320) and m.dtype == np.float32
    assert m[120, 50] == pytest.approx(1.0) and m[10, 300] == 0.0
    assert 0.0 <= m.min() and m.max() <= 1.0
    assert decode_mask(b"", 0, 0) is None
    with pytest.raises(BadMask):
        decode_mask(b"\x00" * 10, 4, 4)


def test_decode_png_mask():
    small = np.zeros((24, 32), np.uint8)
    small[:, 16:] = 128
    m = decode_mask(_png(small), size=(64, 48))
    assert m.shape == (48, 64)
    assert m[24, 60] == pytest.approx(128 / 255, abs=1e-3) and m[24, 2] == 0.0


def test_highlight_widget_mask_from_browser_bytes():
    img = photo(320, 240)
    w = HighlightWidget(img)
    assert w.image_size == (320, 240)
    assert w.mask.shape == (240, 320) and not w.mask.any() and w.is_empty()
    # the browser sends the brush's mask (display resolution) as raw uint8
    small = np.zeros((120, 160), np.uint8)
    small[30:90, 40:120] = 200
    w.mask_width, w.mask_height = 160, 120
    w.mask_data = small.tobytes()
    m = w.mask
    assert m.shape == (240, 320) and m.dtype == np.float32
    assert m[120, 160] == pytest.approx(200 / 255, abs=1e-3) and m[5, 5] == 0.0
    assert not w.is_empty()
    # as the comm delivers it: a binary buffer (memoryview) through the widget's state
    small[:] = 0
    small[0:10, 0:10] = 255
    w.set_state({"mask_width": 160, "mask_height": 120, "mask_data": memoryview(small.tobytes())})
    assert isinstance(w.mask_data, bytes)
    assert w.mask[5, 5] == pytest.approx(1.0) and w.mask[120, 160] == 0.0
    # the image goes to the browser as JPEG bytes, and the shared brush module as text
    assert bytes(w.image_data[:2]) == b"\xff\xd8"
    assert w._brush_js == BRUSH_JS_PATH.read_text(encoding="utf-8")
    assert "export class Brush" in w._brush_js


def test_highlight_widget_inputs_and_python_side_edits(tmp_path):
    arr = np.asarray(photo(200, 100))
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    for src in (arr, p, str(p), Image.fromarray(arr)):
        assert HighlightWidget(src).image_size == (200, 100)
    w = HighlightWidget(arr)
    w.set_box((50, 20, 150, 80))
    m = w.mask
    assert m[50, 100] == pytest.approx(1.0) and m[5, 5] == 0.0
    w.clear()
    assert not w.mask.any() and w.is_empty()
    # the widget sends the web app's own brush.js to the browser (one brush for both surfaces;
    # the JupyterLab test below drives it)
    from vfsearch.widget import BRUSH_JS_PATH

    assert w._brush_js == BRUSH_JS_PATH.read_text(encoding="utf-8")
    assert BRUSH_JS_PATH.parent.name == "static"


def test_multi_highlight_widget():
    mw = MultiHighlightWidget([photo(120, 80, seed=1), photo(64, 64, seed=2)])
    assert len(mw) == 2
    mw[1].set_box((0, 0, 32, 32))
    masks = mw.masks
    assert [m.shape for m in masks] == [(80, 120), (64, 64)]
    assert not masks[0].any() and masks[1][10, 10] == pytest.approx(1.0)


# -- search widget / gallery -----------------------------------------------------------------------


def test_search_widget_searches_when_mask_changes(small_cache):
    sw = SearchWidget(small_cache, k=4, query=0)
    assert sw.results is None
    W, H = small_cache.image_size(0)
    assert sw.brush.image_size == (W, H)
    # what the browser does at the end of a stroke: set the mask traitlet (raw uint8)
    mw, mh = 64, max(1, round(64 * H / W))
    small = np.zeros((mh, mw), np.uint8)
    small[mh // 4: 3 * mh // 4, mw // 4: 3 * mw // 4] = 255
    with sw.brush.hold_sync():
        sw.brush.mask_width, sw.brush.mask_height = mw, mh
        sw.brush.mask_data = small.tobytes()
    res = sw.results
    assert res is not None and len(res) == 4, sw.error
    assert res.scores is not None and 0 not in res.ids
    ref = search(small_cache, 0, mask=sw.brush.mask, k=4)
    assert res.ids.tolist() == ref.ids.tolist()
    assert all(f"data-id='{i}'" in sw.gallery.value for i in res.ids)
    assert "<svg" in sw.gallery.value  # the sorted-score curve
    # changing k re-runs; picking another query resets the mask and results
    sw.k_box.value = 2
    assert len(sw.results) == 2
    sw.picker.value = 3
    assert sw.results is None and sw.brush.is_empty()
    assert sw.brush.image_size == tuple(small_cache.image_size(3))
    # an empty mask runs no search
    with sw.brush.hold_sync():
        sw.brush.mask_width, sw.brush.mask_height = mw, mh
        sw.brush.mask_data = bytes(mw * mh)
    assert sw.results is None


def test_search_widget_layer(small_cache):
    sw = SearchWidget(small_cache, layer="blocks.10", k=3, query=1)
    W, H = small_cache.image_size(1)
    sw.brush.set_box((0, 0, W / 2, H / 2))
    assert sw.results is not None and sw.results.query.layer == "blocks.10"


def test_search_widget_explains_a_result(small_cache):
    sw = SearchWidget(small_cache, k=3, query=0)
    assert sw.explain_button.disabled and sw.explain_pick.options == ()
    W, H = small_cache.image_size(0)
    sw.brush.set_box((W * 0.2, H * 0.2, W * 0.6, H * 0.6))
    assert sw.results is not None, sw.error
    assert [v for _, v in sw.explain_pick.options] == [1, 2, 3]  # ranks: 1 = the best
    assert not sw.explain_button.disabled
    ex = sw.explain(2, "exact", wait=True).result()
    assert sw.explanation is ex and ex.result_id == sw.results[1].id
    assert sum(c["share"] for c in ex.extra["cell_shares"]) == pytest.approx(ex.score, abs=1e-5)
    assert ex.score == pytest.approx(sw.results[1].score, abs=1e-4)
    view = sw.explain_view.value
    assert view.count("data:image/png;base64,") == 2  # heat over the query and over the result
    assert f"result #{ex.result_id}" in view and "channel" in view
    # a model-running method runs in the background thread, with progress, then shows its AUCs
    fut = sw.explain(1, "rise", n_masks=16, batch_size=8, auc_steps=4)
    rise = fut.result(timeout=300)
    assert rise.method == "rise" and rise.result_id == sw.results[0].id
    assert sw.explanation is rise and rise.insertion_auc is not None
    assert "insertion AUC" in sw.explain_view.value
    assert sw.explain_progress.value == pytest.approx(1.0)
    assert sw.explain_progress.layout.visibility == "hidden" and not sw.explain_button.disabled
    # an error is shown in the view (and raised to Python)
    with pytest.raises(Exception, match="mode"):
        sw.explain(1, "occlusion", mode="sideways", wait=True)
    assert "mode" in sw.explain_view.value and "color:#b00" in sw.explain_view.value
    # new results drop the old explanation
    sw.k_box.value = 2
    assert sw.explanation is None and sw.explain_view.value == ""
    assert len(sw.explain_pick.options) == 2
    for bad in (0, 3):
        with pytest.raises(ValueError):
            sw.explain(bad, "exact")
    with pytest.raises(BadParameter):
        sw.explain(1, "no-such-method")


def test_show_html_contains_results(small_cache):
    W, H = small_cache.image_size(0)
    res = search(small_cache, 0, box=(0, 0, W * 0.6, H * 0.6), k=5, return_scores=True)
    h = show(res)
    from IPython.display import HTML

    assert isinstance(h, HTML)
    text = h.data
    assert text == results_html(res)
    ids = [int(v) for v in re.findall(r"data-id='(\d+)'", text)]
    assert ids == res.ids.tolist()
    for m in res:
        assert f"#{m.id}" in text and f"{m.score:.3f}" in text and m.label in text
    assert text.count("data:image/jpeg;base64,") == len(res) + 1  # + the query
    assert text.count("border:2px solid") == len(res) + 1  # a box per match and the query
    assert "<svg" in text
    # without all scores: no curve, still renders
    assert "<svg" not in results_html(search(small_cache, 0, box=(0, 0, W / 2, H / 2), k=2))


# -- notebooks -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["quickstart", "compare_layers", "experiments"])
def test_notebook_runs(name):
    nbformat = pytest.importorskip("nbformat", reason="pip install nbclient ipykernel")
    nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel")
    pytest.importorskip("ipykernel", reason="pip install nbclient ipykernel")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on any failing cell / assertion
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


# -- in JupyterLab + headless chromium -------------------------------------------------------------
# HighlightWidget end to end: JupyterLab (token-less, 127.0.0.1) in headless Debian chromium; draw a
# stroke on the widget's canvas and check that the kernel's ``widget.mask`` becomes non-zero.

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

CELL = '''import pathlib
import numpy as np
from PIL import Image
from vfsearch.widget import HighlightWidget

OUT = pathlib.Path({out!r})
img = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 255).astype("uint8"))
w = HighlightWidget(img, display_width=320)

def _saved(change):
    m = w.mask
    tmp = OUT.with_suffix(".tmp")  # written whole, then renamed: the test never reads it half-done
    tmp.write_text(f"{{m.max()}} {{m.shape[0]}} {{m.shape[1]}}")
    tmp.replace(OUT)

w.observe(_saved, names="mask_data")
w'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api", reason="needs the python 'playwright' package")
    pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install jupyterlab)")
    pytest.importorskip("ipykernel", reason="needs ipykernel")
    root = tmp_path_factory.mktemp("lab")
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter_config"),
           "JUPYTER_RUNTIME_DIR": str(root / ".jupyter_runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"]
    with open(root / "lab.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    t = time.time()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() - t > 60:
            proc.kill()
            pytest.fail("jupyterlab did not start: " + (root / "lab.log").read_text()[-2000:])
        time.sleep(0.3)
    yield url, root
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_highlight_widget_stroke_reaches_python(lab):
    from playwright.sync_api import sync_playwright

    url, root = lab
    out = root / "mask.txt"
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": CELL.format(out=str(out))}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (root / "w.ipynb").write_text(json.dumps(nb))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/lab/tree/w.ipynb")
            page.wait_for_function(
                "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=60_000)
            # wait until the kernel is up, then run the cell
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'; }", timeout=60_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_selector(".vfs-hw canvas", timeout=60_000)
            page.wait_for_selector("[data-ready='1'] .vfs-hw canvas", timeout=30_000)
            canvas = page.locator(".vfs-hw canvas").first
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            assert box and box["width"] > 100, box
            x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5
            page.mouse.move(x, y)
            page.mouse.down()
            for i in range(1, 11):
                page.mouse.move(x + i * box["width"] * 0.04, y + i * 2)
            page.mouse.up()
            t = time.time()
            while not out.exists() and time.time() - t < 30:
                time.sleep(0.2)
            assert out.exists(), f"the mask never reached the kernel; page errors: {errors}"
            mx, h, w = out.read_text().split()
            assert float(mx) > 0.5 and (int(h), int(w)) == (240, 320)
        finally:
            browser.close()
