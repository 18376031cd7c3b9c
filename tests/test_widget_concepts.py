"""Concepts in the Jupyter widgets: the static gallery of a stored concept's patches
(:func:`vfsearch.widget.show_concept`) and :meth:`SearchWidget.search_concept`, which shows a
concept's results like any search."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

pytest.importorskip("anywidget", reason="the widgets need anywidget (pip install anywidget)")
pytest.importorskip("ipywidgets", reason="the widgets need ipywidgets")

from vfsearch import search  # noqa: E402
from vfsearch.concepts import concept_query, discover  # noqa: E402
from vfsearch.errors import NotFound  # noqa: E402
from vfsearch.widget import SearchWidget, concept_html, show_concept  # noqa: E402

LAYER = "blocks.15"


@pytest.fixture(scope="module")
def ccache(small_cache, tmp_path_factory):
    """A copy of the shared cache with dictionary concepts of LAYER (other tests expect the
    shared one to have none)."""
    from vfsearch import open_cache

    dst = tmp_path_factory.mktemp("wconcepts") / "c"
    shutil.copytree(small_cache.path, dst)
    c = open_cache(dst, image_root=small_cache.image_root)
    cs = discover(c, LAYER, "dictionary", n_concepts=4)
    return c, cs


def test_show_concept_is_a_gallery_of_its_patches(ccache):
    from IPython.display import HTML

    c, cs = ccache
    k = 1
    patches = cs.patches(k, c)
    h = show_concept(c.path, k, layer=LAYER)  # a cache path works too
    assert isinstance(h, HTML)
    text = h.data
    assert text == concept_html(c, k, layer=LAYER)
    assert f"data-concept='{k}'" in text and f"{int(cs.sizes[k]):,} cells" in text
    ids = [int(v) for v in re.findall(r"data-id='(\d+)'", text)]
    n = min(16, len(patches))
    assert ids == [p["id"] for p in patches[:n]]  # best first
    assert text.count("data:image/jpeg;base64,") == n
    assert text.count("border:2px solid #ffdc00") == n  # each patch's box on its thumbnail
    for j, p in enumerate(patches[:n]):
        assert f"{j + 1}. #{p['id']}  {p['score']:.3f}" in text
    # the box is drawn where the patch is, as a share of the image
    W, H = c.image_size(patches[0]["id"])
    x0 = patches[0]["box"][0]
    assert f"left:{100 * x0 / W:.2f}%" in text
    # fewer patches, the stored sheet first
    few = concept_html(c, k, layer=LAYER, n=3, sheet=True)
    assert few.count("data-id=") == 3 and "class='vfs-sheet'" in few
    assert "data:image/png;base64," in few
    with pytest.raises(NotFound):
        concept_html(c, k, layer=LAYER, method="saliency")
    with pytest.raises(NotFound):
        concept_html(c, 99, layer=LAYER)


def test_search_widget_searches_a_concept(ccache):
    c, cs = ccache
    sw = SearchWidget(c, layer=LAYER, k=4, query=0)
    res = sw.search_concept(2)
    assert res is sw.results and sw.error is None and len(res) == 4
    ref = search(c, concept_query(c, 2, layer=LAYER), k=4, return_scores=True)
    assert res.ids.tolist() == ref.ids.tolist()
    assert np.allclose([m.box for m in res], [m.box for m in ref])
    view = sw.gallery.value
    assert "data-concept='2'" in view and "<svg" in view  # the concept, then the results
    assert all(f"data-id='{i}'" in view for i in res.ids)
    assert "dictionary concept 2" in sw.status.value
    assert [v for _, v in sw.explain_pick.options] == [1, 2, 3, 4]
    ex = sw.explain(1, "exact", wait=True).result()
    assert ex.result_id == res[0].id and ex.score == pytest.approx(res[0].score, abs=1e-4)
    # k re-runs the concept search; brushing makes the image the query again
    sw.k_box.value = 2
    assert len(sw.results) == 2 and sw.results.query.source_id is None
    W, H = c.image_size(0)
    sw.brush.set_box((0, 0, W / 2, H / 2))
    assert sw.results.query.source_id == 0 and "data-concept" not in sw.gallery.value
    # no such concepts: the error is shown, nothing raised
    assert sw.search_concept(0, "saliency") is None
    assert "saliency" in sw.status.value and "color:#b00" in sw.status.value
    assert sw.search_concept(9) is None and "NotFound" in sw.error
