"""HTTP helpers shared by every route: the one error mapping, the fast JSON response and
conditional (ETag / 304) responses.

Every error the app sends is ``{"error": code, "message": ..., "param"?: field}`` with the
status of its :class:`~vfsearch.errors.VfsError` class; request validation errors name the
field that was wrong. Nothing here knows about the app's state or its routes.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BadParameter, Forbidden, NotFound, PayloadTooLarge, Unauthorized, VfsError

__all__ = [
    "MethodNotAllowed",
    "UnsupportedMediaType",
    "error_response",
    "fast_json",
    "install_error_handlers",
    "not_modified",
    "validation_error",
]

log = logging.getLogger("vfsearch.server")


class MethodNotAllowed(VfsError):
    """The path exists but not with this HTTP method."""

    http_status = 405
    code = "method_not_allowed"


class UnsupportedMediaType(VfsError):
    """A state-changing request whose body is not JSON (or multipart, for uploads)."""

    http_status = 415
    code = "unsupported_media_type"


def error_response(exc: VfsError, headers: dict | None = None) -> JSONResponse:
    """The JSON response of a :class:`VfsError` (the only way the app builds an error)."""
    return JSONResponse(exc.to_json(), status_code=exc.http_status, headers=headers)


def fast_json(content, status_code: int = 200, headers: dict | None = None) -> Response:
    """Plain ``json.dumps`` (the content is already JSON types): skips FastAPI's slow recursive
    encoder on big responses (score curves, inline thumbnails)."""
    return Response(json.dumps(content, separators=(",", ":"), allow_nan=False),
                    status_code=status_code, media_type="application/json", headers=headers)


def not_modified(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` already names ``etag`` (weak or strong)."""
    inm = request.headers.get("if-none-match")
    if not inm:
        return False
    tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
    return "*" in tags or etag in tags


def conditional(request: Request, data: bytes, media_type: str, etag: str,
                cache_control: str) -> Response:
    """``data`` with its ETag, or an empty 304 when the client has it already."""
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def _field(loc, body, kind: str) -> str | None:
    """The dotted request field of a pydantic error location such as ``("body", "image",
    "id")``, without the union-member tags pydantic appends (``filter.value.str``)."""
    where, rest = (str(loc[0]) if loc else "request"), list(loc[1:])
    if where == "body" and kind != "missing":
        node, kept = body, []
        for part in rest:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                break
            kept.append(part)
        rest = kept
    return ".".join(str(x) for x in rest) or None


def validation_error(exc: RequestValidationError) -> VfsError:
    """A request that did not validate → a 400 naming its field (404 for a path parameter:
    ``/thumb/abc`` names no resource)."""
    errs = list(exc.errors())
    body = getattr(exc, "body", None)
    fields: dict[tuple[str, str | None], list[str]] = {}
    for e in errs:
        loc, kind = e.get("loc", ()), e.get("type", "")
        where = str(loc[0]) if loc else "request"
        field = _field(loc, body, kind)
        if where == "body" and field is None:
            msg = ("the request needs a JSON object body" if kind == "missing" else
                   "the request body is not valid JSON" if kind == "json_invalid" else
                   f"the request body must be a JSON object ({e.get('msg', 'invalid')})")
        else:
            msg = e.get("msg", "invalid")
        msgs = fields.setdefault((where, field), [])
        if msg not in msgs:
            msgs.append(msg)
    parts = [(f"{field}: " if field else "") + "; ".join(m)
             for (_where, field), m in list(fields.items())[:3]]
    if len(fields) > 3:
        parts.append(f"and {len(fields) - 3} more")
    where, field = next(iter(fields), ("request", None))
    if where == "path":
        return NotFound(f"no such resource ({'; '.join(parts)})", param=field)
    return BadParameter("invalid request: " + "; ".join(parts), param=field)


_BY_STATUS = {400: BadParameter, 401: Unauthorized, 403: Forbidden, 404: NotFound,
              405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the JSON error body, once for the whole app."""

    @app.exception_handler(VfsError)
    async def _vfs_error(_req: Request, exc: VfsError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and msg == "Not Found":
            msg = "no such page or API endpoint"
        elif exc.status_code == 405 and msg == "Method Not Allowed":
            msg = "this endpoint does not accept that HTTP method"
        cls = _BY_STATUS.get(exc.status_code)
        if cls is None:  # e.g. a range the static files cannot serve
            err = VfsError(msg)
            err.http_status, err.code = exc.status_code, "http_error"
        else:
            err = cls(msg)
        return error_response(err, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception):  # a fault of the server: always 5xx
        log.error("internal error", exc_info=exc)
        return JSONResponse({"error": "internal", "message":
                             f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)
