"""The dataset map (metadata, grid, atlas pages, computing it), background jobs and result
explanations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..http import conditional, fast_json
from ..models import ExplainMethods, ExplainRequest, ExplainResponse, Job, MapInfo
from ..openapi import ERRORS, binary
from ..views import MAP_METHODS
from .deps import CacheName, Layer, SearchId, ViewsDep

router = APIRouter(responses=ERRORS)

MapMethod = Annotated[Literal[MAP_METHODS], Query(description="the map's embedding")]


@router.get("/api/caches/{name}/map", response_model=MapInfo,
            summary="the dataset map: side, atlas pages, grid (or its status)")
async def map_info(views: ViewsDep, name: CacheName, layer: Layer = None,
                   method: MapMethod = "tsne", grid: bool = True):
    return fast_json(await run_in_threadpool(views.map_info, name, layer, method, grid))


@router.post("/api/caches/{name}/map", status_code=202, response_model=Job,
             summary="compute the map and its atlas in the background")
async def map_compute(views: ViewsDep, name: CacheName, layer: Layer = None,
                      method: MapMethod = "tsne"):
    return fast_json(await run_in_threadpool(views.compute_map, name, layer, method),
                     status_code=202)


@router.get("/api/caches/{name}/map/grid.bin", response_class=Response,
            responses=binary("application/octet-stream",
                             "the grid: side × side image ids, int32 little-endian, -1 = empty",
                             {"X-Side": "the grid's side"}))
async def map_grid(views: ViewsDep, name: CacheName, layer: Layer = None,
                   method: MapMethod = "tsne"):
    data, side = await run_in_threadpool(views.map_grid, name, layer, method)
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Side": str(side), "Cache-Control": "no-cache"})


@router.get("/api/caches/{name}/map/atlas/{page}", response_class=Response,
            responses=binary("image/jpeg", "one atlas page of map thumbnails (ETag)",
                             not_modified=True))
async def map_atlas(views: ViewsDep, name: CacheName,
                    page: Annotated[int, Path(ge=0, le=1 << 20)], request: Request,
                    layer: Layer = None, method: MapMethod = "tsne"):
    data, etag = await run_in_threadpool(views.atlas, name, page, layer, method)
    return conditional(request, data, "image/jpeg", etag, "private, no-cache")


@router.get("/api/jobs/{jid}", response_model=Job,
            summary="a background job: status, progress, error (message and code), result")
async def job(views: ViewsDep, jid: Annotated[str, Path(max_length=64)]):
    return fast_json(views.jobs.json(jid))


@router.get("/api/explain/methods", response_model=ExplainMethods,
            summary="the explain methods: title, whether they run the model, parameters")
async def explain_methods(views: ViewsDep):
    return fast_json(await run_in_threadpool(views.explain_methods))


@router.post("/api/searches/{sid}/explain", response_model=ExplainResponse,
             responses={202: {"model": Job, "description": "a model-running method: the job"}},
             summary="why a result matches: done at once, or a background job (memoised)")
async def explain(views: ViewsDep, sid: SearchId, body: ExplainRequest):
    code, out = await run_in_threadpool(views.explain, sid, body.id, body.method, body.params)
    return fast_json(out, status_code=code)
