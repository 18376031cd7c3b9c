"""The web app's view of stored concepts (:mod:`vfsearch.concepts`): the concept sets of a cache's
layers read once and kept in memory, their JSON for the page, their contact sheets, discovery as
a background job, and a concept as the query of ``POST /api/search``.

A discovery runs in a background thread (:class:`~.jobs.Jobs`), one at a time for the whole app
(a second request while one runs is refused with 409, naming the running job). It computes with
``store=False`` and writes the result and its sheets under this module's lock, the same lock every
read takes, so no request reads a half-written concept set.
"""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np

from ..concepts import KIND, METHODS, ConceptSet, concept_query, discover, load_concepts
from ..concepts.store import concept_sheet, overview_sheet, save_concepts, sheet_png
from ..errors import BadParameter, BadQuery, NotFound, VfsError
from .entry import CacheEntry
from .jobs import Job, Jobs

__all__ = ["Busy", "Concepts"]

MAX_INFO_MEMO = 64  # concept-set JSON answers kept (per cache, layer, method and patch limit)


class Busy(VfsError):
    """Another discovery is running: the app runs one at a time."""

    http_status = 409
    code = "busy"


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class Concepts:
    """Concept sets by (cache name, layer, method), loaded on first use; discovery jobs."""

    def __init__(self):
        self.lock = threading.RLock()  # every read of the stored arrays and every write
        self.sets: dict[tuple, tuple[ConceptSet, str]] = {}  # key -> (set, version)
        self.infos: dict[tuple, dict] = {}
        self.running: Job | None = None  # the discovery now running (one at a time)
        self.last: dict[tuple, Job] = {}  # (cache name, layer, method) -> its latest discovery

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def check_method(method: str | None, param: str = "method") -> str:
        method = method or "dictionary"
        if method not in METHODS:
            raise BadParameter(f"concept method must be {' or '.join(METHODS)}", param=param)
        return method

    def get(self, e: CacheEntry, layer: str, method: str) -> tuple[ConceptSet, str] | None:
        """(the stored set, its version) or None when none is stored. Not memoised while
        missing: concepts stored later (e.g. by ``vfsearch concepts``) are found."""
        key = (e.name, layer, method)
        hit = self.sets.get(key)
        if hit is not None:
            return hit
        with self.lock:
            hit = self.sets.get(key)
            if hit is not None:
                return hit
            try:
                cs = load_concepts(e.cache, layer, method)
            except NotFound:
                return None
            h = hashlib.sha1(np.ascontiguousarray(cs.directions).tobytes())
            h.update(np.ascontiguousarray(cs.sizes).tobytes())
            h.update(str(cs.attrs.get("fingerprint", "")).encode())
            self.sets[key] = (cs, h.hexdigest()[:16])
            return self.sets[key]

    def stored_methods(self, e: CacheEntry, layer: str) -> dict[str, bool]:
        with self.lock:
            return {m: (e.name, layer, m) in self.sets or e.cache.stored(KIND, layer, m) is not None
                    for m in METHODS}

    def info(self, e: CacheEntry, layer: str | None, method: str | None,
             patches: int = 32) -> dict:
        """The page's view of the concepts of ``layer`` / ``method``: ``status`` "missing",
        "computing" (with the job) or "ready" with every concept, its size, its first
        ``patches`` patches (image id, path, label, size, box in its pixels, score, cells) and
        the labels of all its stored patches."""
        layer = e.check_layer(layer)
        method = self.check_method(method)
        job = self.last.get((e.name, layer, method))
        base = {"cache": e.name, "layer": layer, "method": method,
                "stored": self.stored_methods(e, layer)}
        if job is not None and job.status == "running":
            return {**base, "status": "computing", "job": job.to_json(False)}
        hit = self.get(e, layer, method)
        if hit is None:
            out = {**base, "status": "missing"}
            if job is not None and job.status == "error":
                out["job"] = job.to_json(False)
            return out
        cs, version = hit
        memo = (e.name, layer, method, int(patches), version)
        body = self.infos.get(memo)
        if body is None:
            body = self._concepts_json(e, cs, int(patches))
            body["version"] = version
            if len(self.infos) > MAX_INFO_MEMO:
                self.infos.clear()
            self.infos[memo] = body
        return {**base, "status": "ready", **body}

    @staticmethod
    def _concepts_json(e: CacheEntry, cs: ConceptSet, patches: int) -> dict:
        keep = ("algorithm", "params", "grid", "n_images", "n_cells", "seconds")
        out = {k: cs.attrs[k] for k in keep if k in cs.attrs}
        out["stale"] = bool(cs.attrs.get("stale", False))
        out["n_concepts"] = len(cs)
        concepts = []
        for k in range(len(cs)):
            sl = cs.patch_rows(k)
            labels: dict[str, int] = {}
            rows = []
            for j in range(sl.start, sl.stop):
                i = int(cs.patch_image[j])
                lab = e.label(i)
                labels[lab] = labels.get(lab, 0) + 1
                if len(rows) < patches:
                    rows.append({"id": i, "path": e.path(i), "label": lab,
                                 "size": list(e.size(i)),
                                 "box": [round(float(v), 2) for v in cs.patch_box[j]],
                                 "score": round(float(cs.patch_score[j]), 6),
                                 "cells": [int(v) for v in cs.patch_cells[j]]})
            concepts.append({"id": k, "size": int(cs.sizes[k]), "n_patches": sl.stop - sl.start,
                             "patches": rows,
                             "labels": sorted(([lab, n] for lab, n in labels.items()),
                                              key=lambda t: (-t[1], t[0]))})
        out["concepts"] = concepts
        return out

    def sheet_etag(self, e: CacheEntry, layer: str | None, method: str | None,
                   k: int | None) -> tuple[ConceptSet, int | None, str]:
        """(the set, the checked concept id or None for the overview, the sheet's ETag)."""
        layer = e.check_layer(layer)
        method = self.check_method(method)
        hit = self.get(e, layer, method)
        if hit is None:
            raise NotFound(f"no {method} concepts are stored for layer {layer!r} of cache "
                           f"{e.name!r}", param="method")
        cs, version = hit
        if k is not None:
            try:
                k = cs.check_id(k)
            except NotFound as exc:
                raise NotFound(exc.message, param="k") from None
        return cs, k, f'"{version}-{"all" if k is None else k}"'

    def sheet(self, cs: ConceptSet, k: int | None) -> bytes:
        with self.lock:
            return sheet_png(cs, k)

    # -- discovery ----------------------------------------------------------------------------
    def compute(self, e: CacheEntry, jobs: Jobs, layer: str | None, method: str | None,
                n_concepts: int = 32, n_queries: int = 200) -> dict:
        """Start discovering ``n_concepts`` concepts of ``layer`` with ``method`` (a background
        job that stores them with their sheets); the running job when the same one runs."""
        layer = e.check_layer(layer)
        method = self.check_method(method)
        n_concepts, n_queries = int(n_concepts), int(n_queries)
        key = ("concepts", e.name, layer, method, n_concepts, n_queries)
        with self.lock:
            run = self.running
            if run is not None and run.status == "running":
                if run.key == key:
                    return run.to_json(False)
                _, name, rl, rm, rn, _rq = run.key
                raise Busy(f"a discovery of {rn} {rm} concepts of {name} · {rl} is running "
                           f"(job {run.id}); one runs at a time: wait for it")

            def work(job: Job):
                return self._discover(job, e, layer, method, n_concepts, n_queries)

            jobs.forget(key, "done")  # finished concepts are recomputed on request
            job = jobs.start("concepts", key, work)
            self.running = self.last[(e.name, layer, method)] = job
            return job.to_json(False)

    def _discover(self, job: Job, e: CacheEntry, layer: str, method: str, n_concepts: int,
                  n_queries: int) -> dict:
        job.set_progress(0.02)

        def log(_msg: str) -> None:  # a step of the discovery done
            job.set_progress(min(0.5, job.progress + 0.12))

        cs = discover(e.cache, layer, method, n_concepts=n_concepts, n_queries=n_queries,
                      store=False, log=log)
        job.set_progress(0.55)
        sheets = []
        for k in range(len(cs)):  # as concepts.make_sheets does, with progress
            sheets.append(_png(concept_sheet(e.cache, cs, k)))
            job.set_progress(0.55 + 0.4 * (k + 1) / max(1, len(cs)))
        sheets.append(_png(overview_sheet(e.cache, cs)))
        with self.lock:
            save_concepts(e.cache, cs, sheets)
            self.sets.pop((e.name, layer, method), None)
            for m in [m for m in self.infos if m[:3] == (e.name, layer, method)]:
                self.infos.pop(m, None)
        return {"layer": layer, "method": method, "n_concepts": len(cs),
                "seconds": round(float(cs.attrs.get("seconds", 0.0)), 3)}

    # -- searching ----------------------------------------------------------------------------
    def search_query(self, e: CacheEntry, layer: str, body: dict):
        """The query of a search body that names a ``concept`` (or names no ``image``: the
        error says what to give): (Query, the echo the query record carries)."""
        spec = body.get("concept")
        if spec is None:
            raise BadQuery("a search needs an 'image' (and a region, or a mode 'whole' or "
                           "'global') or a 'concept'", param="image")
        for f in ("image", "box", "mask"):
            if body.get(f) is not None:
                raise BadQuery(f"a concept search has no query image: give no {f!r} with "
                               "'concept'", param=f)
        if body.get("whole"):
            raise BadQuery("a concept search is a one-cell region query: 'whole' does not "
                           "apply", param="whole")
        if body.get("mode") not in (None, "region"):
            raise BadQuery(f"a concept search is a one-cell region query, not {body['mode']!r}",
                           param="mode")
        method = self.check_method(spec.get("method"), param="concept.method")
        hit = self.get(e, layer, method)
        if hit is None:
            raise NotFound(f"no {method} concepts are stored for layer {layer!r} of cache "
                           f"{e.name!r}; compute them first (the Concepts tab, or "
                           f"POST /api/caches/{e.name}/concepts)", param="concept")
        cs, version = hit
        try:
            k = cs.check_id(spec.get("id"))
        except NotFound as exc:
            raise NotFound(exc.message, param="concept.id") from None
        q = concept_query(e.cache, k, concepts=cs)
        ref = {"id": k, "method": method, "layer": cs.layer, "size": int(cs.sizes[k]),
               "version": version}
        return q, {"concept": ref, "size": list(q.image_size)}
