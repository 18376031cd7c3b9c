"""The single-page app: ``/`` and the favicon (the static files are mounted by the app)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..openapi import GUARD_ERRORS

__all__ = ["STATIC", "router"]

STATIC = Path(__file__).resolve().parent.parent.parent / "static"

router = APIRouter(responses=GUARD_ERRORS)


@router.get("/", response_class=FileResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                             "description": "the web app"}})
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", status_code=204, response_class=Response,
            responses={204: {"description": "no icon"}})
async def favicon():
    return Response(status_code=204)
