"""Server-side state of the web app: the open caches, uploaded query images, recent searches
and the thumbnail / original / query-feature LRUs, with the operations the routes call.

Everything here is plain Python (no FastAPI), so it can be tested and reused on its own. All
blocking work (searches, zarr reads, image decoding) is meant to run in a worker thread.
Geometry and query building are the engine's (:mod:`vfsearch.geometry`, :mod:`vfsearch.masks`,
``Query.with_region``, ``query_from_features``); this module only wires them together.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ..cache import FeatureCache, open_cache
from ..engine import Query, exact_scores, make_query, search
from ..engine.query import query_from_features
from ..errors import (
    BadImage,
    BadParameter,
    BadQuery,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    VfsError,
)
from ..images import load_image
from ..masks import box_mask, decode_spec, fit_mask
from .concepts import Concepts
from .entry import CacheEntry
from .lru import LRU
from .records import (
    curve,
    geometry_record,
    image_record,
    match_boxes,
    match_record,
    query_record,
)
from .stored import StoredSearch, Upload

log = logging.getLogger("vfsearch.server")

__all__ = ["MAX_K", "MAX_UPLOAD_BYTES", "MAX_WINDOW", "AppState", "CacheEntry"]

MAX_UPLOAD_BYTES = 20 << 20  # 20 MB per uploaded file
MAX_UPLOAD_PIXELS = 40_000_000  # refuse larger uploads (decompression bombs)
MAX_WINDOW = 200  # most images one rank-window request returns
MAX_K = 500


def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "cache"
    return s[:60]


def _found(value, param: str | None, message: str):
    """``value`` when a lookup found it; NotFound naming ``param`` when it is None."""
    if value is None:
        raise NotFound(message, param=param)
    return value


class AppState:
    def __init__(self, caches, token: str | None = None, max_concurrent: int | None = None):
        self.caches: dict[str, CacheEntry] = {}
        if isinstance(caches, (FeatureCache, str, os.PathLike)):
            caches = [caches]
        items = caches.items() if isinstance(caches, dict) else [(None, c) for c in caches]
        for name, c in items:
            if not isinstance(c, FeatureCache):
                c = open_cache(c)
            base = _safe_name(name or c.path.name)
            n, k = base, 2
            while n in self.caches:
                n, k = f"{base}-{k}", k + 1
            self.caches[n] = CacheEntry(n, c)
        if not self.caches:
            raise VfsError("give at least one cache to serve")
        self.token = token
        self.uploads = LRU(64, max_bytes=1 << 30, sizeof=lambda u: u.nbytes())
        self.searches = LRU(128, max_bytes=512 << 20, sizeof=lambda s: s.nbytes())
        self.thumbs = LRU(100_000, max_bytes=96 << 20, sizeof=lambda t: len(t[0]))
        self.bases = LRU(256, max_bytes=256 << 20, sizeof=lambda q: q.features.nbytes + (
            0 if q.mask is None else q.mask.nbytes))
        self.originals = LRU(16, max_bytes=128 << 20, sizeof=lambda t: len(t[0]))
        self.sem = threading.Semaphore(max_concurrent or max(2, (os.cpu_count() or 2)))
        self.concepts = Concepts()  # stored concept sets, discovery jobs, concept queries
        self.started = time.time()

    # -- lookups ------------------------------------------------------------------------------
    def entry(self, name: str, param: str | None = "cache") -> CacheEntry:
        return _found(self.caches.get(name), param,
                      f"no cache named {name!r}; open caches: {', '.join(self.caches)}")

    def upload(self, uid: str, param: str | None = "upload") -> Upload:
        return _found(self.uploads.get(uid), param,
                      f"upload {uid!r} is gone (the server keeps the latest uploads in memory "
                      "only); upload the image again")

    def warm_all(self) -> None:
        for e in self.caches.values():
            try:
                e.warm_up(e.cache.default_layer)
            except Exception as exc:  # noqa: BLE001 - warm-up is best effort; searches report errors
                log.warning("warming up %s failed: %s", e.name, exc)

    def caches_json(self) -> list[dict]:
        return [e.summary() for e in self.caches.values()]

    # -- dataset browsing -----------------------------------------------------------------------
    def _filter(self, e: CacheEntry, q: str | None, column: str | None,
                value: str | None) -> np.ndarray:
        keep = e.cache.valid.copy()
        if column:
            if value is None:
                raise BadQuery("a column filter needs a value", param="value")
            keep &= e.column(column).astype(str) == str(value)
        if q:
            terms = q.lower().split()
            s = e.searchable()
            for t in terms:
                keep &= np.fromiter((t in x for x in s), bool, len(s))
        return keep

    def list_images(self, name: str, q=None, column=None, value=None, offset=0, limit=120) -> dict:
        e = self.entry(name)
        ids = np.flatnonzero(self._filter(e, q, column, value))
        offset = max(0, int(offset))
        limit = max(1, min(1000, int(limit)))
        sel = ids[offset:offset + limit]
        return {"total": len(ids), "offset": offset,
                "items": [image_record(e, int(i), brief=True) for i in sel]}

    def random_image(self, name: str, q=None, column=None, value=None) -> dict:
        e = self.entry(name)
        ids = np.flatnonzero(self._filter(e, q, column, value))
        if not len(ids):
            raise NotFound("no indexed image matches the filter")
        i = int(ids[np.random.default_rng().integers(len(ids))])
        return image_record(e, i)

    def image_info(self, name: str, i: int) -> dict:
        return image_record(self.entry(name), i)

    def find_image(self, name: str, path: str) -> dict:
        """Look an image up by its recorded relative path (used to carry a query across caches)."""
        e = self.entry(name)
        i = e.path_index().get(path)
        if i is None:
            raise NotFound(f"cache {name!r} has no image {path!r}")
        return image_record(e, i)

    def lookup(self, name: str, from_cache: str, i: int) -> dict:
        """Image ``i`` of cache ``from_cache`` as it is in cache ``name`` (the same file)."""
        src = self.entry(from_cache, param="from_cache")
        return self.find_image(name, src.path(src.check_id(i)))

    # -- files -------------------------------------------------------------------------------
    def thumbnail(self, name: str, i: int) -> tuple[bytes, str]:
        e = self.entry(name)
        i = e.check_id(i)
        key = (name, i)
        hit = self.thumbs.get(key)
        if hit is not None:
            return hit
        ch = e.cache.thumbnail_chunk
        s = i // ch * ch
        out = None
        for j, data in enumerate(e.cache.thumbnail_range(s, min(e.n, s + ch))):
            etag = '"' + hashlib.blake2b(data, digest_size=10).hexdigest() + '"'
            self.thumbs.put((name, s + j), (data, etag))
            if s + j == i:
                out = (data, etag)
        if not out or not out[0]:
            raise NotFound(f"image {i} has no thumbnail (it was not indexed)")
        return out

    def thumbnails(self, name: str, ids) -> dict[int, tuple[bytes, str]]:
        """Thumbnails of several images (the misses read in one concurrent zarr selection)."""
        e = self.entry(name)
        out: dict[int, tuple[bytes, str]] = {}
        miss = []
        for i in ids:
            i = e.check_id(i)
            hit = self.thumbs.get((name, i))
            if hit is not None:
                out[i] = hit
            else:
                miss.append(i)
        if miss:
            miss = sorted(set(miss))
            for i, data in zip(miss, e.cache.thumbnails(miss), strict=False):
                if data:
                    v = (data, '"' + hashlib.blake2b(data, digest_size=10).hexdigest() + '"')
                    self.thumbs.put((name, i), v)
                    out[i] = v
        return out

    def inline_thumbs(self, name: str, ids, limit: int = 48) -> dict[str, str]:
        """{id: base64 JPEG} for the first ``limit`` ids (saves the page a request per result)."""
        got = self.thumbnails(name, list(ids)[:limit])
        return {str(i): base64.b64encode(v[0]).decode("ascii") for i, v in got.items()}

    def original_path(self, name: str, i: int) -> Path:
        """The original file of image ``i``, refused unless it lies inside the image root."""
        e = self.entry(name)
        c = e.cache
        i = e.check_id(i)
        root = Path(c.image_root).resolve()
        rel = e.path(i)
        try:
            p = (root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(f"the original file of image {i} is not available") from None
        if not p.is_relative_to(root):
            raise Forbidden(f"image {i} resolves outside the cache's image root; refused")
        if not p.is_file():
            raise NotFound(f"the original file of image {i} is not available")
        return p

    def original(self, name: str, i: int) -> tuple[Path | bytes, str]:
        """(path to send as is | re-encoded bytes, media type) for the browser."""
        p = self.original_path(name, i)
        key = (name, int(i), p.stat().st_mtime_ns)
        hit = self.originals.get(key)
        if hit is not None:
            return hit
        fmt, upright, big = None, True, False
        try:
            with Image.open(p) as im:
                fmt = im.format
                upright = im.getexif().get(0x0112, 1) in (0, 1)
                big = max(im.size) > 4096
        except Exception:  # noqa: BLE001
            raise BadImage(f"the original file of image {i} cannot be decoded") from None
        types = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                 "WEBP": "image/webp", "BMP": "image/bmp"}
        if fmt in types and upright and not big:
            return p, types[fmt]
        img = load_image(p)
        img.thumbnail((2048, 2048), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out = (buf.getvalue(), "image/jpeg")
        self.originals.put(key, out)
        return out

    # -- uploads ------------------------------------------------------------------------------
    def add_upload(self, data: bytes, name: str = "upload") -> dict:
        if len(data) > MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"upload is {len(data) / 1e6:.1f} MB; the limit is "
                                  f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB")
        if not data:
            raise BadImage("upload is empty")
        img = load_image(data, max_pixels=MAX_UPLOAD_PIXELS)
        disp = img
        if max(img.size) > 2048:
            disp = img.copy()
            disp.thumbnail((2048, 2048), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        disp.save(buf, format="JPEG", quality=90)
        uid = uuid.uuid4().hex[:12]
        u = Upload(uid, os.path.basename(name or "upload")[:120], img, buf.getvalue(), "image/jpeg")
        self.uploads.put(uid, u)
        return self.upload_record(u)

    def upload_record(self, u: Upload) -> dict:
        """An upload with the model's view of it for every open cache (their transforms differ)."""
        return {"upload": u.id, "name": u.name, "size": list(u.size),
                "geometry": {n: geometry_record(e, u.size) for n, e in self.caches.items()}}

    # -- queries and searches -------------------------------------------------------------------
    def resolve_image(self, e: CacheEntry, ref: dict) -> tuple[int | Upload, dict]:
        """A query image reference → (dataset id in ``e`` | Upload, echo for the client)."""
        ref = ref or {}
        if ref.get("upload"):
            u = self.upload(str(ref["upload"]), param="image.upload")
            return u, {"upload": u.id, "name": u.name, "size": list(u.size)}
        if ref.get("id") is None:
            raise BadQuery("the query image needs an 'id' (dataset image) or an 'upload'",
                           param="image")
        try:
            i = int(ref["id"])
        except (TypeError, ValueError):
            raise BadParameter(f"image id must be an integer, got {ref['id']!r}",
                               param="image.id") from None
        src = ref.get("cache")
        if src and src != e.name:
            se = self.entry(str(src), param="image.cache")
            i = se.check_id(i, param="image.id")
            path = se.path(i)
            j = e.path_index().get(path)
            if j is None:
                raise NotFound(f"cache {e.name!r} does not contain the query image {path!r}; "
                               "compare needs the same image in both caches (or an upload)",
                               param="image")
            i = j
        i = e.check_id(i, param="image.id")
        return i, {"id": i, "cache": e.name, "path": e.path(i), "size": list(e.size(i))}

    @staticmethod
    def mask_array(spec: dict, size: tuple[int, int]) -> np.ndarray:
        """A mask from the client (PNG / raw bytes / nested list / run-length) at ``size``."""
        return fit_mask(decode_spec(spec), size)

    def build_query(self, e: CacheEntry, layer: str, image, region: dict) -> Query:
        mode = region.get("mode")
        if region.get("whole"):
            if mode not in (None, "whole"):
                raise BadQuery(f"'whole': true is the whole mode, not {mode!r}", param="whole")
            mode = "whole"
        given = [k for k in ("mask", "box") if region.get(k) is not None]
        if mode in ("whole", "global"):
            if given:
                raise BadQuery(f"a {mode} query takes the whole image: give no {given[0]}",
                               param=given[0])
        elif len(given) != 1:
            raise BadQuery("give exactly one of 'mask' or 'box' (or a mode 'whole' or "
                           "'global')", param=given[1] if given else "mask")
        if isinstance(image, Upload):
            key = (str(e.cache.path), e.cache.weights_hash, layer)
            base = image.base.get(key)
            if base is None:
                base = make_query(e.cache, image.image, whole=True, layer=layer)
                image.base[key] = base
        else:
            # the query image's features, read once per (cache, layer, image): every stroke on
            # the same image reuses them
            key = (e.name, layer, int(image))
            base = self.bases.get(key)
            if base is None:
                base = self._dataset_base(e, layer, int(image))
                self.bases.put(key, base)
        if mode == "global":
            pooled = None if isinstance(image, Upload) else e.cache.pooled(layer, [int(image)])[0]
            return base.as_global(pooled)
        if mode == "whole":
            return base
        return self._region_query(base, region)

    def _dataset_base(self, e: CacheEntry, layer: str, i: int) -> Query:
        """The whole-image query of dataset image ``i`` (what ``make_query(cache, i,
        whole=True)`` builds), with its features taken from RAM when the layer is loaded."""
        c = e.cache
        if not c.valid[i]:
            return make_query(c, i, whole=True, layer=layer)  # raises the usual error
        feats = c.features(i, layer)  # in the image's own orientation (a full cache's portraits)
        return query_from_features(c, feats, e.size(i), layer, source_id=i, label=e.label(i))

    def _region_query(self, base: Query, region: dict) -> Query:
        """``base`` (a whole-image query) restricted to a mask or box (as make_query does)."""
        if region.get("whole"):
            return base
        if region.get("mask") is not None:
            m = self.mask_array(region["mask"], base.image_size)
        else:
            m = box_mask(region["box"], base.image_size)
        return base.with_region(m)

    def run_search(self, body: dict) -> dict:
        t0 = time.perf_counter()
        e = self.entry(str(body.get("cache", "")))
        layer = e.check_layer(body.get("layer"))
        k = body.get("k", 20)
        if (isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k
                or not 1 <= k <= MAX_K):
            raise BadParameter(f"k must be an integer between 1 and {MAX_K}", param="k")
        k = int(k)
        flt = body.get("filter") or {}
        if flt.get("column"):  # checked before searching: a bad filter stores no search
            if flt.get("value") is None:
                raise BadQuery("a result filter needs a 'value'", param="filter.value")
            try:
                e.column(str(flt["column"]))
            except NotFound as exc:
                raise NotFound(exc.message, param="filter.column") from None
        if body.get("concept") is not None or body.get("image") is None:
            # a concept query (no query image), or the error naming what is missing
            q, echo = self.concepts.search_query(e, layer, body)
        else:
            image, echo = self.resolve_image(e, body.get("image") or {})
            q = self.build_query(e, layer, image, body)
        t1 = time.perf_counter()
        e.warm_up(layer)
        with self.sem:
            t2 = time.perf_counter()
            res = search(e.cache, q, k=k, exclude_self=bool(body.get("exclude_self", True)),
                         return_scores=True)
        t3 = time.perf_counter()
        scores = res.scores
        sid = uuid.uuid4().hex[:12]
        st = StoredSearch(sid, e.name, layer, q, scores, list(res.matches), time.time(), echo)
        self.searches.put(sid, st)
        if flt.get("column"):
            page = self.window(sid, 0, k, column=flt["column"], value=flt.get("value"))
            matches, total = page["items"], page["total"]
        else:
            matches = [match_record(e, q, m.id, m.rank, m.score, m.offset, m.box)
                       for m in res.matches]
            total = int(np.isfinite(scores).sum())
        known = set(body.get("known") or ())  # thumbnails the page holds: not sent again
        thumbs = (self.inline_thumbs(e.name, [m["id"] for m in matches if m["id"] not in known])
                  if body.get("thumbs") else None)
        t4 = time.perf_counter()
        return {
            "thumbs": thumbs,
            "search_id": sid, "cache": e.name, "layer": layer, "k": k,
            "query": query_record(q, echo),
            "matches": matches, "total": total,
            "curve": curve(scores),
            "stats": dict(res.stats),
            "timing": {"query_ms": round((t1 - t0) * 1e3, 1),
                       "wait_ms": round((t2 - t1) * 1e3, 1),
                       "search_ms": round((t3 - t2) * 1e3, 1),
                       "total_ms": round((t4 - t0) * 1e3, 1)},
        }

    def stored(self, sid: str, param: str | None = "sid") -> StoredSearch:
        return _found(self.searches.get(sid), param,
                      f"search {sid!r} has expired (the server keeps the latest searches); "
                      "run it again")

    def _offsets(self, e: CacheEntry, st: StoredSearch, ids: np.ndarray):
        """(best scores, offset indices, score maps) of rows ``ids``; for a global query the
        pooled cosine, offset 0 and each cell's share of the score as its map."""
        q = st.query
        if e.cache.padded:  # each image's own grid (full mode): one at a time, maps of any shape
            parts = [self._offsets_of(q, e.cache.features(int(i), st.layer)[None]) for i in ids]
            if not parts:
                return np.zeros(0), np.zeros(0, np.int64), []
            return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    [p[2][0] for p in parts])
        return self._offsets_of(q, e.rows_features(st.layer, ids))

    @staticmethod
    def _offsets_of(q, feats):
        if q.mode == "global":
            from ..engine.global_search import cell_shares

            maps = np.stack([cell_shares(q.pooled, f)[0] for f in feats]) if len(feats) else \
                np.zeros((0, *q.grid))
            return maps.sum(axis=(1, 2)), np.zeros(len(feats), np.int64), maps
        best, off, maps = exact_scores(feats, q.weights, q.features)
        return best, off, maps

    def window(self, sid: str, start: int, stop: int, limit: int = MAX_WINDOW,
               column: str | None = None, value: str | None = None, thumbs: bool = False) -> dict:
        """Images at ranks [start, stop) of a stored search (optionally among the rows whose
        ``column`` equals ``value``); at most ``limit`` of them, evenly spaced when the window
        is wider."""
        st = self.stored(sid)
        e = self.entry(st.cache)
        order = st.order
        if column:
            col = e.column(column).astype(str)
            order = order[col[order] == str(value)]
        total = len(order)
        start = max(0, int(start))
        stop = min(total, int(stop))
        limit = max(1, min(MAX_WINDOW, int(limit)))
        if stop <= start:
            return {"search_id": sid, "start": start, "stop": max(start, stop), "total": total,
                    "items": []}
        if stop - start > limit:
            ranks = np.unique(np.round(np.linspace(start, stop - 1, limit)).astype(np.int64))
        else:
            ranks = np.arange(start, stop)
        ids = order[ranks]
        top = {m.id: m for m in st.top}
        items = [None] * len(ids)
        need = [j for j, i in enumerate(ids) if int(i) not in top or column]
        for j, i in enumerate(ids):
            m = top.get(int(i))
            if m is not None and not column:
                items[j] = match_record(e, st.query, m.id, int(ranks[j]) + 1, m.score,
                                        m.offset, m.box)
        if need:
            nids = ids[need]
            _best, off, _ = self._offsets(e, st, nids)
            boxes = match_boxes(e, st.query, nids, off)
            for jj, j in enumerate(need):
                i = int(ids[j])
                m = top.get(i)
                score = m.score if m is not None else float(st.scores[i])
                items[j] = match_record(e, st.query, i, int(ranks[j]) + 1, score,
                                        boxes[jj][0], boxes[jj][1])
        out = {"search_id": sid, "start": start, "stop": stop, "total": total, "items": items}
        if thumbs:
            out["thumbs"] = self.inline_thumbs(e.name, ids.tolist(), limit=MAX_WINDOW)
        return out

    def heat(self, sid: str, ids: list[int]) -> dict:
        st = self.stored(sid)
        e = self.entry(st.cache)
        if len(ids) > MAX_WINDOW:
            raise BadParameter(f"at most {MAX_WINDOW} heat maps per request", param="ids")
        arr = np.array([e.check_id(i, param="ids") for i in ids], dtype=np.int64)
        r0, c0, h, w = st.query.cell_box
        if st.query.mode == "global":  # a map of per-cell shares: one "offset" per cell
            r0, c0, h, w = 0, 0, 1, 1
        out = {"search_id": sid, "cell_box": [r0, c0, h, w], "grid": list(st.query.grid),
               "maps": {}}
        if len(arr):
            _, _, maps = self._offsets(e, st, arr)
            # (no map where the query's box does not fit the image's grid: it has no offsets)
            out["maps"] = {str(int(i)): np.round(maps[j], 4).tolist() for j, i in enumerate(arr)
                           if np.size(maps[j])}
        return out

    def export(self, sid: str, k: int | None = None) -> tuple[dict, list[dict]]:
        st = self.stored(sid)
        k = len(st.top) if not k else max(1, min(5000, int(k)))
        page = self.window(sid, 0, k, limit=MAX_WINDOW) if k <= MAX_WINDOW else None
        items = page["items"] if page else []
        if page is None:
            for s in range(0, k, MAX_WINDOW):
                items += self.window(sid, s, min(k, s + MAX_WINDOW))["items"]
        e = self.entry(st.cache)
        head = {"search_id": sid, "cache": st.cache, "model": e.cache.model, "layer": st.layer,
                "query": query_record(st.query, st.image)}
        return head, items
