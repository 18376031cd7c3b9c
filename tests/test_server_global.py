"""The web API's query modes: similar images (global), the rigid whole-image query, regions —
the curve, rank windows, heat maps and export work for each."""

from __future__ import annotations

import numpy as np
import pytest
from server_schema import checked_client

from vfsearch import search
from vfsearch.server import create_app


@pytest.fixture(scope="module")
def client(small_cache):
    with checked_client(create_app({"small": small_cache})) as c:
        yield c


def _search(client, **body):
    r = client.post("/api/search", json={"cache": "small", "image": {"id": 3}, "k": 5, **body})
    return r


def test_global_search_equals_the_library(client, small_cache):
    r = _search(client, mode="global", layer="blocks.10")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["query"]["mode"] == "global"
    want = search(small_cache, 3, mode="global", layer="blocks.10", k=5)
    assert [m["id"] for m in j["matches"]] == list(want.ids)
    assert np.allclose([m["score"] for m in j["matches"]], want.top_scores, atol=1e-6)
    assert all(m["offset"] == [0, 0] for m in j["matches"])
    assert j["curve"]["n"] == len(small_cache) - 1
    sid = j["search_id"]
    # rank windows past the top-k, heat maps of per-cell shares, export
    w = client.get(f"/api/searches/{sid}/window", params={"start": 5, "stop": 9}).json()
    assert len(w["items"]) == 4 and all(it["offset"] == [0, 0] for it in w["items"])
    scores = [it["score"] for it in w["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] <= j["matches"][-1]["score"]
    top = j["matches"][0]
    h = client.get(f"/api/searches/{sid}/heat", params={"ids": str(top["id"])}).json()
    grid = np.array(h["maps"][str(top["id"])])
    assert h["cell_box"] == [0, 0, 1, 1] and grid.shape == (14, 14)
    assert grid.sum() == pytest.approx(top["score"], abs=1e-3)  # shares sum to the score
    csv = client.get(f"/api/searches/{sid}/export", params={"format": "csv"})
    assert csv.status_code == 200 and csv.text.count("\n") == 6


def test_whole_mode_is_the_rigid_query(client, small_cache):
    a = _search(client, mode="whole").json()
    b = _search(client, whole=True).json()
    assert a["query"]["mode"] == b["query"]["mode"] == "whole"
    assert [m["id"] for m in a["matches"]] == [m["id"] for m in b["matches"]]
    want = search(small_cache, 3, whole=True, k=5)
    assert [m["id"] for m in a["matches"]] == list(want.ids)


def test_modes_refuse_contradictions_with_the_field(client):
    for body, param in (({"mode": "global", "box": [0, 0, 50, 50]}, "box"),
                        ({"mode": "global", "whole": True}, "whole"),
                        ({"mode": "region"}, "mask"),
                        ({"mode": "sideways"}, "mode")):
        r = _search(client, **body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["param"] == param, (body, r.json())


def test_global_search_of_an_upload(client, small_cache):
    data = small_cache.abspath(5).read_bytes()
    up = client.post("/api/uploads", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    r = client.post("/api/search", json={"cache": "small", "image": {"upload": up["upload"]},
                                         "mode": "global", "k": 1, "layer": "blocks.10"})
    assert r.status_code == 200, r.text
    assert r.json()["matches"][0]["id"] == 5
