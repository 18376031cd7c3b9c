"""API tests of the extra views: dataset map, explanations, compare overlap."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from server_schema import checked_client, poll_job

from vfsearch.server import create_app


@pytest.fixture(scope="module")
def map_cache(small_cache, tmp_path_factory):
    """A copy of the shared cache: maps are written into the cache, and other tests expect the
    shared one to have none."""
    from vfsearch import open_cache

    dst = tmp_path_factory.mktemp("views") / "c"
    shutil.copytree(small_cache.path, dst)
    return open_cache(dst)


@pytest.fixture(scope="module")
def client(map_cache):
    with checked_client(create_app({"small": map_cache})) as c:
        yield c


def search(client, image=0, layer="blocks.10", k=5):
    r = client.post(
        "/api/search",
        json={"cache": "small", "layer": layer, "image": {"id": image}, "whole": True, "k": k},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_map_missing_compute_and_atlas(client, map_cache):
    small_cache = map_cache
    from vfsearch.embed import compute_map

    r = client.get("/api/caches/small/map", params={"layer": "blocks.15", "method": "umap"})
    assert r.status_code == 200 and r.json()["status"] == "missing"
    assert client.get("/api/caches/small/map", params={"method": "nope"}).status_code == 400
    assert client.get("/api/caches/small/map", params={"layer": "zz"}).status_code == 404

    compute_map(small_cache, "blocks.10", method="tsne", progress=False)
    r = client.get("/api/caches/small/map", params={"layer": "blocks.10"})
    assert r.json()["status"] == "no_atlas"  # map stored, thumbnails not yet
    r = client.post("/api/caches/small/map", params={"layer": "blocks.10"})
    assert r.status_code == 202 and r.json()["status"] in ("running", "done")
    j = poll_job(client, r.json()["job"])
    assert j["status"] == "done", j

    r = client.get("/api/caches/small/map", params={"layer": "blocks.10"})
    m = r.json()
    assert m["status"] == "ready" and m["side"] == 5 and m["pages"] == 1
    grid = np.array(m["grid"]).reshape(m["side"], m["side"])
    placed = grid[grid >= 0]
    assert sorted(placed.tolist()) == list(range(len(small_cache)))

    rb = client.get("/api/caches/small/map/grid.bin", params={"layer": "blocks.10"})
    assert int(rb.headers["x-side"]) == 5
    assert np.array_equal(np.frombuffer(rb.content, "<i4").reshape(5, 5), grid)

    ra = client.get("/api/caches/small/map/atlas/0", params={"layer": "blocks.10"})
    assert ra.status_code == 200 and ra.headers["content-type"] == "image/jpeg", ra.text
    assert ra.content[:2] == b"\xff\xd8"
    r304 = client.get(
        "/api/caches/small/map/atlas/0",
        params={"layer": "blocks.10"},
        headers={"If-None-Match": ra.headers["etag"]},
    )
    assert r304.status_code == 304
    assert (
        client.get("/api/caches/small/map/atlas/7", params={"layer": "blocks.10"}).status_code
        == 404
    )
    assert client.get("/api/jobs/nope").status_code == 404


def test_scores_vector(client, small_cache):
    s = search(client)
    r = client.get(f"/api/searches/{s['search_id']}/scores")
    v = np.frombuffer(r.content, "<f4")
    assert len(v) == len(small_cache) == int(r.headers["x-count"])
    top = s["matches"][0]
    assert v[top["id"]] == pytest.approx(top["score"], abs=1e-4)
    assert np.isneginf(v[0])  # the query itself is excluded
    assert client.get("/api/searches/nope/scores").status_code == 404


def test_rank_order_matches_the_top_k_and_the_windows(client, small_cache):
    s = search(client)
    sid = s["search_id"]
    r = client.get(f"/api/searches/{sid}/order")
    order = np.frombuffer(r.content, "<i4")
    assert r.status_code == 200 and len(order) == int(r.headers["x-count"]) == len(small_cache) - 1
    assert sorted(order.tolist()) == [
        i for i in range(len(small_cache)) if i != 0
    ]  # all but the query
    assert order[: len(s["matches"])].tolist() == [m["id"] for m in s["matches"]]
    w = client.get(f"/api/searches/{sid}/window", params={"start": 3, "stop": 9}).json()
    assert [m["id"] for m in w["items"]] == order[3:9].tolist()
    v = np.frombuffer(client.get(f"/api/searches/{sid}/scores").content, "<f4")
    rest = order[len(s["matches"]) :]
    assert np.all(np.diff(v[rest]) <= 0)  # beyond the exact top-k: by score, best first
    assert client.get("/api/searches/nope/order").status_code == 404


def test_explain_exact_and_feature(client):
    s = search(client, layer="blocks.15")
    rid = s["matches"][0]["id"]
    r = client.post(f"/api/searches/{s['search_id']}/explain", json={"id": rid, "method": "exact"})
    assert r.status_code == 200, r.text
    ex = r.json()["result"]
    H, W = s["query"]["grid"]
    sal = np.array(ex["saliency"])
    assert sal.shape == (H, W) and np.array(ex["query_saliency"]).shape == (H, W)
    assert sal.sum() == pytest.approx(s["matches"][0]["score"], abs=2e-3)
    assert ex["space"] == "grid" and ex["result"]["id"] == rid
    ch = ex["top_channels"]
    assert ch and ch[0]["patches"] and len(ch[0]["patches"][0]["box"]) == 4
    assert "image_size" in ch[0]["patches"][0] and "crop" in ex["query"]["geometry"]

    r = client.post(
        f"/api/searches/{s['search_id']}/explain", json={"id": rid, "method": "feature"}
    )
    assert r.status_code == 200 and np.array(r.json()["result"]["saliency"]).shape == (H, W)

    bad = client.post(f"/api/searches/{s['search_id']}/explain", json={"id": rid, "method": "x"})
    assert bad.status_code == 400
    bad = client.post(
        f"/api/searches/{s['search_id']}/explain",
        json={"id": rid, "method": "rise", "params": {"bogus": 1}},
    )
    assert bad.status_code == 400
    assert (
        client.post(
            f"/api/searches/{s['search_id']}/explain", json={"id": 9999, "method": "exact"}
        ).status_code
        == 404
    )


def test_explain_background_job(client):
    s = search(client, layer="blocks.15")
    rid = s["matches"][0]["id"]
    body = {
        "id": rid,
        "method": "occlusion",
        "params": {"window": 112, "stride": 112, "auc_steps": 2},
    }
    r = client.post(f"/api/searches/{s['search_id']}/explain", json=body)
    assert r.status_code in (200, 202), r.text
    j = poll_job(client, r.json()["job"])
    assert j["status"] == "done", j
    ex = j["result"]
    assert ex["space"] == "input" and np.array(ex["saliency"]).ndim == 2
    assert ex["insertion_auc"] is not None and ex["deletion_auc"] is not None
    # memoised: asking again answers at once with the same job
    r2 = client.post(f"/api/searches/{s['search_id']}/explain", json=body)
    assert r2.status_code == 200 and r2.json()["job"] == r.json()["job"]


def test_overlap(client):
    a = search(client, layer="blocks.10", k=6)
    b = search(client, layer="blocks.15", k=6)
    r = client.get("/api/overlap", params={"a": a["search_id"], "b": b["search_id"]})
    assert r.status_code == 200, r.text
    o = r.json()
    ia = {m["id"] for m in a["matches"]}
    ib = {m["id"] for m in b["matches"]}
    assert o["count"] == len(ia & ib) and {p[0] for p in o["shared"]} == ia & ib
    same = client.get("/api/overlap", params={"a": a["search_id"], "b": a["search_id"]}).json()
    assert same["count"] == 6 and same["jaccard"] == 1.0
    assert client.get("/api/overlap", params={"a": "x", "b": a["search_id"]}).status_code == 404
