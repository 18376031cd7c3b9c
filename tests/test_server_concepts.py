"""API tests of concepts in the web app: the stored set (or its status), contact sheets with
ETags, discovery as a background job (one at a time), and searching a concept through
``POST /api/search`` exactly like any other query. Every response is checked against the
published OpenAPI document (``checked_client``)."""

from __future__ import annotations

import csv
import io
import shutil
import threading

import numpy as np
import pytest
from server_schema import checked_client, poll_job

from vfsearch import search
from vfsearch.concepts import concept_query, load_concepts, sheet_png
from vfsearch.errors import BadParameter
from vfsearch.server import create_app

LAYER = "blocks.10"


@pytest.fixture(scope="module")
def ccache(small_cache, tmp_path_factory):
    """A copy of the shared cache: concepts are written into the cache, and other tests expect
    the shared one to have none."""
    from vfsearch import open_cache

    dst = tmp_path_factory.mktemp("concepts") / "c"
    shutil.copytree(small_cache.path, dst)
    return open_cache(dst, image_root=small_cache.image_root)


@pytest.fixture(scope="module")
def app(ccache):
    return create_app({"small": ccache})


@pytest.fixture(scope="module")
def client(app):
    with checked_client(app) as c:
        yield c


def info(client, layer=LAYER, method="dictionary", **params):
    r = client.get("/api/caches/small/concepts", params={"layer": layer, "method": method,
                                                         **params})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def stored(client, app, ccache):
    """Dictionary concepts of LAYER, computed through the API (JSON body)."""
    r = client.post("/api/caches/small/concepts", params={"layer": LAYER},
                    json={"n_concepts": 5})
    assert r.status_code == 202, r.text
    j = poll_job(client, r.json()["job"])
    assert j["status"] == "done" and j["progress"] == 1.0, j
    assert j["result"]["n_concepts"] == 5 and j["result"]["layer"] == LAYER
    return load_concepts(ccache, LAYER, "dictionary")


def test_missing_concepts_say_so_and_a_get_starts_nothing(client, app):
    d = info(client, layer="blocks.15", method="saliency")
    assert d["status"] == "missing" and d["stored"] == {"dictionary": False, "saliency": False}
    assert "concepts" not in d and "job" not in d
    r = client.get("/api/caches/small/concepts/sheet/0", params={"layer": "blocks.15"})
    assert r.status_code == 404 and r.json()["param"] == "method"
    assert client.get("/api/caches/small/concepts/sheet",
                      params={"layer": "blocks.15"}).status_code == 404
    r = client.post("/api/search", json={"cache": "small", "layer": "blocks.15",
                                         "concept": {"id": 0}})
    assert r.status_code == 404 and r.json()["param"] == "concept"
    assert "compute them first" in r.json()["message"]
    assert app.state.vfs.concepts.running is None  # no GET (nor a search) started a discovery
    # bad addresses name their parameter
    r = client.get("/api/caches/small/concepts", params={"method": "kmeans"})
    assert r.status_code == 400 and r.json()["param"] == "method"
    r = client.get("/api/caches/small/concepts", params={"layer": "nope"})
    assert r.status_code == 404 and r.json()["param"] == "layer"
    assert client.get("/api/caches/nope/concepts").status_code == 404


def test_the_stored_set_as_json(client, stored, ccache):
    d = info(client)
    assert d["status"] == "ready" and d["stored"]["dictionary"] and d["n_concepts"] == 5
    assert d["layer"] == LAYER and d["method"] == "dictionary" and d["stale"] is False
    assert d["algorithm"] == "kmeans" and d["params"]["n_concepts"] == 5 and d["version"]
    ref = stored.to_dict(ccache)
    assert [c["size"] for c in d["concepts"]] == [c["size"] for c in ref["concepts"]]
    for got, want in zip(d["concepts"], ref["concepts"], strict=True):
        assert got["n_patches"] == len(want["patches"]) == len(got["patches"])
        for p, q in zip(got["patches"], want["patches"], strict=True):
            assert (p["id"], p["path"], p["label"], p["box"], p["score"], p["cells"]) == (
                q["id"], q["path"], q["label"], q["box"], q["score"], q["cells"])
            assert p["size"] == list(ccache.image_size(p["id"]))
        labels = {}
        for q in want["patches"]:
            labels[q["label"]] = labels.get(q["label"], 0) + 1
        assert dict(map(tuple, got["labels"])) == labels
        assert [n for _, n in got["labels"]] == sorted(labels.values(), reverse=True)
    # fewer patches per concept on request; the labels still count them all
    few = info(client, patches=2)
    assert all(len(c["patches"]) == 2 for c in few["concepts"])
    assert [c["labels"] for c in few["concepts"]] == [c["labels"] for c in d["concepts"]]
    assert info(client, patches=0)["concepts"][0]["patches"] == []


def test_contact_sheets_with_etags(client, stored):
    r = client.get("/api/caches/small/concepts/sheet/1", params={"layer": LAYER})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == sheet_png(stored, 1)
    etag = r.headers["etag"]
    r2 = client.get("/api/caches/small/concepts/sheet/1", params={"layer": LAYER},
                    headers={"If-None-Match": etag})
    assert r2.status_code == 304 and not r2.content and r2.headers["etag"] == etag
    ov = client.get("/api/caches/small/concepts/sheet", params={"layer": LAYER})
    assert ov.status_code == 200 and ov.content == sheet_png(stored)
    assert ov.headers["etag"] != etag
    r = client.get("/api/caches/small/concepts/sheet/5", params={"layer": LAYER})
    assert r.status_code == 404 and r.json()["param"] == "k"
    assert client.get("/api/caches/small/concepts/sheet/x").status_code == 404


def test_search_a_concept_like_any_query(client, stored, ccache):
    r = client.post("/api/search", json={"cache": "small", "layer": LAYER,
                                         "concept": {"id": 2, "method": "dictionary"}, "k": 6,
                                         "thumbs": True})
    assert r.status_code == 200, r.text
    d = r.json()
    want = search(ccache, concept_query(ccache, 2, layer=LAYER), k=6, return_scores=True)
    assert [m["id"] for m in d["matches"]] == [m.id for m in want.matches]
    for m, w in zip(d["matches"], want.matches, strict=True):
        assert m["score"] == pytest.approx(w.score, abs=1e-5)
        assert m["box"] == pytest.approx(list(w.box), abs=0.01)
        assert m["offset"] == list(w.offset) and m["carry"]["matrix"]
    s = want.scores[np.isfinite(want.scores)]
    assert d["total"] == len(s) == len(ccache)  # no query image to leave out
    assert d["curve"]["scores"][0] == pytest.approx(float(s.max()), abs=1e-4)
    assert set(d["thumbs"]) == {str(m["id"]) for m in d["matches"]}
    q = d["query"]
    assert q["concept"]["id"] == 2 and q["concept"]["method"] == "dictionary"
    assert q["concept"]["layer"] == LAYER and q["concept"]["size"] == int(stored.sizes[2])
    assert q["image"]["concept"] == q["concept"] and "id" not in q["image"]
    assert q["mode"] == "region" and q["n_cells"] == 1 and q["cell_box"] == [0, 0, 1, 1]
    sid = d["search_id"]
    # rank windows, heat, export: as for any search
    w = client.get(f"/api/searches/{sid}/window", params={"start": 4, "stop": 9}).json()
    assert [m["rank"] for m in w["items"]] == [5, 6, 7, 8, 9]
    assert [m["id"] for m in w["items"][:2]] == [m.id for m in want.matches[4:6]]
    h = client.get(f"/api/searches/{sid}/heat", params={"ids": "0,3"}).json()
    grid = ccache.grid(LAYER)
    assert h["cell_box"] == [0, 0, 1, 1] and np.array(h["maps"]["3"]).shape == tuple(grid)
    feats = ccache.features(3, LAYER).astype(np.float64)
    cos = feats @ stored.directions[2] / np.maximum(np.linalg.norm(feats, axis=-1), 1e-12)
    assert np.array(h["maps"]["3"]) == pytest.approx(cos, abs=2e-3)
    ex = client.get(f"/api/searches/{sid}/export").json()
    assert ex["query"]["concept"]["id"] == 2 and len(ex["matches"]) == 6
    rows = list(csv.reader(io.StringIO(client.get(f"/api/searches/{sid}/export",
                                                  params={"format": "csv"}).text)))
    assert len(rows) == 7 and rows[1][1] == str(want.matches[0].id)
    # a result filter works too
    lab = str(ccache.labels[want.matches[0].id])
    r = client.post("/api/search", json={"cache": "small", "layer": LAYER, "concept": {"id": 2},
                                         "filter": {"column": "label", "value": lab}, "k": 3})
    assert r.status_code == 200 and {m["label"] for m in r.json()["matches"]} == {lab}


@pytest.mark.parametrize("extra,status,param", [
    ({"image": {"id": 1}}, 400, "image"),
    ({"box": [0, 0, 50, 50]}, 400, "box"),
    ({"mask": {"data": [[1]]}}, 400, "mask"),
    ({"whole": True}, 400, "whole"),
    ({"mode": "global"}, 400, "mode"),
    ({"concept": {"id": 5}}, 404, "concept.id"),
    ({"concept": {"id": -1}}, 404, "concept.id"),
    ({"concept": {"id": 0, "method": "saliency"}}, 404, "concept"),
    ({"concept": {"id": 0, "method": "nmf"}}, 400, "concept.method"),
    ({"concept": {"id": "0"}}, 400, "concept.id"),
    ({"concept": {}}, 400, "concept.id"),
    ({"concept": {"id": 0, "x": 1}}, 400, "concept.x"),
    ({"concept": None}, 400, "image"),
])
def test_concept_search_refusals_name_the_field(client, stored, extra, status, param):
    body = {"cache": "small", "layer": LAYER, "concept": {"id": 0}, **extra}
    r = client.post("/api/search", json=body)
    assert r.status_code == status and r.json()["param"] == param, r.text


def test_a_search_needs_an_image_or_a_concept(client):
    r = client.post("/api/search", json={"cache": "small", "whole": True})
    assert r.status_code == 400 and r.json()["param"] == "image"
    assert "'concept'" in r.json()["message"]
    # image searches are unchanged
    r = client.post("/api/search", json={"cache": "small", "image": {"id": 1}, "whole": True})
    assert r.status_code == 200 and "concept" not in r.json()["query"]


def test_discovery_bodies_are_checked(client):
    for body, param in [({"n_concepts": 0}, "n_concepts"), ({"n_concepts": 129}, "n_concepts"),
                        ({"n_queries": "5"}, "n_queries"), ({"nope": 1}, "nope")]:
        r = client.post("/api/caches/small/concepts", json=body)
        assert r.status_code == 400 and r.json()["param"] == param, r.text
    r = client.post("/api/caches/small/concepts", params={"method": "nmf"})
    assert r.status_code == 400 and r.json()["param"] == "method"
    r = client.post("/api/caches/small/concepts", content=b"n=3",
                    headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_one_discovery_at_a_time_and_progress(client, app, ccache, monkeypatch, stored):
    """An empty body runs the defaults; while it runs, the same request gets its job, another
    one a 409; the set reads as computing; it ends stored, with progress 1.0."""
    import vfsearch.server.concepts as sc

    gate, entered = threading.Event(), threading.Event()
    real = sc.discover

    def slow(*a, **kw):
        entered.set()
        assert gate.wait(60)
        return real(*a, **{**kw, "n_concepts": 3})

    monkeypatch.setattr(sc, "discover", slow)
    url = "/api/caches/small/concepts"
    r = client.post(url, params={"layer": "blocks.15", "method": "saliency"})
    assert r.status_code == 202 and r.json()["status"] == "running"
    assert r.json()["kind"] == "concepts"
    job = r.json()["job"]
    assert entered.wait(30)
    again = client.post(url, params={"layer": "blocks.15", "method": "saliency"})
    assert again.status_code == 202 and again.json()["job"] == job
    busy = client.post(url, params={"layer": LAYER})
    assert busy.status_code == 409 and busy.json()["error"] == "busy"
    assert job in busy.json()["message"]
    d = info(client, layer="blocks.15", method="saliency")
    assert d["status"] == "computing" and d["job"]["job"] == job
    assert info(client)["status"] == "ready"  # other sets stay readable meanwhile
    gate.set()
    j = poll_job(client, job)
    assert j["status"] == "done" and j["progress"] == 1.0, j
    d = info(client, layer="blocks.15", method="saliency")
    assert d["status"] == "ready" and d["stored"]["saliency"] and 1 <= d["n_concepts"] <= 3
    assert len(load_concepts(ccache, "blocks.15", "saliency")) == d["n_concepts"]
    # a finished discovery is recomputed on request (a new job)
    r = client.post(url, params={"layer": "blocks.15", "method": "saliency"})
    assert r.status_code == 202 and r.json()["job"] != job
    assert poll_job(client, r.json()["job"])["status"] == "done"


def test_a_failed_discovery_reports_its_error(client, monkeypatch):
    import vfsearch.server.concepts as sc

    def fail(*a, **kw):
        raise BadParameter("too few cells for that many concepts", param="n_concepts")

    monkeypatch.setattr(sc, "discover", fail)
    r = client.post("/api/caches/small/concepts", params={"layer": "blocks.15"},
                    json={"n_concepts": 7})
    assert r.status_code == 202
    j = poll_job(client, r.json()["job"])
    assert j["status"] == "error" and j["code"] == "bad_parameter" and j["param"] == "n_concepts"
    d = info(client, layer="blocks.15")
    assert d["status"] == "missing" and d["job"]["error"] == j["error"]


def test_explain_says_which_concepts_a_match_shares(client, stored, ccache):
    """The explain response carries the stored concepts the match shares with its query (the
    library's shared_concepts); a global search's explanation has none."""
    from vfsearch.concepts import shared_concepts

    r = client.post("/api/search", json={"cache": "small", "layer": LAYER, "image": {"id": 0},
                                         "box": [60, 60, 160, 160], "k": 3})
    assert r.status_code == 200, r.text
    d = r.json()
    m = d["matches"][0]
    r = client.post(f"/api/searches/{d['search_id']}/explain", json={"id": m["id"]})
    assert r.status_code == 200, r.text
    got = r.json()["result"]["concepts"]
    res = search(ccache, 0, box=(60, 60, 160, 160), layer=LAYER, k=3)
    want = shared_concepts(ccache, res.query, res.matches[0], concepts=stored)
    assert got["method"] == "dictionary" and got["layer"] == LAYER
    assert got["shared"] == want["shared"] and got["same_cells"] == want["same_cells"]
    assert len(got["cells"]) == int((res.query.weights > 0).sum())
    r = client.post("/api/search", json={"cache": "small", "layer": LAYER, "image": {"id": 0},
                                         "mode": "global", "k": 3})
    g = r.json()
    r = client.post(f"/api/searches/{g['search_id']}/explain", json={"id": g["matches"][0]["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["concepts"] is None
