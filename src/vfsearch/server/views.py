"""Extra views of the web app over :class:`~vfsearch.server.state.AppState`: the dataset map
(its grid and atlas pages), result explanations, the raw score / rank-order vectors and the
overlap of two searches.

The explain methods, their parameters and which of them run the model (a background job) are
the explainers' own declarations (:data:`vfsearch.explain.METHODS`,
:func:`~vfsearch.explain.check_params`); nothing is repeated here.
"""

from __future__ import annotations

import hashlib
import math
import threading

import numpy as np

from ..embed import METHODS as MAP_METHODS
from ..errors import BadParameter, BadQuery, NotFound
from .jobs import Jobs
from .state import AppState

__all__ = ["MAP_METHODS", "Views"]

MAX_CELL_SHARES = 2000  # larger per-cell share tables are left out of the JSON


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


class Views:
    def __init__(self, state: AppState, jobs: Jobs | None = None):
        self.state = state
        self.jobs = jobs or Jobs()
        self.maps: dict = {}  # (cache, layer, method) -> (MapResult, atlas attrs)
        self.pages: dict = {}  # (cache, layer, method, page) -> (bytes, etag)
        self.slow = threading.Semaphore(1)  # one model-running explanation at a time

    # -- map --------------------------------------------------------------------------------
    def _key(self, name, layer, method):
        e = self.state.entry(name)
        layer = e.check_layer(layer)
        if method not in MAP_METHODS:
            raise BadParameter(f"map method must be one of {', '.join(MAP_METHODS)}",
                               param="method")
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

    def map_info(self, name, layer=None, method="tsne", grid: bool = True) -> dict:
        e, layer, method = self._key(name, layer, method)
        job = self.jobs.get(("map", e.name, layer, method))
        running = job is not None and job.status == "running"
        hit = None if running else self._load(e, layer, method)
        base = {"cache": e.name, "layer": layer, "method": method}
        if running:
            return {**base, "status": "computing", "job": job.to_json(False)}
        if hit is None or hit[1] is None:
            out = {**base, "status": "missing" if hit is None else "no_atlas"}
            if job is not None and job.status == "error":
                out["job"] = job.to_json(False)
            return out
        m, atlas = hit
        out = {**base, "status": "ready", "side": m.side, "n": m.n, "rows": m.rows,
               "stale": bool(m.stale), "tile": int(atlas.get("tile", 32)),
               "page_tiles": int(atlas.get("page_tiles", 64)),
               "pages_x": int(atlas.get("pages_x", 1)), "pages_y": int(atlas.get("pages_y", 1)),
               "background": list(atlas.get("background", [24, 24, 24])),
               "seconds": m.attrs.get("seconds"),
               "knn_preservation": m.attrs.get("knn_preservation"),
               "version": str(m.attrs.get("fingerprint", ""))}
        out["pages"] = out["pages_x"] * out["pages_y"]
        if grid:
            out["grid"] = m.grid.reshape(-1).tolist()
        return _clean(out)

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
        self.jobs.forget(key, "done")  # a finished map is recomputed on request
        return self.jobs.start("map", key, work).to_json(False)

    # -- scores -----------------------------------------------------------------------------
    def scores(self, sid: str) -> bytes:
        st = self.state.stored(sid)
        return np.ascontiguousarray(st.scores, dtype="<f4").tobytes()

    def order(self, sid: str) -> bytes:
        return np.ascontiguousarray(self.state.stored(sid).order, dtype="<i4").tobytes()

    # -- explain ----------------------------------------------------------------------------
    @staticmethod
    def explain_methods() -> dict:
        from ..explain import method_info

        return {"methods": _clean(method_info())}

    @staticmethod
    def check_explain(method: str, params: dict | None) -> dict:
        """The method's parameters, typed and checked, defaults filled in; a bad one is named
        as the request field (``params.window``)."""
        from ..explain import METHODS, check_params

        if method not in METHODS:
            raise BadParameter(f"explain method must be one of {', '.join(METHODS)}",
                               param="method")
        try:
            return check_params(method, params)
        except BadParameter as exc:
            name = f"params.{exc.param}" if exc.param else "params"
            raise BadParameter(exc.message, param=name) from None

    def _explain_record(self, e, st, rid, ex) -> dict:
        d = ex.to_dict()
        rs = e.size(rid)
        d["result"] = {"id": rid, "image_size": list(rs), "path": e.path(rid),
                       "label": e.label(rid), "geometry": e.transform.geometry(*rs).to_dict()}
        q = st.query
        d["query"] = {"image_size": list(q.image_size), "geometry": q.geometry.to_dict(),
                      "image": st.image}
        for ch in d.get("top_channels", []):
            for p in ch.get("patches", []):
                p["image_size"] = list(e.size(int(p["id"])))
        if len(d.get("cell_shares", [])) > MAX_CELL_SHARES:
            d.pop("cell_shares")
        d["concepts"] = self._shared_concepts(e, st.query, rid, d.get("offset"))
        return _clean(d)

    def _shared_concepts(self, e, query, rid: int, offset) -> dict | None:
        """Which stored concepts of the query's layer the match shares with its query (the
        dictionary's, else the saliency method's; the app's loaded sets); None for a global
        query, or when no concepts were computed for the layer."""
        from types import SimpleNamespace

        from ..concepts import METHODS as CONCEPT_METHODS
        from ..concepts import shared_concepts

        if query.mode == "global" or offset is None:
            return None
        for method in CONCEPT_METHODS:
            hit = self.state.concepts.get(e, query.layer, method)
            if hit is not None:
                match = SimpleNamespace(id=int(rid), offset=tuple(int(v) for v in offset))
                return shared_concepts(e.cache, query, match, concepts=hit[0])
        return None

    def explain(self, sid: str, rid, method: str = "exact",
                params: dict | None = None) -> tuple[int, dict]:
        """Explain result ``rid`` of search ``sid``: (200, done) at once for the methods that
        only read the cache, else (202 | 200 when finished, the job) for those that run the
        model (memoised per search, result, method and parameters)."""
        from ..explain import METHODS, explain, needs_query_image

        st = self.state.stored(sid)
        e = self.state.entry(st.cache)
        checked = self.check_explain(method, params)
        rid = e.check_id(rid)
        query_image = None
        if needs_query_image(method, checked) and st.query.source_id is None:
            u = st.image.get("upload") if isinstance(st.image, dict) else None
            if not u:
                raise BadQuery("mode 'both' needs the query image", param="params.mode")
            query_image = self.state.upload(u).image
        if not METHODS[method].runs_model:
            with self.state.sem:
                ex = explain(e.cache, st.query, rid, method, **checked)
            return 200, {"status": "done", "result": self._explain_record(e, st, rid, ex)}

        def work(job):
            kw = dict(checked)
            if query_image is not None:
                kw["query_image"] = query_image
            with self.slow:  # one model-running explanation at a time; searches stay free
                ex = explain(e.cache, st.query, rid, method, progress=job.set_progress, **kw)
            return self._explain_record(e, st, rid, ex)

        key = ("explain", sid, rid, method, tuple(sorted(checked.items())))
        job = self.jobs.start("explain", key, work)
        return (200 if job.status == "done" else 202), job.to_json()

    # -- compare overlap ----------------------------------------------------------------------
    def overlap(self, a: str, b: str) -> dict:
        sa, sb = self.state.stored(a, param="a"), self.state.stored(b, param="b")
        ea, eb = self.state.entry(sa.cache), self.state.entry(sb.cache)
        ta = [m.id for m in sa.top]
        tb = [m.id for m in sb.top]
        if ea is eb:
            kb = set(tb)
            pairs = [[i, i] for i in ta if i in kb]
        else:  # different caches: the same file (by path)
            pb = {eb.path(i): i for i in tb}
            pairs = [[i, pb[ea.path(i)]] for i in ta if ea.path(i) in pb]
        n = max(1, len(set(ta) | set(tb)) if ea is eb else len(ta) + len(tb) - len(pairs))
        return {"a": a, "b": b, "k": [len(ta), len(tb)], "count": len(pairs), "shared": pairs,
                "jaccard": round(len(pairs) / n, 4)}
