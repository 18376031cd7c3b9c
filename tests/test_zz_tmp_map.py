import shutil, time
from test_browser import browser, page, _serve, SHOTS  # noqa
import pytest


@pytest.fixture(scope="module")
def fresh(small_cache, tmp_path_factory):
    from vfsearch import open_cache
    dst = tmp_path_factory.mktemp("fresh") / "c"
    shutil.copytree(small_cache.path, dst)
    yield from _serve(open_cache(dst))


def test_compute_flow(fresh, page):
    pg = page
    pg.goto(fresh)
    pg.wait_for_function("document.body.dataset.ready === '1'")
    pg.click("#view-tabs [data-view=map]")
    pg.wait_for_selector("#map-compute-empty")
    pg.screenshot(path=str(SHOTS / "map_missing.png"))
    t = time.time()
    pg.click("#map-compute-empty")
    pg.wait_for_function("document.body.dataset.mapReady === '1'", timeout=60000)
    print("compute took", time.time() - t)
    # zoom in with the wheel and pan
    b = pg.locator("#map-canvas").bounding_box()
    pg.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    s0 = pg.evaluate("window.vfs.MAP.view.s")
    pg.mouse.wheel(0, -400)
    pg.wait_for_timeout(100)
    assert pg.evaluate("window.vfs.MAP.view.s") > s0
    pg.mouse.down(); pg.mouse.move(b["x"] + b["width"] / 2 + 100, b["y"] + b["height"] / 2 + 50, steps=5); pg.mouse.up()
    pg.wait_for_timeout(100)
    assert pg.evaluate("window.vfs.S.query") is None  # a drag is not a click
    pg.screenshot(path=str(SHOTS / "map_zoomed.png"))
