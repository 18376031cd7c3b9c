"""Check real responses of the web app against its published OpenAPI document (test helper)."""

from __future__ import annotations

import re
import warnings

import jsonschema

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"  # a Host the app answers to (TestClient's default "testserver" is not)


class SchemaChecker:
    """``check(response, "/api/caches/{name}/images")``: the status is documented for that
    operation, the content type is one it declares, and a JSON body validates against the
    declared schema (OpenAPI 3.1 = JSON Schema 2020-12, ``$ref`` into the document)."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.seen: set[tuple[str, str]] = set()

    def schema_for(self, template: str, method: str, status: int, media: str) -> dict | None:
        op = self.doc["paths"][template][method.lower()]
        resp = op["responses"].get(str(status))
        assert resp is not None, f"{method} {template}: status {status} is not documented"
        content = resp.get("content")
        if not content:
            return None
        if media not in content:
            wild = [m for m in content if m.endswith("/*") and media.startswith(m[:-1])]
            assert wild or "*/*" in content, (
                f"{method} {template} {status}: {media} not among {sorted(content)}"
            )
            return None
        return content[media].get("schema")

    def check(self, r, template: str, method: str | None = None):
        method = (method or r.request.method).upper()
        self.seen.add((method, template))
        media = r.headers.get("content-type", "").split(";")[0].strip()
        schema = self.schema_for(template, method, r.status_code, media)
        if r.status_code in (204, 304):
            assert not r.content
            return r
        if media == "application/json" and schema is not None:
            root = {**schema, "components": self.doc.get("components", {})}
            jsonschema.Draft202012Validator(root).validate(r.json())
        return r


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$"
    )


def checked_client(app, base_url: str = LOCAL, **kw) -> TestClient:
    """A TestClient whose every response to a documented operation is checked against the
    app's OpenAPI document (undocumented paths, e.g. a 404 for ``/api/nothing``, are not)."""
    doc = app.openapi()
    checker = SchemaChecker(doc)
    templates = sorted(doc["paths"], key=lambda t: t.count("{"))  # literal paths first
    regexes = [(t, _template_regex(t)) for t in templates]

    def hook(response):
        path = response.request.url.raw_path.split(b"?")[0].decode("latin-1")
        method = response.request.method.lower()
        for t, rx in regexes:
            if rx.match(path) and method in doc["paths"][t]:
                response.read()
                checker.check(response, t)
                return

    client = TestClient(app, base_url=base_url, **kw)
    client.event_hooks = {"response": [hook]}
    return client


def poll_job(client, job: str, timeout: float = 120.0, every: float = 0.05) -> dict:
    """Poll ``/api/jobs/{job}`` until it is no longer running; its last record."""
    import time

    t = time.time()
    while True:
        r = client.get(f"/api/jobs/{job}")
        assert r.status_code == 200, r.text
        j = r.json()
        if j["status"] != "running":
            return j
        assert time.time() - t < timeout, j
        time.sleep(every)
