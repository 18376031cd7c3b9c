"""What every route module shares: the app's state and views as FastAPI dependencies, and the
declared types of the parameters that recur in paths and query strings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from ..models import MAX_INT
from ..state import AppState
from ..views import Views

__all__ = ["CacheName", "ImageId", "Layer", "SearchId", "State", "Text", "UploadId", "ViewsDep"]


def get_state(request: Request) -> AppState:
    return request.app.state.vfs


def get_views(request: Request) -> Views:
    return request.app.state.views


State = Annotated[AppState, Depends(get_state)]
ViewsDep = Annotated[Views, Depends(get_views)]

CacheName = Annotated[str, Path(max_length=200, description="an open cache's name")]
ImageId = Annotated[int, Path(ge=-MAX_INT, le=MAX_INT, description="image id (row) in the cache")]
SearchId = Annotated[str, Path(max_length=64, description="a search_id from POST /api/search")]
UploadId = Annotated[str, Path(max_length=64, description="an upload id from POST /api/uploads")]
Text = Annotated[str | None, Query(max_length=1000)]
Layer = Annotated[str | None, Query(max_length=200, description="default: the cache's default")]
