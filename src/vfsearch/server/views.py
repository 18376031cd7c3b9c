"""Extra views of the web app: the dataset map, result explanations and compare overlap.

Long computations (computing a map + its atlas, occlusion / RISE explanations) run as background
jobs in daemon threads; ``GET /api/jobs/{job}`` polls them. Everything here is plain Python over
:class:`~vfsearch.server.state.AppState`; ``add_routes`` wires the endpoints into the FastAPI app.

    GET  /api/caches/{cache}/map?layer&method&grid=1   map metadata (+ grid, flat JSON list) or
                                                       {"status": "missing"|"computing"|"no_atlas"}
    GET  /api/caches/{cache}/map/grid.bin?layer&method the grid, int32 little-endian (side×side)
    GET  /api/caches/{cache}/map/atlas/{page}?layer&method   atlas page JPEG (ETag, 304)
    POST /api/caches/{cache}/map?layer&method          compute map (+ atlas) in the background → 202
    GET  /api/jobs/{job}                               {status, progress, error?, result?}
    GET  /api/searches/{sid}/scores                    every image's score, float32 LE (-inf = none)
    GET  /api/searches/{sid}/order                     ids best first (the rank order of the
                                                       curve and its windows), int32 LE
    POST /api/searches/{sid}/explain  {id, method, params?}  exact/feature → 200 explanation;
                                                       occlusion/rise → 202 {job} (memoised)
    GET  /api/overlap?a=sid&b=sid                      shared images of two searches' top-k
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import traceback
import uuid

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import BadQuery, NotFound, VfsError

MAP_METHODS = ("tsne", "umap")
EXPLAIN_METHODS = ("exact", "feature", "occlusion", "rise")
SLOW_METHODS = ("occlusion", "rise")
PARAMS = {"occlusion": {"window": int, "stride": int, "mode": str, "batch_size": int, "auc_steps": int},
          "rise": {"n_masks": int, "p": float, "cells": int, "seed": int, "mode": str,
                   "batch_size": int, "auc_steps": int},
          "exact": {"top_channels": int, "patches": int}, "feature": {}}


def _clean(v):
    """JSON-safe copy (NaN/inf → None, numpy → Python)."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


class Job:
    def __init__(self, kind: str, key):
        self.id = uuid.uuid4().hex[:12]
        self.kind, self.key = kind, key
        self.status = "running"
        self.progress = 0.0
        self.error: str | None = None
        self.result = None
        self.started = time.time()
        self.finished: float | None = None

    def to_json(self, with_result: bool = True) -> dict:
        d = {"job": self.id, "kind": self.kind, "status": self.status,
             "progress": round(float(self.progress), 4),
             "seconds": round((self.finished or time.time()) - self.started, 2)}
        if self.error:
            d["error"] = self.error
        if with_result and self.status == "done" and self.result is not None:
            d["result"] = self.result
        return d


class Views:
    def __init__(self, state):
        self.state = state
        self.jobs: dict[str, Job] = {}
        self.by_key: dict = {}
        self.lock = threading.Lock()
        self.maps: dict = {}  # (cache, layer, method) -> (MapResult, atlas attrs) | None
        self.pages: dict = {}  # (cache, layer, method, page) -> (bytes, etag)
        self.slow = threading.Semaphore(1)

    # -- jobs -----------------------------------------------------------------------------
    def start_job(self, kind: str, key, fn) -> Job:
        """Run ``fn(job)`` in a daemon thread unless a job with ``key`` is running or done."""
        with self.lock:
            old = self.by_key.get(key)
            if old is not None and old.status in ("running", "done"):
                return old
            job = Job(kind, key)
            self.jobs[job.id] = job
            self.by_key[key] = job
            if len(self.jobs) > 256:  # forget the oldest finished jobs
                for jid in [j.id for j in self.jobs.values() if j.status != "running"][:64]:
                    jj = self.jobs.pop(jid)
                    if self.by_key.get(jj.key) is jj:
                        del self.by_key[jj.key]

        def run():
            try:
                job.result = fn(job)
                job.progress = 1.0
                job.status = "done"
            except Exception as e:  # noqa: BLE001
                job.status = "error"
                job.error = e.message if isinstance(e, VfsError) and getattr(e, "message", None) else \
                    f"{type(e).__name__}: {e}"
                if not isinstance(e, VfsError):
                    traceback.print_exc()
            finally:
                job.finished = time.time()

        threading.Thread(target=run, name=f"vfsearch-{kind}", daemon=True).start()
        return job

    def job(self, jid: str) -> dict:
        j = self.jobs.get(jid)
        if j is None:
            raise NotFound(f"no job {jid!r} (jobs are kept in memory only)")
        return j.to_json()

    # -- map --------------------------------------------------------------------------------
    def _key(self, name, layer, method):
        e = self.state.entry(name)
        layer = e.check_layer(layer)
        if method not in MAP_METHODS:
            raise BadQuery(f"map method must be one of {', '.join(MAP_METHODS)}")
        return e, layer, method

    def _load(self, e, layer, method):
        key = (e.name, layer, method)
        hit = self.maps.get(key)
        if hit is not None:
            return hit
        from ..embed import load_map

        m = load_map(e.cache, layer, method)
        if m is None:
            return None
        atlas = m.attrs.get("atlas")
        if not atlas or not atlas.get("complete"):
            return m, None  # no atlas yet: not memoised
        self.maps[key] = (m, atlas)
        return self.maps[key]

    def map_info(self, name, layer=None, method="tsne", grid: bool = True) -> tuple[int, dict]:
        e, layer, method = self._key(name, layer, method)
        job = self.by_key.get(("map", e.name, layer, method))
        running = job is not None and job.status == "running"
        hit = None if running else self._load(e, layer, method)
        base = {"cache": e.name, "layer": layer, "method": method}
        if running:
            return 200, {**base, "status": "computing", "job": job.to_json(False)}
        if hit is None or hit[1] is None:
            st = "missing" if hit is None else "no_atlas"
            out = {**base, "status": st}
            if job is not None and job.status == "error":
                out["job"] = job.to_json(False)
            return 200, out
        m, atlas = hit
        out = {**base, "status": "ready", "side": m.side, "n": m.n, "rows": m.rows,
               "stale": bool(m.stale), "tile": int(atlas.get("tile", 32)),
               "page_tiles": int(atlas.get("page_tiles", 64)),
               "pages_x": int(atlas.get("pages_x", 1)), "pages_y": int(atlas.get("pages_y", 1)),
               "background": list(atlas.get("background", [24, 24, 24])),
               "seconds": m.attrs.get("seconds"), "knn_preservation": m.attrs.get("knn_preservation"),
               "version": str(m.attrs.get("fingerprint", ""))}
        out["pages"] = out["pages_x"] * out["pages_y"]
        if grid:
            out["grid"] = m.grid.reshape(-1).tolist()
        return 200, out

    def map_grid(self, name, layer=None, method="tsne") -> tuple[bytes, int]:
        e, layer, method = self._key(name, layer, method)
        hit = self._load(e, layer, method)
        if hit is None:
            raise NotFound(f"no {method} map for layer {layer!r} of cache {e.name!r}")
        m = hit[0]
        return m.grid.astype("<i4").tobytes(), m.side

    def atlas(self, name, page: int, layer=None, method="tsne") -> tuple[bytes, str]:
        e, layer, method = self._key(name, layer, method)
        key = (e.name, layer, method, int(page))
        hit = self.pages.get(key)
        if hit is not None:
            return hit
        from ..embed import atlas_page

        data = atlas_page(e.cache, layer, method, int(page))
        etag = '"' + hashlib.sha1(data).hexdigest()[:20] + '"'
        if len(self.pages) > 256:
            self.pages.clear()
        self.pages[key] = (data, etag)
        return data, etag

    def compute_map(self, name, layer=None, method="tsne") -> dict:
        e, layer, method = self._key(name, layer, method)

        def work(job):
            from ..embed import build_atlas, compute_map, load_map

            m = load_map(e.cache, layer, method)
            if m is None or m.stale:
                job.progress = 0.05
                m = compute_map(e.cache, layer, method=method, progress=False)
            job.progress = 0.7
            build_atlas(e.cache, m, progress=False)
            for k in [k for k in self.pages if k[:3] == (e.name, layer, method)]:
                self.pages.pop(k, None)
            self.maps.pop((e.name, layer, method), None)
            return {"side": m.side, "n": m.n}

        key = ("map", e.name, layer, method)
        with self.lock:
            old = self.by_key.get(key)
            if old is not None and old.status == "done":  # recompute on request
                del self.by_key[key]
        return self.start_job("map", key, work).to_json(False)

    # -- scores -----------------------------------------------------------------------------
    def scores(self, sid: str) -> bytes:
        st = self.state.stored(sid)
        return np.ascontiguousarray(st.scores, dtype="<f4").tobytes()

    def order(self, sid: str) -> bytes:
        return np.ascontiguousarray(self.state.stored(sid).order, dtype="<i4").tobytes()

    # -- explain ----------------------------------------------------------------------------
    def _params(self, method, params) -> dict:
        if params is None:
            return {}
        if not isinstance(params, dict):
            raise BadQuery("params must be an object")
        out = {}
        for k, v in params.items():
            typ = PARAMS[method].get(k)
            if typ is None:
                raise BadQuery(f"unknown parameter {k!r} for {method}; known: "
                               f"{', '.join(PARAMS[method]) or 'none'}")
            try:
                out[k] = typ(v)
            except (TypeError, ValueError):
                raise BadQuery(f"parameter {k!r} must be {typ.__name__}") from None
        if method == "occlusion" and (out.get("window", 56) < 4 or out.get("stride", 28) < 4):
            raise BadQuery("occlusion window and stride must be ≥ 4 px")
        if method == "rise" and not 1 <= out.get("n_masks", 256) <= 4000:
            raise BadQuery("rise n_masks must be 1–4000")
        return out

    def _explain_record(self, e, st, rid, ex) -> dict:

        d = ex.to_dict()
        rs = e.size(rid)
        d["result"] = {"id": rid, "image_size": list(rs), "path": e.path(rid), "label": e.label(rid),
                       "geometry": e.transform.geometry(*rs).to_dict()}
        q = st.query
        d["query"] = {"image_size": list(q.image_size), "geometry": q.geometry.to_dict(),
                      "image": st.image}
        for ch in d.get("top_channels", []):
            for p in ch.get("patches", []):
                p["image_size"] = list(e.size(int(p["id"])))
        if len(d.get("cell_shares", [])) > 2000:
            d.pop("cell_shares")
        return _clean(d)

    def explain(self, sid: str, body: dict) -> tuple[int, dict]:
        from ..explain import explain

        st = self.state.stored(sid)
        e = self.state.entry(st.cache)
        method = body.get("method", "exact")
        if method not in EXPLAIN_METHODS:
            raise BadQuery(f"explain method must be one of {', '.join(EXPLAIN_METHODS)}")
        rid = e.check_id(body.get("id"))
        params = self._params(method, body.get("params"))
        if method in SLOW_METHODS and params.get("mode") == "both" and st.query.source_id is None:
            u = st.image.get("upload") if isinstance(st.image, dict) else None
            if u:
                params_img = self.state.upload(u).image
            else:
                raise BadQuery("mode 'both' needs the query image")
        else:
            params_img = None
        if method not in SLOW_METHODS:
            with self.state.sem:
                ex = explain(e.cache, st.query, rid, method, **params)
            return 200, {"status": "done", "result": self._explain_record(e, st, rid, ex)}

        def work(job):
            kw = dict(params)
            if params_img is not None:
                kw["query_image"] = params_img

            def prog(f):
                job.progress = float(min(1.0, max(0.0, f)))
            with self.slow:  # one model-running explanation at a time; searches stay free
                ex = explain(e.cache, st.query, rid, method, progress=prog, **kw)
            return self._explain_record(e, st, rid, ex)

        key = ("explain", sid, rid, method, tuple(sorted(params.items())))
        job = self.start_job("explain", key, work)
        code = 200 if job.status == "done" else 202
        return code, job.to_json()

    # -- compare overlap ----------------------------------------------------------------------
    def overlap(self, a: str, b: str) -> dict:
        sa, sb = self.state.stored(a), self.state.stored(b)
        ea, eb = self.state.entry(sa.cache), self.state.entry(sb.cache)
        ta = [m.id for m in sa.top]
        tb = [m.id for m in sb.top]
        if ea is eb:
            kb = {i: i for i in tb}
            pairs = [[i, i] for i in ta if i in kb]
        else:  # different caches: the same file (by path)
            pb = {eb.path(i): i for i in tb}
            pairs = [[i, pb[ea.path(i)]] for i in ta if ea.path(i) in pb]
        n = max(1, len(set(ta) | set(tb)) if ea is eb else len(ta) + len(tb) - len(pairs))
        return {"a": a, "b": b, "k": [len(ta), len(tb)], "count": len(pairs), "shared": pairs,
                "jaccard": round(len(pairs) / n, 4)}


def add_routes(app, state) -> Views:
    """Register the views' endpoints on ``app`` (before the static mount)."""
    views = Views(state)
    app.state.views = views

    @app.get("/api/caches/{name}/map")
    async def map_info(name: str, layer: str | None = None, method: str = "tsne", grid: bool = True):
        code, body = await run_in_threadpool(views.map_info, name, layer, method, grid)
        return JSONResponse(body, status_code=code)

    @app.post("/api/caches/{name}/map")
    async def map_compute(name: str, layer: str | None = None, method: str = "tsne"):
        return JSONResponse(await run_in_threadpool(views.compute_map, name, layer, method),
                            status_code=202)

    @app.get("/api/caches/{name}/map/grid.bin")
    async def map_grid(name: str, layer: str | None = None, method: str = "tsne"):
        data, side = await run_in_threadpool(views.map_grid, name, layer, method)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Side": str(side), "Cache-Control": "no-cache"})

    @app.get("/api/caches/{name}/map/atlas/{page}")
    async def map_atlas(name: str, page: int, request: Request, layer: str | None = None,
                        method: str = "tsne"):
        data, etag = await run_in_threadpool(views.atlas, name, page, layer, method)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        inm = request.headers.get("if-none-match")
        if inm and etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/jobs/{jid}")
    async def job(jid: str):
        return views.job(jid)

    @app.get("/api/searches/{sid}/scores")
    async def scores(sid: str):
        data = await run_in_threadpool(views.scores, sid)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Count": str(len(data) // 4)})

    @app.get("/api/searches/{sid}/order")
    async def order(sid: str):
        data = await run_in_threadpool(views.order, sid)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Count": str(len(data) // 4)})

    @app.post("/api/searches/{sid}/explain")
    async def explain(sid: str, request: Request):
        from .app import json_body

        body = await json_body(request)
        code, out = await run_in_threadpool(views.explain, sid, body)
        return JSONResponse(out, status_code=code)

    @app.get("/api/overlap")
    async def overlap(a: str, b: str):
        return await run_in_threadpool(views.overlap, a, b)

    return views
