"""Caches, the dataset listing, thumbnails, original files and uploaded query images."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from ...errors import BadImage, PayloadTooLarge
from ..http import conditional, fast_json
from ..models import MAX_INT, CachesResponse, Health, ImageList, ImageRecord, UploadRecord
from ..openapi import ERRORS, binary
from ..state import MAX_UPLOAD_BYTES
from .deps import CacheName, ImageId, State, Text, UploadId

router = APIRouter(responses=ERRORS)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")


@router.get("/api/health", response_model=Health, summary="the server is up")
async def health(state: State):
    return fast_json({"ok": True, "caches": list(state.caches)})


@router.get("/api/caches", response_model=CachesResponse,
            summary="open caches: layers (grid, channels), column summaries, limits")
async def caches_list(state: State):
    return fast_json({"caches": await run_in_threadpool(state.caches_json),
                      "limits": {"upload_bytes": MAX_UPLOAD_BYTES}})


@router.get("/api/caches/{name}/images", response_model=ImageList,
            summary="the dataset listing, filtered by text and by a column's value")
async def images(state: State, name: CacheName, q: Text = None, column: Text = None,
                 value: Text = None, offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 120):
    return fast_json(await run_in_threadpool(state.list_images, name, q, column, value, offset,
                                             limit))


@router.get("/api/caches/{name}/random", response_model=ImageRecord,
            summary="a random indexed image (among those the filter keeps)")
async def random_image(state: State, name: CacheName, q: Text = None, column: Text = None,
                       value: Text = None):
    return fast_json(await run_in_threadpool(state.random_image, name, q, column, value))


@router.get("/api/caches/{name}/images/{image_id}", response_model=ImageRecord,
            summary="one image: path, label, size, meta, geometry")
async def image_info(state: State, name: CacheName, image_id: ImageId):
    return fast_json(await run_in_threadpool(state.image_info, name, image_id))


@router.get("/api/caches/{name}/lookup", response_model=ImageRecord,
            summary="the same file (by path) as image `id` of cache `from_cache`")
async def lookup(state: State, name: CacheName,
                 from_cache: Annotated[str, Query(max_length=200)],
                 id: Annotated[int, Query(ge=-MAX_INT, le=MAX_INT)]):
    return fast_json(await run_in_threadpool(state.lookup, name, from_cache, id))


@router.get("/api/caches/{name}/thumb/{image_id}", response_class=Response,
            responses=binary("image/jpeg", "JPEG thumbnail (ETag, Cache-Control)",
                             not_modified=True))
async def thumb(state: State, name: CacheName, image_id: ImageId, request: Request):
    hit = state.thumbs.get((name, image_id))
    data, etag = hit if hit is not None else await run_in_threadpool(state.thumbnail, name,
                                                                     image_id)
    return conditional(request, data, "image/jpeg", etag, "private, max-age=86400")


@router.get("/api/caches/{name}/image/{image_id}", response_class=Response,
            responses={200: {"description": "the original file (only inside the image root)",
                             "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                         for t in IMAGE_TYPES}}})
async def original(state: State, name: CacheName, image_id: ImageId):
    src, media = await run_in_threadpool(state.original, name, image_id)
    headers = {"Cache-Control": "private, max-age=3600"}
    if isinstance(src, FilePath):
        return FileResponse(src, media_type=media, headers=headers)
    return Response(src, media_type=media, headers=headers)


@router.post("/api/uploads", response_model=UploadRecord,
             summary="an external query image (multipart field `file`) → its upload id")
async def upload(state: State, file: UploadFile):
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"upload exceeds the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit",
                              param="file")
    if not data:
        raise BadImage("upload is empty", param="file")
    return fast_json(await run_in_threadpool(state.add_upload, data, file.filename or "upload"))


@router.get("/api/uploads/{uid}", response_model=UploadRecord,
            summary="an upload: its size and the model's view of it per cache")
async def upload_info(state: State, uid: UploadId):
    return fast_json(state.upload_record(state.upload(uid)))


@router.get("/api/uploads/{uid}/image", response_class=Response,
            responses=binary("image/jpeg", "the uploaded image (upright, re-encoded)"))
async def upload_image(state: State, uid: UploadId):
    u = state.upload(uid)
    return Response(u.display, media_type=u.media_type,
                    headers={"Cache-Control": "private, max-age=3600"})
