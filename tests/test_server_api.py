"""The web API is declared: every route is in the published OpenAPI document, real responses
match it, validation errors name their field, and the server package has no import cycle."""

from __future__ import annotations

import ast
import base64
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient
from server_schema import LOCAL, SchemaChecker
from starlette.routing import Mount, Route

from vfsearch.server import create_app

SERVER = Path(__file__).resolve().parents[1] / "src" / "vfsearch" / "server"


@pytest.fixture(scope="module")
def app(small_cache):
    return create_app({"small": small_cache})


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client):
    r = client.get("/api/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def operations(doc) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


def test_openapi_document_lists_every_route(app, doc, client):
    assert doc["openapi"].startswith("3.")
    ops = operations(doc)
    routes = set()

    def walk(rs):
        for r in rs:
            if isinstance(r, Mount):
                routes.add(("GET", f"{r.path}/{{file}}"))
            elif isinstance(r, (APIRoute, Route)):
                if r.path != "/api/openapi.json":  # the document itself
                    routes.update((m, r.path) for m in r.methods if m != "HEAD")
            else:  # an included router (FastAPI ≥ 0.16x keeps them as one route each)
                inner = getattr(r, "original_router", None) or getattr(r, "router", None)
                assert inner is not None, f"unknown kind of route {r!r}"
                walk(inner.routes)

    walk(app.routes)
    assert {p for _, p in routes} >= {"/api/search", "/api/explain/methods", "/static/{file}"}
    assert routes <= ops, sorted(routes - ops)
    documented_paths = {p for _, p in ops}
    assert documented_paths == {p for _, p in routes}
    # only the app's own document: no interactive docs, not at FastAPI's default URL
    for url in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(url).status_code == 404
    # binary routes say what they send
    media = {
        p: set(op["responses"]["200"].get("content", {}))
        for p, ops_ in doc["paths"].items()
        for op in ops_.values()
        if "200" in op["responses"]
    }
    assert media["/api/caches/{name}/thumb/{image_id}"] == {"image/jpeg"}
    assert media["/api/caches/{name}/map/atlas/{page}"] == {"image/jpeg"}
    assert media["/api/caches/{name}/map/grid.bin"] == {"application/octet-stream"}
    assert media["/api/searches/{sid}/scores"] == {"application/octet-stream"}
    assert media["/api/searches/{sid}/order"] == {"application/octet-stream"}
    assert media["/api/searches/{sid}/export"] == {"application/json", "text/csv"}
    # request validation errors are documented as the app's 400 error body, not FastAPI's 422
    search = doc["paths"]["/api/search"]["post"]
    assert "422" not in search["responses"] and "400" in search["responses"]
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SearchRequest"
    )


def png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_real_responses_match_the_published_schema(client, doc, small_cache, sample_dir):
    """One or more real requests to every documented operation; each response (success and
    error) is checked against the document."""
    sc = SchemaChecker(doc)
    get = lambda url, tpl, **kw: sc.check(client.get(url, **kw), tpl)  # noqa: E731

    get("/api/health", "/api/health")
    get("/api/caches", "/api/caches")
    get("/api/caches/small/images", "/api/caches/{name}/images", params={"limit": 4})
    get("/api/caches/small/images", "/api/caches/{name}/images", params={"limit": 0})
    get("/api/caches/small/random", "/api/caches/{name}/random")
    get("/api/caches/small/images/3", "/api/caches/{name}/images/{image_id}")
    get("/api/caches/small/images/99", "/api/caches/{name}/images/{image_id}")
    get(
        "/api/caches/small/lookup",
        "/api/caches/{name}/lookup",
        params={"from_cache": "small", "id": 2},
    )
    r = get("/api/caches/small/thumb/2", "/api/caches/{name}/thumb/{image_id}")
    get(
        "/api/caches/small/thumb/2",
        "/api/caches/{name}/thumb/{image_id}",
        headers={"If-None-Match": r.headers["etag"]},
    )
    get("/api/caches/small/image/2", "/api/caches/{name}/image/{image_id}")

    data = (sample_dir / str(small_cache.paths[4])).read_bytes()
    up = sc.check(
        client.post("/api/uploads", files={"file": ("q.jpg", data, "image/jpeg")}), "/api/uploads"
    ).json()
    assert set(up["geometry"]) == {"small"}
    sc.check(
        client.post("/api/uploads", files={"file": ("x.jpg", b"nope", "image/jpeg")}),
        "/api/uploads",
    )
    get(f"/api/uploads/{up['upload']}", "/api/uploads/{uid}")
    get(f"/api/uploads/{up['upload']}/image", "/api/uploads/{uid}/image")
    get("/api/uploads/nope/image", "/api/uploads/{uid}/image")

    w, h = small_cache.image_size(0)
    m = np.zeros((h // 4, w // 4))
    m[10:30, 10:40] = 1
    for body in (
        {"cache": "small", "image": {"id": 0}, "box": [20, 20, 200, 200], "k": 4, "thumbs": True},
        {"cache": "small", "image": {"id": 0}, "mask": {"png": png_b64(m)}, "k": 3},
        {
            "cache": "small",
            "layer": "blocks.10",
            "image": {"upload": up["upload"]},
            "whole": True,
            "k": 3,
            "filter": {"column": "label", "value": "cat"},
        },
        {"cache": "small", "image": {"id": 0}, "k": 3},
    ):
        sc.check(client.post("/api/search", json=body), "/api/search")
    s = sc.check(
        client.post(
            "/api/search",
            json={"cache": "small", "image": {"id": 1}, "box": [40, 40, 260, 260], "k": 5},
        ),
        "/api/search",
    ).json()
    sid = s["search_id"]
    assert s["matches"][0]["carry"]["matrix"][1:3] == [0.0, 0.0]
    get(
        f"/api/searches/{sid}/window",
        "/api/searches/{sid}/window",
        params={"start": 2, "stop": 9, "thumbs": 1},
    )
    get(
        f"/api/searches/{sid}/heat",
        "/api/searches/{sid}/heat",
        params={"ids": ",".join(str(x["id"]) for x in s["matches"][:3])},
    )
    get(f"/api/searches/{sid}/heat", "/api/searches/{sid}/heat", params={"ids": ""})
    get(f"/api/searches/{sid}/export", "/api/searches/{sid}/export", params={"k": 7})
    get(f"/api/searches/{sid}/export", "/api/searches/{sid}/export", params={"format": "csv"})
    get(f"/api/searches/{sid}/scores", "/api/searches/{sid}/scores")
    get(f"/api/searches/{sid}/order", "/api/searches/{sid}/order")
    get("/api/overlap", "/api/overlap", params={"a": sid, "b": sid})
    get("/api/caches/small/map", "/api/caches/{name}/map", params={"method": "umap"})
    get("/api/caches/small/map/grid.bin", "/api/caches/{name}/map/grid.bin")
    get("/api/caches/small/map/atlas/0", "/api/caches/{name}/map/atlas/{page}")
    sc.check(client.post("/api/caches/nope/map"), "/api/caches/{name}/map")
    # concepts (none stored in the shared cache; no discovery is started on it)
    get("/api/caches/small/concepts", "/api/caches/{name}/concepts")
    get("/api/caches/small/concepts/sheet", "/api/caches/{name}/concepts/sheet")
    get("/api/caches/small/concepts/sheet/0", "/api/caches/{name}/concepts/sheet/{k}")
    sc.check(client.post("/api/caches/nope/concepts"), "/api/caches/{name}/concepts")
    get("/api/jobs/nope", "/api/jobs/{jid}")
    methods = get("/api/explain/methods", "/api/explain/methods").json()["methods"]
    assert {"exact", "feature", "occlusion", "rise"} <= {m["name"] for m in methods}
    ex = sc.check(
        client.post(
            f"/api/searches/{sid}/explain", json={"id": s["matches"][0]["id"], "method": "feature"}
        ),
        "/api/searches/{sid}/explain",
    ).json()
    assert ex["status"] == "done" and ex["result"]["method"] == "feature"
    sc.check(
        client.post(f"/api/searches/{sid}/explain", json={"id": 0, "method": "nope"}),
        "/api/searches/{sid}/explain",
    )
    get("/", "/")
    get("/favicon.ico", "/favicon.ico")
    get("/static/brush.js", "/static/{file}")
    get("/static/nope.js", "/static/{file}")

    assert sc.seen == operations(doc), sorted(operations(doc) - sc.seen)


def test_explain_methods_come_from_the_explainers(client):
    from vfsearch.explain import METHODS, method_info

    got = client.get("/api/explain/methods").json()["methods"]
    assert got == method_info()
    assert {m["name"]: m["runs_model"] for m in got} == {
        n: c.runs_model for n, c in METHODS.items()
    }
    s = client.post(
        "/api/search", json={"cache": "small", "image": {"id": 0}, "whole": True, "k": 2}
    ).json()
    url = f"/api/searches/{s['search_id']}/explain"
    rid = s["matches"][0]["id"]
    for params, field in (
        ({"window": 2}, "params.window"),
        ({"mode": "sideways"}, "params.mode"),
        ({"bogus": 1}, "params.bogus"),
        ({"window": "big"}, "params.window"),
    ):
        r = client.post(url, json={"id": rid, "method": "occlusion", "params": params})
        assert r.status_code == 400 and r.json()["param"] == field, (params, r.text)
    r = client.post(url, json={"id": rid, "method": "haruspex"})
    assert r.status_code == 400 and r.json()["param"] == "method"
    r = client.post(url, json={"id": rid, "method": "exact", "params": {"top_channels": 2}})
    assert r.status_code == 200 and len(r.json()["result"]["top_channels"]) == 2


def error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= {"error", "message", "param"} and body["message"], body
    if param is not None:
        assert body.get("param") == param, body
    if code is not None:
        assert body["error"] == code, body
    return body


def test_validation_errors_name_the_field(client):
    base = {"cache": "small", "image": {"id": 0}, "whole": True, "k": 3}
    post = lambda **kw: client.post("/api/search", json={**base, **kw})  # noqa: E731
    error(post(k=0), 400, "k", "bad_parameter")
    error(post(k="5"), 400, "k")
    error(post(k=2.5), 400, "k")
    error(post(image=1), 400, "image")
    error(post(image={"id": "abc"}), 400, "image.id")
    error(post(image={"id": 0, "colour": "red"}), 400, "image.colour")
    error(post(filter=1.5), 400, "filter")
    error(post(filter={"column": "colour", "value": "x"}), 404, "filter.column")
    error(post(filter={"column": "label"}), 400, "filter.value")
    error(post(whole="", thumbs=True), 400, "whole")
    error(post(box=[1, 2, 3]), 400, "box")
    error(post(box=[0, 0, 10, 10]), 400, "box", "bad_query")  # box and whole: give no box
    error(post(layer=["blocks.10"]), 400, "layer")
    error(post(layer="blocks.99"), 404, "layer")
    error(post(cache="nope"), 404, "cache")
    error(post(exclude_self="no"), 400, "exclude_self")
    error(post(surprise=1), 400, "surprise")
    error(post(mask={"png": 3}), 400, "mask.png")
    error(post(whole=None, mask={"data": [[0, 0], [0, 0]]}), 400, "mask", "bad_mask")
    error(
        client.post("/api/search", content=b"[1, 2]", headers={"content-type": "application/json"}),
        400,
    )
    error(
        client.post(
            "/api/search",
            content=b'{"cache": "small", "k": NaN}',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    error(
        client.post("/api/search", content=b"{oops", headers={"content-type": "application/json"}),
        400,
    )
    error(client.post("/api/search"), 400)
    error(client.get("/api/caches/small/images", params={"offset": "x"}), 400, "offset")
    error(client.get("/api/caches/small/images", params={"limit": 10**30}), 400, "limit")
    error(client.get("/api/caches/small/thumb/1.5"), 404, "image_id")
    error(client.get("/api/caches/small/lookup", params={"from_cache": "small"}), 400, "id")
    error(client.get("/api/searches/x/export", params={"format": "xml"}), 400, "format")
    error(client.get("/api/caches/small/map", params={"method": "pca"}), 400, "method")
    error(client.post("/api/uploads"), 400, "file")


def test_search_leaves_out_the_thumbnails_the_page_holds(client):
    """``known``: the ids whose thumbnails the page already holds are not sent inline again;
    the rest are, and the matches are the same either way."""
    body = {"cache": "small", "image": {"id": 0}, "box": [20, 20, 200, 200], "k": 6,
            "thumbs": True}
    full = client.post("/api/search", json=body).json()
    ids = [m["id"] for m in full["matches"]]
    assert set(full["thumbs"]) == {str(i) for i in ids}
    held = ids[::2] + [10**6]  # an id the cache does not have is simply not a match
    part = client.post("/api/search", json={**body, "known": held}).json()
    assert [m["id"] for m in part["matches"]] == ids
    assert set(part["thumbs"]) == {str(i) for i in ids[1::2]}
    assert part["thumbs"] == {k: v for k, v in full["thumbs"].items() if int(k) not in held}
    error(client.post("/api/search", json={**body, "known": [-1]}), 400, "known.0")
    error(client.post("/api/search", json={**body, "known": list(range(2001))}), 400, "known")


def test_a_failed_job_keeps_its_error_code(client, app):
    import time

    from vfsearch.errors import BadParameter

    jobs = app.state.views.jobs

    def fail(job):
        raise BadParameter("window too small", param="window")

    def crash(job):
        raise RuntimeError("boom")

    j1 = jobs.start("explain", ("t", 1), fail)
    j2 = jobs.start("explain", ("t", 2), crash)
    t = time.time()
    while j1.status == "running" or j2.status == "running":
        assert time.time() - t < 10
        time.sleep(0.01)
    a = client.get(f"/api/jobs/{j1.id}").json()
    assert a["status"] == "error" and a["error"] == "window too small"
    assert a["code"] == "bad_parameter" and a["param"] == "window"
    b = client.get(f"/api/jobs/{j2.id}").json()
    assert b["status"] == "error" and b["code"] == "internal" and "boom" in b["error"]


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``vfsearch.server`` that ``path`` imports (at any depth in the file)."""
    mod = package + "." + ".".join(path.relative_to(SERVER).with_suffix("").parts)
    mod = mod.removesuffix(".__init__")
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = mod.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith(package)}
    return out


def test_server_modules_have_no_import_cycle():
    package = "vfsearch.server"
    files = sorted(SERVER.rglob("*.py"))
    mods = {}
    for f in files:
        name = package + "." + ".".join(f.relative_to(SERVER).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    graph = {m: {t for t in _imports(f, package) if t in mods and t != m} for m, f in mods.items()}
    assert graph["vfsearch.server.app"] >= {"vfsearch.server.routes", "vfsearch.server.http"}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph[m]:
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " → ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])
    assert "vfsearch.server.app" not in set().union(
        *(graph[m] for m in graph if m.startswith(package + ".routes"))
    )
    assert "vfsearch.server.app" not in graph["vfsearch.server.views"]


def test_route_modules_import_on_their_own():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    mods = ["vfsearch.server.routes.views", "vfsearch.server.views", "vfsearch.server.app"]
    r = subprocess.run(
        [sys.executable, "-c", code, *mods], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
