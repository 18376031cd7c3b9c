"""What a local server users trust refuses: foreign Host names (DNS rebinding), cross-site and
non-JSON state-changing requests; and what it still accepts (its own page, reverse proxies)."""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from vfsearch.server import create_app, serve
from vfsearch.server.security import allowed_hosts, host_allowed, is_loopback, split_host

SEARCH = {"cache": "small", "image": {"id": 0}, "whole": True, "k": 2}


@pytest.fixture(scope="module")
def app(small_cache):
    return create_app({"small": small_cache})


def client(app, host: str = "127.0.0.1:8000") -> TestClient:
    return TestClient(app, base_url=f"http://{host}")


def refused(r, status: int, param: str):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["param"] == param and body["message"], body
    return body


def test_loopback_names():
    for h in (
        "localhost",
        "LOCALHOST",
        "localhost.",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "[::1]",
        "ip6-localhost",
    ):
        assert is_loopback(h), h
    for h in ("0.0.0.0", "example.org", "localhost.example.org", "192.168.1.2", "", "::"):
        assert not is_loopback(h), h
    assert split_host("[::1]:8000") == ("::1", "8000")
    assert split_host("Example.ORG.:80") == ("example.org", "80")
    assert split_host("::1") == ("::1", None)


def test_foreign_host_is_refused(app):
    for host in (
        "evil.example.com",
        "evil.example.com:8000",
        "localhost.evil.com",
        "127.0.0.1.nip.io",
        "testserver",
    ):
        with client(app, host) as c:
            refused(c.get("/api/caches"), 403, "Host")
            refused(c.get("/"), 403, "Host")
            refused(c.post("/api/search", json=SEARCH), 403, "Host")
    for host in ("localhost:8000", "127.0.0.1:8765", "[::1]:8000", "localhost"):
        with client(app, host) as c:
            assert c.get("/api/caches").status_code == 200, host


def test_bound_address_and_allowed_hosts(small_cache):
    names, patterns = allowed_hosts("192.168.7.9")
    assert host_allowed("192.168.7.9", names, patterns)
    assert not host_allowed("192.168.7.10", names, patterns)
    names, patterns = allowed_hosts("0.0.0.0")  # every interface: any literal address
    assert host_allowed("10.1.2.3", names, patterns) and host_allowed("fe80::1", names, patterns)
    assert not host_allowed("rebound.example.com", names, patterns)
    names, patterns = allowed_hosts(None, ["search.example.org", "*.lab.example.org"])
    assert host_allowed("search.example.org", names, patterns)
    assert host_allowed("gpu3.lab.example.org", names, patterns)
    assert not host_allowed("lab.example.org.evil.com", names, patterns)
    assert host_allowed("anything", *allowed_hosts(None, ["*"]))

    app = create_app({"small": small_cache}, host="192.168.7.9", allow_hosts=["proxy.example.org"])
    for host in ("192.168.7.9:8000", "proxy.example.org", "localhost:8000"):
        with client(app, host) as c:
            assert c.get("/api/health").status_code == 200, host
    with client(app, "other.example.org") as c:
        refused(c.get("/api/health"), 403, "Host")


def test_serve_and_the_cli_pass_allowed_hosts(small_cache, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    import vfsearch.server as server
    from vfsearch.cli.serve import serve_cmd

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets=None: apps.append(self.config.app))
    serve([small_cache.path], port=0, allow_hosts=["vfs.example.org"])
    with client(apps[-1], "vfs.example.org") as c:
        assert c.get("/api/health").status_code == 200
    with client(apps[-1], "evil.example.org") as c:
        refused(c.get("/api/health"), 403, "Host")

    calls = []
    monkeypatch.setattr(server, "serve", lambda *a, **kw: calls.append(kw))
    r = CliRunner().invoke(
        serve_cmd,
        [str(small_cache.path), "--allow-host", "a.example.org", "--allow-host", "*.b.example.org"],
    )
    assert r.exit_code == 0, r.output
    assert calls[-1]["allow_hosts"] == ["a.example.org", "*.b.example.org"]


def test_cross_site_posts_are_refused(app):
    with client(app) as c:
        # a page on another site posting a "simple" request (no CORS preflight)
        refused(
            c.post(
                "/api/search",
                content=b'{"cache": "small"}',
                headers={"content-type": "text/plain", "origin": "http://evil.example.com"},
            ),
            403,
            "Origin",
        )
        refused(
            c.post("/api/search", json=SEARCH, headers={"origin": "http://evil.example.com"}),
            403,
            "Origin",
        )
        refused(c.post("/api/search", json=SEARCH, headers={"origin": "null"}), 403, "Origin")
        refused(
            c.post("/api/search", json=SEARCH, headers={"origin": "http://127.0.0.1:9999"}),
            403,
            "Origin",
        )  # another local app on another port
        refused(
            c.post("/api/search", json=SEARCH, headers={"sec-fetch-site": "cross-site"}),
            403,
            "Origin",
        )
        refused(
            c.post("/api/caches/small/map", headers={"origin": "http://evil.example.com"}),
            403,
            "Origin",
        )
        refused(
            c.post(
                "/api/uploads",
                files={"file": ("x.jpg", b"x", "image/jpeg")},
                headers={"origin": "https://evil.example.com"},
            ),
            403,
            "Origin",
        )
        # a form post, even from the app's own origin: not JSON
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            refused(
                c.post(
                    "/api/search",
                    content=b"cache=small",
                    headers={"content-type": ctype, "origin": "http://127.0.0.1:8000"},
                ),
                415,
                "Content-Type",
            )
        refused(
            c.post("/api/search", content=b'{"cache": "small"}', headers={"content-type": ""}),
            415,
            "Content-Type",
        )
        # reading is not state-changing: a cross-site GET is answered (the browser keeps the
        # answer from the other site's page, as for any GET without CORS headers)
        assert (
            c.get("/api/health", headers={"origin": "http://evil.example.com"}).status_code == 200
        )
        assert "access-control-allow-origin" not in c.get("/api/health").headers


def test_same_origin_posts_work(app, small_cache, sample_dir):
    with client(app) as c:
        for headers in ({}, {"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}):
            r = c.post("/api/search", json=SEARCH, headers=headers)
            assert r.status_code == 200, r.text
        r = c.post(
            "/api/search",
            content=b'{"cache": "small", "image": {"id": 0}, "whole": true}',
            headers={
                "content-type": "application/json; charset=utf-8",
                "origin": "http://127.0.0.1:8000",
            },
        )
        assert r.status_code == 200, r.text
        data = (sample_dir / str(small_cache.paths[0])).read_bytes()
        r = c.post(
            "/api/uploads",
            files={"file": ("q.jpg", data, "image/jpeg")},
            headers={"origin": "http://127.0.0.1:8000"},
        )
        assert r.status_code == 200, r.text
        # a POST without a body (the page's "compute the map") passes the guards
        r = c.post("/api/caches/nope/map", headers={"origin": "http://127.0.0.1:8000"})
        assert r.status_code == 404 and r.json()["param"] == "cache"
    with client(app, "localhost") as c:  # default port on both sides
        r = c.post("/api/search", json=SEARCH, headers={"origin": "http://localhost"})
        assert r.status_code == 200, r.text
    # behind a TLS-terminating proxy the origin is https and the Host the proxy's name
    proxied = create_app({"small": small_cache}, allow_hosts=["vfs.example.org"])
    with client(proxied, "vfs.example.org:443") as c:
        r = c.post("/api/search", json=SEARCH, headers={"origin": "https://vfs.example.org"})
        assert r.status_code == 200, r.text


def test_token_is_checked_after_host_and_built_by_the_error_mapping(small_cache):
    app = create_app({"small": small_cache}, token="t0ken", host="0.0.0.0")
    with client(app, "10.0.0.5:8000") as c:
        r = c.get("/api/caches")
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "unauthorized" and set(r.json()) == {"error", "message"}
        assert c.get("/api/caches", params={"token": "t0ken"}).status_code == 200
    with client(app, "rebound.example.com") as c:
        refused(c.get("/api/caches", params={"token": "t0ken"}), 403, "Host")
