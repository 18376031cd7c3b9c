"""The Concepts tab end to end in headless chromium: stored concepts as rows of patches, the label
filter, a click searches the concept (results, its sheet as the query, the curve and a rank
window), and the offer to compute concepts that are not stored (method, progress, the rows).

Screenshots go to artifacts/screenshots/concepts_*.png.
"""

from __future__ import annotations

import shutil

import pytest
from test_browser import SHOTS, _serve, browser, page, searches, wait_search  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

N_CONCEPTS = 6


@pytest.fixture(scope="module")
def concepts_cache(small_cache, tmp_path_factory):
    """A copy of the shared cache with dictionary concepts of its default layer stored (other
    tests expect the shared one to have none)."""
    from vfsearch import open_cache
    from vfsearch.concepts import discover

    dst = tmp_path_factory.mktemp("conceptcache") / "c"
    shutil.copytree(small_cache.path, dst)
    c = open_cache(dst, image_root=small_cache.image_root)
    discover(c, c.default_layer, "dictionary", n_concepts=N_CONCEPTS)
    return c


@pytest.fixture(scope="module")
def concepts_server(concepts_cache):
    yield from _serve(concepts_cache)


def test_concepts_tab_search_and_compute(concepts_server, page, concepts_cache):  # noqa: F811
    from vfsearch.concepts import load_concepts

    c = concepts_cache
    cs = load_concepts(c, c.default_layer, "dictionary")
    pg = page
    pg.goto(concepts_server)
    pg.wait_for_function("document.body.dataset.ready === '1'")
    pg.click("#view-tabs [data-view=concepts]")
    pg.wait_for_function(f"document.querySelectorAll('#cn-list .cn-row').length === {N_CONCEPTS}")
    assert pg.evaluate("document.body.dataset.view") == "concepts"
    assert pg.locator("#r-controls").is_hidden() and pg.locator("#panes").is_hidden()
    # each row: its size, its patches' labels, its patches cut from the thumbnails
    pg.wait_for_function("document.querySelectorAll('#cn-list .cn-patch[data-drawn]').length >= 12")
    first = pg.locator("#cn-list .cn-row").first
    assert f"{int(cs.sizes[0]):,} cells" in first.inner_text()
    assert first.locator(".cn-patch").count() == min(12, len(cs.patches(0)))
    pg.screenshot(path=str(SHOTS / "concepts_tab.png"))

    # the label filter keeps the concepts with patches of that label, most of them first
    label = str(c.labels[cs.patches(0, c)[0]["id"]])
    with_label = [k for k in range(len(cs)) if any(p["label"] == label for p in cs.patches(k, c))]
    pg.select_option("#cn-label", label)
    pg.wait_for_function(f"document.querySelector('#cn-list').dataset.shown == {len(with_label)}")
    shown = [int(v) for v in pg.eval_on_selector_all("#cn-list .cn-row",
                                                     "rs => rs.map(r => r.dataset.concept)")]
    assert sorted(shown) == with_label
    assert f"{len(with_label)} with {label}" in pg.inner_text("#cn-info")
    # patches of other labels are dimmed
    dims = pg.eval_on_selector_all(f"#cn-list .cn-row[data-concept='{shown[0]}'] .cn-patch",
                                   "cs => cs.map(c => c.classList.contains('dim'))")
    k = shown[0]
    labs = [p["label"] for p in cs.patches(k, c)[:len(dims)]]
    assert dims == [lab != label for lab in labs]

    # click a concept: it is the query (its sheet over the stage), the results are its matches
    n = searches(pg)
    pg.click(f"#cn-list .cn-row[data-concept='{k}']")
    wait_search(pg, n + 1)
    assert pg.evaluate("document.body.dataset.view") == "results"
    assert pg.locator("#panes").is_visible()
    q = pg.evaluate("window.vfs.S.panes[0].ctx.query")
    assert q["concept"]["id"] == k and q["concept"]["method"] == "dictionary" and q["n_cells"] == 1
    img = "document.querySelector('#qc-img')"
    pg.wait_for_function(f"{img}.complete && {img}.naturalWidth > 0")
    assert pg.locator("#q-concept").is_visible() and f"Concept {k}" in pg.inner_text("#qc-title")
    assert "concept #%d" % k in pg.inner_text("#q-meta")
    # no query image to leave out: every image is a match (18 < the 24 shown)
    pg.wait_for_function("document.querySelectorAll('#panes .card[data-drawn]').length === 18")
    # the results are the concept's search: the best cell of each image, as the library finds it
    from vfsearch import search
    from vfsearch.concepts import concept_query

    res = search(c, concept_query(c, k, layer=c.default_layer), k=5)
    ids = [int(v) for v in pg.eval_on_selector_all("#panes .card",
                                                   "cs => cs.slice(0, 5).map(c => c.dataset.id)")]
    assert ids == [m.id for m in res.matches]
    box = pg.evaluate("JSON.parse(document.querySelector('#panes .card').dataset.box)")
    assert box == pytest.approx(list(res.matches[0].box), abs=0.01)
    # the curve has the concept's series; a rank window shows its images in the strip
    assert f"C{k} dictionary" in pg.inner_text("#legend")
    # the concept search is in the history and in the URL (a share link)
    pg.wait_for_function("location.hash.includes('cn=')")
    link = pg.evaluate("location.hash")
    assert f"cn=dictionary%3A{k}" in link and "i=" not in link
    assert f"C{k}" in pg.inner_text("#history")
    cv = pg.locator("#dist-canvas").bounding_box()
    pg.mouse.click(cv["x"] + cv["width"] * 0.6, cv["y"] + cv["height"] * 0.5)
    pg.wait_for_function("document.querySelectorAll('#strip .mini').length > 0")
    pg.screenshot(path=str(SHOTS / "concepts_search.png"))
    # back on the tab, the searched concept is marked
    pg.click("#view-tabs [data-view=concepts]")
    active = "document.querySelector('#cn-list .cn-row.active')?.dataset.concept"
    pg.wait_for_function(f"{active} == {k}")

    # saliency concepts are not stored: the tab offers to compute them, with progress
    pg.select_option("#cn-label", "")
    pg.click("#cn-method [data-method=saliency]")
    pg.wait_for_function("document.body.dataset.concepts === 'missing'")
    assert pg.locator("#cn-compute").is_visible()
    assert "No saliency concepts" in pg.inner_text("#cn-empty")
    pg.screenshot(path=str(SHOTS / "concepts_missing.png"))
    pg.select_option("#cn-n", "8")
    pg.click("#cn-compute")
    pg.wait_for_function("document.body.dataset.concepts === 'ready'", timeout=120000)
    n_sal = len(load_concepts(c, c.default_layer, "saliency"))
    assert 1 <= n_sal <= 8
    assert pg.locator("#cn-list .cn-row").count() == n_sal and pg.locator("#cn-empty").is_hidden()

    # picking a query image leaves the concept query
    pg.click("#ds-grid .thumb >> nth=2")
    pg.wait_for_function("window.vfs.S.query && window.vfs.S.concept === null")
    assert pg.locator("#q-concept").is_hidden()

    # the concept's share link, loaded in a fresh page, runs the same concept search
    pg.goto("about:blank")
    pg.goto(concepts_server.rstrip("/") + "/" + link)
    pg.wait_for_function(f"window.vfs && window.vfs.S.concept && window.vfs.S.concept.id === {k}")
    pg.wait_for_function("document.querySelectorAll('#panes .card[data-drawn]').length === 18")
    ids = [int(v) for v in pg.eval_on_selector_all("#panes .card",
                                                   "cs => cs.slice(0, 5).map(c => c.dataset.id)")]
    assert ids == [m.id for m in res.matches]
    assert pg.locator("#q-concept").is_visible() and f"Concept {k}" in pg.inner_text("#qc-title")
