"""The FastAPI application: JSON API + the static single-page app.

Every error is JSON ``{"error": code, "message": ...}`` with a 4xx/5xx status. Files are only
ever looked up by (cache name, integer id); no client string is joined to a path.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BadQuery, PayloadTooLarge, Unauthorized, VfsError
from .state import MAX_UPLOAD_BYTES, AppState

__all__ = ["TOKEN_COOKIE", "create_app"]

STATIC = Path(__file__).resolve().parent.parent / "static"
TOKEN_COOKIE = "vfsearch_token"
log = logging.getLogger("vfsearch.server")


def _fast_json(content: dict) -> Response:
    """Plain json.dumps (the content is already JSON types): skips FastAPI's slow recursive
    encoder on big responses (score curves, inline thumbnails)."""
    return Response(json.dumps(content, separators=(",", ":"), allow_nan=False),
                    media_type="application/json")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class TokenMiddleware:
    """Require the token (``?token=``, cookie or ``Authorization: Bearer``) on every request.
    A valid ``?token=`` also sets an HttpOnly cookie so the page's later requests carry it."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given, via_query = None, False
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if qs.get("token"):
            given, via_query = qs["token"][0], True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and "cookie" in headers:
            c = SimpleCookie()
            try:
                c.load(headers["cookie"])
            except Exception:  # noqa: BLE001
                c = {}
            if TOKEN_COOKIE in c:
                given = c[TOKEN_COOKIE].value
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            resp = _error(401, Unauthorized.code,
                          "this server needs its access token: open the URL printed at start "
                          "(…/?token=…) or send 'Authorization: Bearer <token>'")
            return await resp(scope, receive, send)
        if not via_query:
            return await self.app(scope, receive, send)
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie)]
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


async def json_body(request: Request) -> dict:
    """The request's JSON object, or a clear 400."""
    try:
        body = await request.json()
    except Exception:  # noqa: BLE001
        raise BadQuery("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadQuery("request body must be a JSON object")
    return body


def create_app(caches, token: str | None = None, *, max_concurrent: int | None = None) -> FastAPI:
    """The web app for ``caches`` (a dict name → cache, or a list of caches / cache paths).
    With ``token``, every request must carry it."""
    state = caches if isinstance(caches, AppState) else AppState(caches, token=token,
                                                                 max_concurrent=max_concurrent)
    if token is not None:
        state.token = token
    app = FastAPI(title="vfsearch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.vfs = state

    # -- errors, mapped once -----------------------------------------------------------------
    @app.exception_handler(VfsError)
    async def _vfs_error(_req: Request, exc: VfsError):
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                403: "forbidden"}.get(exc.status_code, "http_error")
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and msg == "Not Found":
            msg = "no such page or API endpoint"
        return _error(exc.status_code, code, msg)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        errs = exc.errors()
        where = [e.get("loc", ["?"])[0] for e in errs]
        parts = []
        for e in errs[:3]:
            loc = ".".join(str(x) for x in e.get("loc", ())[1:]) or str(e.get("loc", ["?"])[0])
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        if "path" in where:  # e.g. an image id that is not an integer: no such resource
            return _error(404, "not_found", "no such resource (" + "; ".join(parts) + ")")
        return _error(400, "bad_request", "invalid request (" + "; ".join(parts) + ")")

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("internal error")
        return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")

    # -- API ----------------------------------------------------------------------------------
    @app.get("/api/health")
    async def health():
        return {"ok": True, "caches": list(state.caches)}

    @app.get("/api/caches")
    async def caches_list():
        return {"caches": await run_in_threadpool(state.caches_json),
                "limits": {"upload_bytes": MAX_UPLOAD_BYTES}}

    @app.get("/api/caches/{name}/images")
    async def images(name: str, q: str | None = None, column: str | None = None,
                     value: str | None = None, offset: int = 0, limit: int = 120):
        return await run_in_threadpool(state.list_images, name, q, column, value, offset, limit)

    @app.get("/api/caches/{name}/random")
    async def random_image(name: str, q: str | None = None, column: str | None = None,
                           value: str | None = None):
        return await run_in_threadpool(state.random_image, name, q, column, value)

    @app.get("/api/caches/{name}/images/{image_id}")
    async def image_info(name: str, image_id: int):
        return await run_in_threadpool(lambda: state.image_record(state.entry(name), image_id))

    @app.get("/api/caches/{name}/lookup")
    async def lookup(name: str, from_cache: str, id: int):
        def run():
            src = state.entry(from_cache)
            path = str(src.cache.paths[src.cache._check_id(id)])
            return state.find_image(name, path)
        return await run_in_threadpool(run)

    @app.get("/api/caches/{name}/thumb/{image_id}")
    async def thumb(name: str, image_id: int, request: Request):
        hit = state.thumbs.get((name, image_id))
        data, etag = hit if hit is not None else await run_in_threadpool(state.thumbnail, name, image_id)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        inm = request.headers.get("if-none-match")
        if inm and (inm.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/caches/{name}/image/{image_id}")
    async def original(name: str, image_id: int):
        src, media = await run_in_threadpool(state.original, name, image_id)
        headers = {"Cache-Control": "private, max-age=3600"}
        if isinstance(src, Path):
            return FileResponse(src, media_type=media, headers=headers)
        return Response(src, media_type=media, headers=headers)

    @app.post("/api/uploads")
    async def upload(file: UploadFile):
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"upload exceeds the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit")
        return await run_in_threadpool(state.add_upload, data, file.filename or "upload")

    @app.get("/api/uploads/{uid}")
    async def upload_info(uid: str):
        u = state.upload(uid)
        return state.upload_record(u)

    @app.get("/api/uploads/{uid}/image")
    async def upload_image(uid: str):
        u = state.upload(uid)
        return Response(u.display, media_type=u.media_type,
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/search")
    async def run_search(request: Request):
        body = await json_body(request)
        return _fast_json(await run_in_threadpool(state.run_search, body))

    @app.get("/api/searches/{sid}/window")
    async def window(sid: str, start: int = 0, stop: int = 20, limit: int = 60,
                     column: str | None = None, value: str | None = None, thumbs: bool = False):
        return _fast_json(await run_in_threadpool(state.window, sid, start, stop, limit, column, value, thumbs))

    @app.get("/api/searches/{sid}/heat")
    async def heat(sid: str, ids: str):
        try:
            lst = [int(x) for x in ids.split(",") if x.strip()]
        except ValueError:
            raise BadQuery("ids must be comma-separated integers") from None
        return _fast_json(await run_in_threadpool(state.heat, sid, lst))

    @app.get("/api/searches/{sid}/export")
    async def export(sid: str, format: str = "json", k: int | None = None):
        if format not in ("json", "csv"):
            raise BadQuery("format must be 'json' or 'csv'")
        head, items = await run_in_threadpool(state.export, sid, k)
        fname = f"vfsearch-{head['cache']}-{head['layer']}-{sid}.{format}"
        disp = {"Content-Disposition": f'attachment; filename="{fname}"'}
        if format == "json":
            return Response(json.dumps({**head, "matches": items}, indent=1),
                            media_type="application/json", headers=disp)
        e = state.entry(head["cache"])
        cols = [c for c in e.columns if c != "label"]
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["rank", "id", "score", "path", "label", *cols, "x0", "y0", "x1", "y1",
                     "row", "col", "width", "height"])
        for m in items:
            wr.writerow([m["rank"], m["id"], m["score"], m["path"], m["label"],
                         *[m["meta"].get(c, "") for c in cols], *m["box"], *m["offset"],
                         *m["image_size"]])
        return Response(buf.getvalue(), media_type="text/csv", headers=disp)

    from .views import add_routes

    add_routes(app, state)

    # -- the page ----------------------------------------------------------------------------
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    if state.token:
        app.add_middleware(TokenMiddleware, token=state.token)
    return app
