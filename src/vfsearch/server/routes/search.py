"""Searches and what hangs off a stored search: rank windows, heat maps, exports, the raw
score and rank-order vectors, and the overlap of two searches."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...errors import BadParameter
from ..http import fast_json
from ..models import (
    MAX_INT,
    ExportResponse,
    HeatResponse,
    Overlap,
    SearchRequest,
    SearchResponse,
    WindowResponse,
)
from ..openapi import ERRORS, binary
from .deps import SearchId, State, Text, ViewsDep

router = APIRouter(responses=ERRORS)

Rank = Annotated[int, Query(ge=-MAX_INT, le=MAX_INT)]


@router.post("/api/search", response_model=SearchResponse,
             summary="search: the region's best matches, the score curve, timings")
async def run_search(state: State, body: SearchRequest):
    return fast_json(await run_in_threadpool(state.run_search, body.model_dump()))


@router.get("/api/searches/{sid}/window", response_model=WindowResponse,
            summary="the images at ranks [start, stop) (at most `limit`, evenly spaced)")
async def window(state: State, sid: SearchId, start: Rank = 0, stop: Rank = 20,
                 limit: Annotated[int, Query(ge=1, le=MAX_INT)] = 60, column: Text = None,
                 value: Text = None, thumbs: bool = False):
    return fast_json(await run_in_threadpool(state.window, sid, start, stop, limit, column, value,
                                             thumbs))


def parse_ids(ids: str) -> list[int]:
    try:
        return [int(x) for x in ids.split(",") if x.strip()]
    except ValueError:
        raise BadParameter("ids must be comma-separated integers", param="ids") from None


@router.get("/api/searches/{sid}/heat", response_model=HeatResponse,
            summary="score maps (every offset) of some results, for heat overlays")
async def heat(state: State, sid: SearchId,
               ids: Annotated[str, Query(max_length=20_000, description="e.g. 3,17,42")]):
    return fast_json(await run_in_threadpool(state.heat, sid, parse_ids(ids)))


@router.get("/api/searches/{sid}/export", response_model=ExportResponse,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "the top k as JSON or CSV (an attachment)"}})
async def export(state: State, sid: SearchId, format: Literal["json", "csv"] = "json",
                 k: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None):
    head, items = await run_in_threadpool(state.export, sid, k)
    fname = f"vfsearch-{head['cache']}-{head['layer']}-{sid}.{format}"
    disp = {"Content-Disposition": f'attachment; filename="{fname}"'}
    if format == "json":
        return Response(json.dumps({**head, "matches": items}, indent=1, allow_nan=False),
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


@router.get("/api/searches/{sid}/scores", response_class=Response,
            responses=binary("application/octet-stream",
                             "every image's score, float32 little-endian (-inf = none)",
                             {"X-Count": "number of scores"}))
async def scores(views: ViewsDep, sid: SearchId):
    data = await run_in_threadpool(views.scores, sid)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Count": str(len(data) // 4)})


@router.get("/api/searches/{sid}/order", response_class=Response,
            responses=binary("application/octet-stream",
                             "ids best first (the rank order of the curve and its windows), "
                             "int32 little-endian", {"X-Count": "number of ids"}))
async def order(views: ViewsDep, sid: SearchId):
    data = await run_in_threadpool(views.order, sid)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Count": str(len(data) // 4)})


@router.get("/api/overlap", response_model=Overlap,
            summary="the images two searches' top-k sets share")
async def overlap(views: ViewsDep, a: Annotated[str, Query(max_length=64)],
                  b: Annotated[str, Query(max_length=64)]):
    return fast_json(await run_in_threadpool(views.overlap, a, b))
