"""How the routes declare themselves in the OpenAPI document (``GET /api/openapi.json``): the
error body every 4xx/5xx has, binary responses with their media types, and the final pass over
the document (request validation errors are 400s with the error body, not FastAPI's 422)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Mount

from .models import ErrorBody

__all__ = ["ERRORS", "GUARD_ERRORS", "OPENAPI_URL", "binary", "install_openapi"]

OPENAPI_URL = "/api/openapi.json"

_ERROR_TEXT = {
    400: "bad input (the message and `param` say which field)",
    401: "the server needs its access token",
    403: "refused: a foreign Host, a cross-site request, or a file outside the image root",
    404: "no such cache, image, search, upload, job or page",
    405: "the endpoint does not accept that method",
    409: "the cache was built differently or needs an upgrade",
    413: "upload too large",
    415: "a state-changing request whose body is not JSON",
    500: "a fault of the server itself (never bad input)",
}

#: the error responses every route can give (FastAPI's ``responses=``)
ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in _ERROR_TEXT.items()}
#: what the guards answer before any route runs (the page and static files have no other errors)
GUARD_ERRORS = {code: ERRORS[code] for code in (401, 403)}


def binary(media_type: str, description: str, headers: dict[str, str] | None = None,
           not_modified: bool = False) -> dict:
    """``responses=`` for a route whose 200 is ``media_type`` bytes (plus a 304 with ETags)."""
    ok = {"description": description,
          "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}
    if headers:
        ok["headers"] = {h: {"description": d, "schema": {"type": "string"}}
                         for h, d in headers.items()}
    out = {200: ok}
    if not_modified:
        out[304] = {"description": "not modified (the client's If-None-Match names the ETag)"}
    return out


def _mount_op(mount: Mount, doc: dict) -> dict:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return {
        "summary": f"a file of the web app under {mount.path}/ (never outside it)",
        "operationId": f"static_{mount.name or 'files'}",
        "parameters": [{"name": "file", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "the file",
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "304": {"description": "not modified"},
            "401": {"description": _ERROR_TEXT[401], **err},
            "403": {"description": _ERROR_TEXT[403], **err},
            "404": {"description": "no such file", **err},
            "405": {"description": "not that method", **err},
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Build the document once, on first request: FastAPI's, with its default 422 validation
    responses replaced by the 400 error body the app really sends."""

    def openapi():
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            for path in doc.get("paths", {}).values():
                for op in path.values():
                    responses = op.get("responses", {})
                    responses.pop("422", None)
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for r in app.routes:  # mounted static files: one documented path each
                if isinstance(r, Mount):
                    doc["paths"][f"{r.path}/{{file}}"] = {"get": _mount_op(r, doc)}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
