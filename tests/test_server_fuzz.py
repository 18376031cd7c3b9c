"""Property-based fuzzing of the web API: no input gives a 5xx, and every response is valid
against the published OpenAPI document.

* schemathesis generates schema-valid and schema-invalid requests for every operation of
  ``/api/openapi.json``; most cases are pointed at real resources (the open cache, a stored
  search, an upload, a finished job) so they reach the handlers, not only the 404s;
* hypothesis puts random JSON values into every field of a search body (and unknown fields),
  checking that a 4xx names the field that was wrong;
* hand-written hostile cases: the issue's bodies and odd query strings on the GET routes.

Hypothesis runs derandomized (the same cases every run) and without shrinking, so the runtime
is stable: ~1,300 requests in all (~650 of them from schemathesis).
"""

from __future__ import annotations

import collections
import shutil
import time
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# hypothesis keeps caches in ./.hypothesis by default: keep them with pytest's own
set_hypothesis_home_dir(Path(__file__).resolve().parents[1] / ".pytest_cache" / "hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from server_schema import SchemaChecker  # noqa: E402

from vfsearch.server import create_app  # noqa: E402
from vfsearch.server.openapi import OPENAPI_URL  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# per operation: schema-valid cases (they reach the handlers) and schema-invalid ones (they
# exercise the request models' refusals)
EXAMPLES = {"positive": 16, "negative": 12}
HOST = "testserver"  # the Host schemathesis' ASGI client sends: allowed explicitly
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FAST = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.fixture(scope="module")
def fuzz_app(small_cache, tmp_path_factory):
    """The app on a copy of the shared cache (nothing the fuzzer does can touch the original)."""
    from vfsearch import open_cache

    dst = tmp_path_factory.mktemp("fuzz") / "c"
    shutil.copytree(small_cache.path, dst)
    return create_app(
        {"small": open_cache(dst, image_root=small_cache.image_root)}, allow_hosts=[HOST]
    )


@pytest.fixture(scope="module")
def real(fuzz_app, small_cache, sample_dir):
    """Ids of real resources for the fuzzer to aim at."""
    with TestClient(fuzz_app, base_url=f"http://{HOST}") as c:
        s = c.post(
            "/api/search",
            json={"cache": "small", "image": {"id": 1}, "k": 5, "box": [40, 40, 260, 260]},
        ).json()
        data = (sample_dir / str(small_cache.paths[2])).read_bytes()
        up = c.post("/api/uploads", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    job = fuzz_app.state.views.jobs.start("map", ("fuzz",), lambda job: {"side": 1, "n": 1})
    t = time.time()
    while job.status == "running":
        assert time.time() - t < 10
        time.sleep(0.01)
    return {
        "name": "small",
        "sid": s["search_id"],
        "uid": up["upload"],
        "jid": job.id,
        "match": s["matches"][0]["id"],
    }


def _aim(case, real: dict, choice: int):
    """Point a generated case at real resources (3 times in 4), keeping its other values."""
    if choice == 0:
        return case
    label = f"{case.method.upper()} {case.operation.path}"
    if label in ("POST /api/caches/{name}/map", "POST /api/caches/{name}/concepts"):
        return case  # would start computing a map or concepts: keep it a 404
    for key in list(case.path_parameters or {}):
        if key in real:
            case.path_parameters[key] = real[key]
    body = case.body
    if isinstance(body, dict):
        if "cache" in body or choice == 2:
            body["cache"] = real["name"]
        if label.endswith("/explain"):
            from vfsearch.explain import METHODS

            if choice == 3:
                body["id"] = real["match"]
            m = body.get("method")
            if isinstance(m, str) and m in METHODS and METHODS[m].runs_model:
                body["method"] = "exact"  # keep the fuzzer off the model-running methods
    return case


def _fuzz(op, mode, real: dict, statuses: collections.Counter, failures: list[str]) -> None:
    """``EXAMPLES`` generated requests to one operation; each response checked."""
    strategy = st.tuples(op.as_strategy(generation_mode=mode), st.integers(0, 3))

    @settings(FAST, max_examples=EXAMPLES[mode.value])
    @given(pair=strategy)
    def run(pair):
        case = _aim(pair[0], real, pair[1])
        r = case.call()
        statuses[r.status_code] += 1
        try:
            case.validate_response(r, checks=CHECKS)
        except Exception as e:  # noqa: BLE001 - collected, reported below
            failures.append(f"{op.label} [{mode.value}] → {r.status_code}: {e}"[:1500])

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # no invalid input exists (an operation without parameters)


def test_fuzz_the_published_openapi_document(fuzz_app, real):
    schema = schemathesis.openapi.from_asgi(OPENAPI_URL, fuzz_app)
    statuses: collections.Counter = collections.Counter()
    failures: list[str] = []
    ops = 0
    t0 = time.perf_counter()
    for result in schema.get_all_operations():
        ops += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(result.ok(), mode, real, statuses, failures)
    seconds = time.perf_counter() - t0
    n = sum(statuses.values())
    five = sum(v for k, v in statuses.items() if k >= 500)
    print(
        f"\nfuzz: {n} requests over {ops} operations in {seconds:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}; 5xx: {five}"
    )
    assert not failures, "\n\n".join(failures[:10])
    assert five == 0
    assert n > 20 * ops and statuses[200] > 50  # it did reach the handlers


# -- random JSON in every field of a search body ------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
REGION = {"mask", "box", "whole"}
FIELDS = [
    "cache",
    "layer",
    "image",
    "box",
    "mask",
    "whole",
    "k",
    "exclude_self",
    "filter",
    "thumbs",
    "not_a_field",
]


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app):
    with TestClient(fuzz_app, base_url=f"http://{HOST}") as c:
        yield c


@pytest.fixture(scope="module")
def checker(fuzz_client):
    return SchemaChecker(fuzz_client.get(OPENAPI_URL).json())


def test_random_json_in_every_search_field(fuzz_client, checker):
    seen: collections.Counter = collections.Counter()

    @settings(FAST, max_examples=300)
    @given(field=st.sampled_from(FIELDS), value=JSON, image_id=st.integers(0, 17))
    def run(field, value, image_id):
        body = {"cache": "small", "image": {"id": image_id}, "k": 3}
        if field not in REGION:
            body["whole"] = True
        body[field] = value
        r = checker.check(fuzz_client.post("/api/search", json=body), "/api/search")
        seen[r.status_code] += 1
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            param = r.json().get("param")
            assert param, r.text  # every refusal names its field
            top = param.split(".")[0]
            assert top == field or (field in REGION and top in REGION), (field, value, r.text)

    run()
    assert seen[200] > 0 and sum(v for k, v in seen.items() if k >= 400) > 100, seen


# -- hand-written hostile cases -----------------------------------------------------------------

BASE = {"cache": "small", "image": {"id": 0}, "whole": True, "k": 3}
HOSTILE_BODIES = [
    ({"cache": "small", "image": 1}, "image"),
    ({**BASE, "filter": 1.5}, "filter"),
    ({**BASE, "whole": "", "thumbs": True}, "whole"),
    ({**BASE, "thumbs": "yes"}, "thumbs"),
    ({**BASE, "k": True}, "k"),
    ({**BASE, "k": 1e308}, "k"),
    ({**BASE, "image": {"id": 2**70}}, "image.id"),
    ({**BASE, "image": {"id": -1}}, "image.id"),
    ({**BASE, "image": {"upload": "../../etc/passwd"}}, "image.upload"),
    ({**BASE, "image": {"id": 0, "cache": "nope"}}, "image.cache"),
    ({**BASE, "image": {"id": None}}, "image"),
    ({**BASE, "image": []}, "image"),
    ({**BASE, "whole": None, "box": ["a", 1, 2, 3]}, "box.0"),
    ({**BASE, "whole": None, "box": [1e300, 1e300, 1e301, 1e301]}, "box"),
    ({**BASE, "whole": None, "mask": {}}, "mask"),
    ({**BASE, "whole": None, "mask": {"data": [[1, 2], [3]]}}, "mask"),
    ({**BASE, "whole": None, "mask": {"data": []}}, "mask"),
    ({**BASE, "whole": None, "mask": {"u8": "AAAA", "width": 2, "height": 2}}, "mask"),
    ({**BASE, "whole": None, "mask": {"u8": "AAAA", "width": 0, "height": 2}}, "mask.width"),
    ({**BASE, "whole": None, "mask": {"rle": "9999999.9999999.A"}}, "mask"),
    ({**BASE, "whole": None, "mask": {"png": "data:image/png;base64,%%%"}}, "mask"),
    ({**BASE, "whole": None, "mask": {"png": "iVBORw0KGgo="}}, "mask"),
    ({**BASE, "filter": {"column": "label", "value": {"$ne": 1}}}, "filter.value"),
    ({**BASE, "filter": {"column": ["label"]}}, "filter.column"),
    ({**BASE, "layer": ""}, None),  # empty = the default layer
    ({**BASE, "exclude_self": None}, "exclude_self"),
]


@pytest.mark.parametrize(
    "body,param", HOSTILE_BODIES, ids=[str(i) for i in range(len(HOSTILE_BODIES))]
)
def test_hostile_search_bodies(fuzz_client, checker, body, param):
    r = checker.check(fuzz_client.post("/api/search", json=body), "/api/search")
    if param is None:
        assert r.status_code == 200, r.text
    else:
        assert 400 <= r.status_code < 500 and r.json()["param"] == param, r.text


def test_hostile_raw_requests(fuzz_client, checker, real):
    c, sid = fuzz_client, real["sid"]
    cases = [
        ("POST", "/api/search", {"content": b"", "headers": {"content-type": "application/json"}}),
        (
            "POST",
            "/api/search",
            {"content": b"null", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/search",
            {"content": b'"x"', "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/search",
            {"content": b'{"k": Infinity}', "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/search",
            {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/search",
            {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/api/search", {"files": {"file": ("a", b"b")}}),
        ("POST", f"/api/searches/{sid}/explain", {"json": {"id": "0"}}),
        ("POST", f"/api/searches/{sid}/explain", {"json": {"id": 0, "params": []}}),
        ("POST", f"/api/searches/{sid}/explain", {"json": {"id": 0, "params": {"x": [1]}}}),
        (
            "POST",
            f"/api/searches/{sid}/explain",
            {"json": {"id": 0, "method": "rise", "params": {"p": 2.0}}},
        ),
        ("POST", "/api/uploads", {"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)}}),
        ("POST", "/api/uploads", {"files": {"file": ("", b"")}}),
        ("POST", "/api/uploads", {"files": {"other": ("x.jpg", b"x")}}),
    ]
    odd = [
        "offset=-1",
        "limit=1e3",
        "offset=%00",
        "q=%ff%fe",
        "column=label",
        "column=&value=",
        "limit=1&limit=2",
        "offset=99999999999999999999",
        "q=" + "a" * 1001,
        "thumbs=maybe",
        "start=-99999&stop=99999",
        "start=5&stop=2",
        "limit=0",
        "ids=1,,2",
        "ids=,",
        "ids=1;2",
        "ids=" + ",".join(["3"] * 201),
        "ids=99",
        "ids=-1",
        "k=-5",
        "k=0",
        "format=CSV",
        "format=json&k=100000",
        "method=tsne&layer=%2e%2e",
        "grid=2",
        "a=x&b=y",
        "from_cache=small&id=x",
        "from_cache=small&id=0",
        "id=0",
    ]
    gets = [
        "/api/caches/small/images",
        "/api/caches/small/random",
        f"/api/searches/{sid}/window",
        f"/api/searches/{sid}/heat",
        f"/api/searches/{sid}/export",
        "/api/caches/small/map",
        "/api/caches/small/map/grid.bin",
        "/api/caches/small/map/atlas/0",
        "/api/overlap",
        "/api/caches/small/lookup",
        "/api/caches/small/thumb/0",
    ]
    templates = {
        "/api/caches/small/images": "/api/caches/{name}/images",
        "/api/caches/small/random": "/api/caches/{name}/random",
        f"/api/searches/{sid}/window": "/api/searches/{sid}/window",
        f"/api/searches/{sid}/heat": "/api/searches/{sid}/heat",
        f"/api/searches/{sid}/export": "/api/searches/{sid}/export",
        f"/api/searches/{sid}/explain": "/api/searches/{sid}/explain",
        "/api/caches/small/map": "/api/caches/{name}/map",
        "/api/caches/small/map/grid.bin": "/api/caches/{name}/map/grid.bin",
        "/api/caches/small/map/atlas/0": "/api/caches/{name}/map/atlas/{page}",
        "/api/overlap": "/api/overlap",
        "/api/search": "/api/search",
        "/api/uploads": "/api/uploads",
        "/api/caches/small/lookup": "/api/caches/{name}/lookup",
        "/api/caches/small/thumb/0": "/api/caches/{name}/thumb/{image_id}",
    }
    statuses = collections.Counter()
    for method, url, kw in cases:
        r = checker.check(c.request(method, url, **kw), templates[url])
        statuses[r.status_code] += 1
        assert r.status_code < 500, (url, kw, r.text)
        assert r.status_code != 200 or url == "/api/uploads", (url, kw, r.text)
    for url in gets:
        for qs in odd:
            r = checker.check(c.get(f"{url}?{qs}"), templates[url])
            statuses[r.status_code] += 1
            assert r.status_code < 500, (url, qs, r.text)
            if r.status_code >= 400 and r.status_code != 404:
                assert r.json().get("param"), (url, qs, r.text)
    assert statuses[400] > 20, statuses
