"""HighlightWidget end to end: JupyterLab (token-less, 127.0.0.1) in headless Debian chromium;
draw a stroke on the widget's canvas and check that the kernel's ``widget.mask`` becomes non-zero.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian chromium at /usr/bin/chromium", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    pytest.skip("needs the python 'playwright' package", allow_module_level=True)
pytest.importorskip("jupyterlab", reason="needs jupyterlab (pip install jupyterlab)")
pytest.importorskip("anywidget", reason="needs anywidget")
pytest.importorskip("ipykernel", reason="needs ipykernel")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

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
    OUT.write_text(f"{{m.max()}} {{m.shape[0]}} {{m.shape[1]}}")

w.observe(_saved, names="mask_data")
w'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter_config"),
           "JUPYTER_RUNTIME_DIR": str(root / ".jupyter_runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.token=",
           "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"]
    log = open(root / "lab.log", "wb")
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
    log.close()


def test_highlight_widget_stroke_reaches_python(lab):
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
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')",
                                   timeout=60_000)
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
