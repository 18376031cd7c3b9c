"""Concepts of a cache's layers: the stored set (or its status), its contact sheets, and
discovering them in the background. Searching a concept is ``POST /api/search`` with
``concept``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...concepts import METHODS
from ..http import conditional, fast_json, not_modified
from ..models import ConceptsInfo, DiscoverRequest, ErrorBody, Job
from ..openapi import ERRORS, binary
from .deps import CacheName, Layer, State, ViewsDep

router = APIRouter(responses=ERRORS)

Method = Annotated[Literal[METHODS], Query(description="the discovery method")]
ConceptId = Annotated[int, Path(ge=0, le=1 << 20, description="a concept id of the set")]
SHEET = binary("image/png", "a stored contact sheet (PNG, ETag)", not_modified=True)
CACHE_CONTROL = "private, no-cache"  # a recomputed set keeps its URLs: revalidate (ETag)


@router.get("/api/caches/{name}/concepts", response_model=ConceptsInfo,
            summary="the stored concepts of a layer (or their status: missing, computing)")
async def concepts_info(state: State, name: CacheName, layer: Layer = None,
                        method: Method = "dictionary",
                        patches: Annotated[int, Query(ge=0, le=1000,
                                                      description="patches per concept")] = 32):
    e = state.entry(name)
    return fast_json(await run_in_threadpool(state.concepts.info, e, layer, method, patches))


@router.post("/api/caches/{name}/concepts", status_code=202, response_model=Job,
             responses={409: {"model": ErrorBody,
                              "description": "another discovery is running (one at a time)"}},
             summary="discover a layer's concepts in the background (stored with their sheets)")
async def concepts_compute(state: State, views: ViewsDep, name: CacheName, layer: Layer = None,
                           method: Method = "dictionary",
                           body: Annotated[DiscoverRequest | None, Body()] = None):
    e = state.entry(name)
    p = body or DiscoverRequest()
    out = await run_in_threadpool(state.concepts.compute, e, views.jobs, layer, method,
                                  p.n_concepts, p.n_queries)
    return fast_json(out, status_code=202)


async def _sheet(state, request: Request, name: str, layer, method, k):
    e = state.entry(name)
    cs, k, etag = await run_in_threadpool(state.concepts.sheet_etag, e, layer, method, k)
    if not_modified(request, etag):
        return conditional(request, b"", "image/png", etag, CACHE_CONTROL)
    data = await run_in_threadpool(state.concepts.sheet, cs, k)
    return conditional(request, data, "image/png", etag, CACHE_CONTROL)


@router.get("/api/caches/{name}/concepts/sheet", response_class=Response, responses=SHEET,
            summary="the overview sheet: every concept as a row of its first patches")
async def concepts_overview(state: State, request: Request, name: CacheName, layer: Layer = None,
                            method: Method = "dictionary"):
    return await _sheet(state, request, name, layer, method, None)


@router.get("/api/caches/{name}/concepts/sheet/{k}", response_class=Response, responses=SHEET,
            summary="one concept's sheet: its best patches, each outlined in its context")
async def concepts_sheet(state: State, request: Request, name: CacheName, k: ConceptId,
                         layer: Layer = None, method: Method = "dictionary"):
    return await _sheet(state, request, name, layer, method, k)
