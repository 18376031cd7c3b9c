"""In-process tests of the web API (FastAPI TestClient), plus one real-server concurrency test."""

from __future__ import annotations

import base64
import io
import itertools
import shutil
import socket
import statistics
import threading
import time

import numpy as np
import pytest
from PIL import Image
from server_schema import checked_client

from vfsearch import open_cache
from vfsearch.errors import BadMask, BadParameter
from vfsearch.masks import decode_rle, encode_rle
from vfsearch.server import create_app, serve


@pytest.fixture(scope="module")
def app(small_cache):
    return create_app({"small": small_cache})


@pytest.fixture(scope="module")
def client(app):
    with checked_client(app) as c:
        yield c


def ids_of(cache, label):
    return [i for i, lab in enumerate(cache.labels) if lab == label]


def png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def assert_json_error(r, status, code=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert {"error", "message"} <= set(body) <= {"error", "message", "param"} and body["message"]
    if code:
        assert body["error"] == code, body


# -- listing, thumbnails -------------------------------------------------------------------------


def test_list_caches(client, small_cache):
    r = client.get("/api/caches")
    assert r.status_code == 200
    (c,) = r.json()["caches"]
    assert c["name"] == "small" and c["images"] == len(small_cache) == 18
    assert [la["name"] for la in c["layers"]] == ["blocks.15", "blocks.10"]
    assert c["layers"][0]["grid"] == [7, 7] and c["layers"][1]["grid"] == [14, 14]
    labels = dict(c["columns"]["label"]["values"])
    assert labels["cat"] == 3 and len(labels) == 6


def test_dataset_listing_filter_and_random(client):
    r = client.get("/api/caches/small/images", params={"limit": 5})
    assert r.json()["total"] == 18 and len(r.json()["items"]) == 5
    r = client.get("/api/caches/small/images", params={"q": "coffee"})
    assert r.json()["total"] == 3 and all(it["label"] == "coffee" for it in r.json()["items"])
    r = client.get("/api/caches/small/images", params={"column": "label", "value": "horse"})
    assert {it["label"] for it in r.json()["items"]} == {"horse"}
    r = client.get("/api/caches/small/random", params={"q": "rocket"})
    assert r.status_code == 200 and r.json()["label"] == "rocket"
    info = client.get(f"/api/caches/small/images/{r.json()['id']}").json()
    assert info["valid"] and len(info["geometry"]["crop"]) == 4
    assert_json_error(client.get("/api/caches/small/random", params={"q": "zebra"}), 404)


def test_thumbnail_etag_304(client):
    r = client.get("/api/caches/small/thumb/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    etag = r.headers["etag"]
    assert etag.startswith('"') and "max-age" in r.headers["cache-control"]
    Image.open(io.BytesIO(r.content)).verify()
    r2 = client.get("/api/caches/small/thumb/3", headers={"If-None-Match": etag})
    assert r2.status_code == 304 and not r2.content and r2.headers["etag"] == etag
    r3 = client.get("/api/caches/small/thumb/4", headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["etag"] != etag


def test_original_image(client, small_cache):
    r = client.get("/api/caches/small/image/0")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    assert Image.open(io.BytesIO(r.content)).size == small_cache.image_size(0)


# -- searches ------------------------------------------------------------------------------------


def test_search_box(client, small_cache):
    astro = ids_of(small_cache, "astronaut")
    r = client.post(
        "/api/search",
        json={"cache": "small", "image": {"id": astro[0]}, "box": [150, 80, 330, 260], "k": 5},
    )
    assert r.status_code == 200, r.text
    j = r.json()
    m = j["matches"]
    assert len(m) == 5 and j["total"] == 17  # the query image itself is excluded
    assert [x["rank"] for x in m] == list(range(1, 6))  # 1 = the best
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(m))
    assert {m[0]["id"], m[1]["id"]} == set(astro[1:])  # its own crops come first
    for x in m:
        w, h = x["image_size"]
        x0, y0, x1, y1 = x["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert set(x["geometry"]) >= {"sx", "sy", "left", "top", "size", "crop"}
    q = j["query"]
    assert q["grid"] == [7, 7] and q["n_cells"] >= 4 and len(q["weights"]) == q["cell_box"][2]
    assert j["curve"]["n"] == 17 and len(j["curve"]["scores"]) == 17
    assert j["curve"]["scores"][0] == pytest.approx(m[0]["score"], abs=1e-4)
    assert j["timing"]["search_ms"] >= 0


def test_search_mask_png_and_array_match_box(client, small_cache):
    """A mask drawn at display resolution (any size with the same aspect ratio), as a PNG, raw
    bytes, nested list or run-length string, finds what the equivalent box finds."""
    i = ids_of(small_cache, "cat")[0]
    w, h = small_cache.image_size(i)
    box = [w * 0.3, h * 0.25, w * 0.6, h * 0.7]
    ref = client.post(
        "/api/search", json={"cache": "small", "image": {"id": i}, "box": box, "k": 6}
    ).json()
    for scale in (1.0, 0.5):
        mw, mh = round(w * scale), round(h * scale)
        m = np.zeros((mh, mw), np.float32)
        m[
            round(box[1] * scale) : round(box[3] * scale),
            round(box[0] * scale) : round(box[2] * scale),
        ] = 1
        for spec in (
            {"png": png_b64(m)},
            {
                "u8": base64.b64encode((m * 255).astype(np.uint8).tobytes()).decode(),
                "width": mw,
                "height": mh,
            },
            {"rle": encode_rle(m, max_side=4096)},
        ):
            r = client.post(
                "/api/search", json={"cache": "small", "image": {"id": i}, "mask": spec, "k": 6}
            )
            assert r.status_code == 200, r.text
            got = r.json()
            assert [x["id"] for x in got["matches"]][:3] == [x["id"] for x in ref["matches"]][:3]
            assert got["query"]["cell_box"] == ref["query"]["cell_box"]
    small = np.zeros((30, round(30 * w / h)), np.float32)
    small[8:21, 9:18] = 0.8  # soft values, a nested list
    r = client.post(
        "/api/search",
        json={"cache": "small", "image": {"id": i}, "mask": {"data": small.tolist()}, "k": 3},
    )
    assert r.status_code == 200, r.text
    assert r.json()["matches"][0]["label"] == "cat"


def test_search_whole_and_layers(client, small_cache):
    i = ids_of(small_cache, "horse")[0]
    for layer, grid in (("blocks.15", [7, 7]), ("blocks.10", [14, 14])):
        r = client.post(
            "/api/search",
            json={"cache": "small", "layer": layer, "image": {"id": i}, "whole": True, "k": 4},
        )
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["layer"] == layer and j["query"]["grid"] == grid
        assert j["query"]["n_cells"] == grid[0] * grid[1]
        assert j["matches"][0]["label"] == "horse"
    r = client.post(
        "/api/search",
        json={"cache": "small", "image": {"id": i}, "whole": True, "k": 20, "exclude_self": False},
    )
    assert r.json()["matches"][0]["id"] == i and r.json()["matches"][0]["score"] == pytest.approx(
        1, abs=1e-5
    )


def test_search_with_result_filter(client, small_cache):
    i = ids_of(small_cache, "astronaut")[0]
    r = client.post(
        "/api/search",
        json={
            "cache": "small",
            "image": {"id": i},
            "box": [150, 80, 330, 260],
            "k": 10,
            "filter": {"column": "label", "value": "coffee"},
        },
    )
    j = r.json()
    assert r.status_code == 200 and j["total"] == 3
    assert [x["label"] for x in j["matches"]] == ["coffee"] * 3
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(j["matches"]))


def test_errors_are_json(client, small_cache):
    base = {"cache": "small", "image": {"id": 0}, "box": [10, 10, 200, 200]}
    assert_json_error(
        client.post("/api/search", json={**base, "image": {"id": 999}}), 404, "not_found"
    )
    assert_json_error(
        client.post("/api/search", json={**base, "image": {"id": "abc"}}), 400, "bad_parameter"
    )
    assert_json_error(client.post("/api/search", json={**base, "cache": "nope"}), 404, "not_found")
    assert_json_error(client.post("/api/search", json={**base, "layer": "blocks.99"}), 404)
    empty = {"cache": "small", "image": {"id": 0}, "mask": {"png": png_b64(np.zeros((64, 64)))}}
    assert_json_error(client.post("/api/search", json=empty), 400, "bad_mask")
    wrong = np.ones((64, 100))  # aspect ratio ≠ the image's
    assert_json_error(
        client.post("/api/search", json={**empty, "mask": {"png": png_b64(wrong)}}), 400, "bad_mask"
    )
    assert_json_error(
        client.post("/api/search", json={**empty, "mask": {"png": "!!notpng"}}), 400, "bad_mask"
    )
    assert_json_error(
        client.post("/api/search", json={**base, "box": [50, 50, 10, 10]}), 400, "bad_mask"
    )
    assert_json_error(client.post("/api/search", json={**base, "whole": True}), 400, "bad_query")
    assert_json_error(client.post("/api/search", json={**base, "k": 0}), 400)
    assert_json_error(
        client.post(
            "/api/search", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )
    assert_json_error(client.post("/api/search", json=[1, 2]), 400)
    assert_json_error(client.get("/api/caches/nope/thumb/1"), 404, "not_found")
    assert_json_error(client.get("/api/caches/small/thumb/18"), 404, "not_found")
    assert_json_error(client.get("/api/caches/small/thumb/-1"), 404)
    assert_json_error(client.get("/api/nothing/here"), 404)
    assert_json_error(client.get("/api/searches/deadbeef/window"), 404)
    assert_json_error(client.get("/api/uploads/nope/image"), 404)
    assert_json_error(
        client.get("/api/caches/small/images", params={"column": "colour", "value": "x"}), 404
    )
    assert_json_error(client.delete("/api/caches"), 405)


def test_traversal_refused(client):
    passwd = b"root:"
    attempts = [
        "/api/caches/small/image/../../../../etc/passwd",
        "/api/caches/small/image/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/api/caches/small/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/caches/small/image//etc/passwd",
        "/api/caches/small/image/%2fetc%2fpasswd",
        "/api/caches/small/thumb/abc",
        "/api/caches/small/thumb/1.5",
        "/api/caches/small/thumb/0x1",
        "/api/caches/..%2f..%2f/thumb/1",
        "/api/caches/%2e%2e/image/0",
        "/static/..%2f..%2fserver%2fapp.py",
        "/static/%2e%2e/%2e%2e/cache.py",
        "/static/../../../../etc/passwd",
        "/api/uploads/..%2f..%2fetc%2fpasswd/image",
    ]
    for url in attempts:
        r = client.get(url)
        assert r.status_code in (400, 403, 404, 422), (url, r.status_code)
        assert passwd not in r.content and b"def create_app" not in r.content, url
        assert r.headers["content-type"].startswith("application/json"), url


def test_symlink_out_of_image_root_refused(small_cache, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(small_cache.image_root, root)
    shutil.copytree(small_cache.path, tmp_path / "cache")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((root / str(small_cache.paths[0])).read_bytes())
    victim = root / str(small_cache.paths[0])
    victim.unlink()
    victim.symlink_to(secret)  # inside the root, pointing outside it
    inner = root / str(small_cache.paths[1])
    target = root / "other.jpg"
    inner.rename(target)
    inner.symlink_to(target)  # a symlink that stays inside the root is fine
    (root / str(small_cache.paths[2])).unlink()  # a missing original
    c = open_cache(tmp_path / "cache", image_root=root)
    with checked_client(create_app({"copy": c})) as cl:
        assert_json_error(cl.get("/api/caches/copy/image/0"), 403, "forbidden")
        assert cl.get("/api/caches/copy/image/1").status_code == 200
        assert_json_error(cl.get("/api/caches/copy/image/2"), 404)
        assert cl.get("/api/caches/copy/thumb/0").status_code == 200  # thumbnails live in the cache


def test_token_required_when_configured(small_cache):
    with checked_client(create_app({"small": small_cache}, token="s3cret-token")) as cl:
        for url in ("/api/caches", "/", "/static/app.js", "/api/caches/small/thumb/0"):
            assert_json_error(cl.get(url), 401, "unauthorized")
        assert_json_error(cl.get("/api/caches", params={"token": "wrong"}), 401)
        assert_json_error(cl.get("/api/caches", headers={"Authorization": "Bearer nope"}), 401)
        r = cl.get("/api/caches", params={"token": "s3cret-token"})
        assert r.status_code == 200 and "vfsearch_token=s3cret-token" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"]
        assert (
            cl.get("/api/caches", headers={"Authorization": "Bearer s3cret-token"}).status_code
            == 200
        )
        cl.cookies.set("vfsearch_token", "s3cret-token")
        assert cl.get("/api/caches").status_code == 200
        assert cl.get("/").status_code == 200


def test_rank_window(client, small_cache):
    i = ids_of(small_cache, "rocket")[0]
    j = client.post(
        "/api/search",
        json={"cache": "small", "image": {"id": i}, "box": [100, 50, 300, 300], "k": 4},
    ).json()
    sid = j["search_id"]
    top = client.get(f"/api/searches/{sid}/window", params={"start": 0, "stop": 4}).json()
    assert [x["id"] for x in top["items"]] == [x["id"] for x in j["matches"]]
    w = client.get(f"/api/searches/{sid}/window", params={"start": 5, "stop": 10}).json()
    assert w["total"] == 17 and [x["rank"] for x in w["items"]] == [6, 7, 8, 9, 10]
    sc = [x["score"] for x in w["items"]]
    assert sc == pytest.approx(j["curve"]["scores"][5:10], abs=1e-4)
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(sc))
    assert not ({x["id"] for x in w["items"]} & {x["id"] for x in j["matches"]})
    for x in w["items"]:  # each has its own match location
        x0, y0, x1, y1 = x["box"]
        assert 0 <= x0 < x1 <= x["image_size"][0] and 0 <= y0 < y1 <= x["image_size"][1]
    tail = client.get(
        f"/api/searches/{sid}/window", params={"start": 0, "stop": 17, "limit": 5}
    ).json()
    assert [x["rank"] for x in tail["items"]] == [1, 5, 9, 13, 17]
    past = client.get(f"/api/searches/{sid}/window", params={"start": 30, "stop": 40}).json()
    assert past["items"] == []
    only = client.get(
        f"/api/searches/{sid}/window",
        params={"start": 0, "stop": 10, "column": "label", "value": "cat"},
    ).json()
    assert only["total"] == 3 and {x["label"] for x in only["items"]} == {"cat"}
    heat = client.get(
        f"/api/searches/{sid}/heat",
        params={"ids": f"{j['matches'][0]['id']},{w['items'][0]['id']}"},
    ).json()
    _r0, _c0, h, ww = heat["cell_box"]
    mp = np.array(heat["maps"][str(j["matches"][0]["id"])])
    assert mp.shape == (7 - h + 1, 7 - ww + 1)
    assert mp.max() == pytest.approx(j["matches"][0]["score"], abs=1e-3)
    a, b = j["matches"][0]["offset"]
    assert mp[a, b] == pytest.approx(mp.max(), abs=1e-6)
    assert_json_error(client.get(f"/api/searches/{sid}/heat", params={"ids": "x"}), 400)


def test_export(client):
    j = client.post(
        "/api/search",
        json={"cache": "small", "image": {"id": 6}, "box": [100, 80, 300, 250], "k": 5},
    ).json()
    r = client.get(f"/api/searches/{j['search_id']}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    lines = r.text.strip().splitlines()
    assert lines[0].startswith("rank,id,score,path,label") and len(lines) == 6
    r = client.get(f"/api/searches/{j['search_id']}/export", params={"format": "json", "k": 12})
    body = r.json()
    assert body["layer"] == "blocks.15" and len(body["matches"]) == 12
    assert [m["id"] for m in body["matches"][:5]] == [m["id"] for m in j["matches"]]
    assert_json_error(
        client.get(f"/api/searches/{j['search_id']}/export", params={"format": "xml"}), 400
    )


def test_upload_and_search(client, small_cache, sample_dir):
    i = ids_of(small_cache, "cat")[0]
    data = (sample_dir / str(small_cache.paths[i])).read_bytes()
    r = client.post("/api/uploads", files={"file": ("kitty.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["size"] == list(small_cache.image_size(i)) and up["name"] == "kitty.jpg"
    assert client.get(f"/api/uploads/{up['upload']}").json()["size"] == up["size"]
    img = client.get(f"/api/uploads/{up['upload']}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    w, h = up["size"]
    for region in (
        {"box": [w * 0.25, h * 0.2, w * 0.65, h * 0.8]},
        {"whole": True},
        {"mask": {"png": png_b64(np.pad(np.ones((40, 60)), ((20, 40), (30, 60))))}},
    ):
        r = client.post(
            "/api/search",
            json={"cache": "small", "image": {"upload": up["upload"]}, "k": 3, **region},
        )
        assert r.status_code == 200, (region, r.text)
        m = r.json()["matches"]
        assert m[0]["id"] == i and m[0]["score"] > 0.95  # the same picture, not excluded
        assert {x["label"] for x in m} == {"cat"}
    assert_json_error(
        client.post("/api/uploads", files={"file": ("x.jpg", b"not an image", "image/jpeg")}),
        400,
        "bad_image",
    )
    big = b"\0" * (20 * 2**20 + 10)
    assert_json_error(
        client.post("/api/uploads", files={"file": ("big.jpg", big, "image/jpeg")}), 413
    )


def test_compare_across_caches(small_cache, tmp_path):
    """The same query image in another cache is found by path; a cache without it says so."""
    import zarr

    shutil.copytree(small_cache.path, tmp_path / "other")
    g = zarr.open_group(str(tmp_path / "other"), mode="r+")
    paths = g["images/path"][:]
    paths[0] = "renamed/elsewhere.jpg"
    g["images/path"][:] = paths
    other = open_cache(tmp_path / "other")
    with checked_client(create_app({"a": small_cache, "b": other})) as cl:
        body = {
            "cache": "b",
            "layer": "blocks.10",
            "image": {"id": 1, "cache": "a"},
            "box": [50, 50, 250, 250],
            "k": 3,
        }
        r = cl.post("/api/search", json=body)
        assert r.status_code == 200 and r.json()["query"]["image"]["id"] == 1
        assert_json_error(
            cl.post("/api/search", json={**body, "image": {"id": 0, "cache": "a"}}), 404
        )
        assert cl.get("/api/caches/b/lookup", params={"from_cache": "a", "id": 3}).json()["id"] == 3


def test_rle_roundtrip():
    m = np.zeros((17, 23), np.float32)
    m[3:9, 4:20] = 1
    m[10:12, 2:5] = 7 / 15
    assert np.allclose(decode_rle(encode_rle(m)), m)
    for bad in ("3.3.A", "3.3.A9!", "x.y.A", "2.2.Z4"):
        with pytest.raises(BadMask):
            decode_rle(bad)


def test_static_page(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>vfsearch</title>" in r.text
    for f in ("js/main.js", "brush.js", "style.css"):
        assert client.get(f"/static/{f}").status_code == 200


def test_serve_prints_url_and_token(small_cache, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets=None: calls.append(sockets[0].getsockname()))
    port = _free_port()
    serve([small_cache.path], host="127.0.0.1", port=port)
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/" in err and "token=" not in err
    assert calls[-1] == ("127.0.0.1", port)  # bound (and listening) before it was announced
    serve([small_cache.path], host="0.0.0.0", port=port)
    err = capsys.readouterr().err
    assert "?token=" in err and calls[-1][0] == "0.0.0.0"
    serve([small_cache.path], host="0.0.0.0", port=port, token="given")
    assert "?token=given" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so(small_cache, monkeypatch, capsys):
    """One clear line, exit code 2, and no URL announced for a server that never ran."""
    import uvicorn
    from click.testing import CliRunner

    from vfsearch.cli import main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(BadParameter, match="already in use") as e:
            serve([small_cache.path], host="127.0.0.1", port=port)
        assert e.value.param == "port"
        assert "open http" not in capsys.readouterr().err
        r = CliRunner().invoke(main, ["serve", str(small_cache.path), "--port", str(port)])
    assert r.exit_code == 2
    assert f"error: --port: port {port} on 127.0.0.1 is already in use" in r.output
    assert "open http" not in r.output


# -- a real server under load -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(app):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t = time.time()
    while not server.started:
        assert time.time() - t < 20 and th.is_alive(), "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    th.join(10)


def test_concurrent_clients(live_server, small_cache):
    import httpx

    n_clients, n_each = 20, 50
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(c: int):
        rng = np.random.default_rng(c)
        with httpx.Client(base_url=live_server, timeout=60) as h:
            for _ in range(n_each):
                i = int(rng.integers(len(small_cache)))
                w, hh = small_cache.image_size(i)
                x0, y0 = rng.uniform(0.15, 0.5) * w, rng.uniform(0.15, 0.5) * hh
                body = {
                    "cache": "small",
                    "image": {"id": i},
                    "k": 10,
                    "layer": "blocks.15" if rng.random() < 0.7 else "blocks.10",
                    "box": [x0, y0, x0 + 0.3 * w, y0 + 0.3 * hh],
                }
                t = time.perf_counter()
                try:
                    r = h.post("/api/search", json=body)
                    ok = r.status_code == 200 and len(r.json()["matches"]) == 10
                    if not ok:
                        with lock:
                            errors.append(f"{r.status_code}: {r.text[:200]}")
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(repr(e))
                with lock:
                    lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(n_clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    assert not errors, errors[:5]
    assert len(lat) == n_clients * n_each
    ms = sorted(x * 1e3 for x in lat)
    p50, p95 = statistics.median(ms), ms[int(0.95 * len(ms)) - 1]
    print(
        f"\n{n_clients} clients × {n_each} searches: p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"{len(ms) / wall:.0f} searches/s"
    )
    # the server stays responsive while searches run: a health check answers promptly
    import httpx as _h

    assert _h.get(live_server + "/api/health").status_code == 200
