"""The FastAPI application: the declared JSON API (``/api/openapi.json``) + the single-page app.

``create_app`` wires the pieces together and nothing imports it back: the routes
(:mod:`.routes`) depend only on the HTTP helpers (:mod:`.http`), the wire models
(:mod:`.models`) and the state (:mod:`.state`, :mod:`.views`); the guards (:mod:`.security`)
check Host, origin and token before any route runs. Files are only ever looked up by (cache
name, integer id); no client string is joined to a path.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .http import install_error_handlers
from .openapi import OPENAPI_URL, install_openapi
from .routes import ROUTERS
from .routes.page import STATIC
from .security import HostGuard, OriginGuard, TokenGuard, allowed_hosts
from .state import AppState
from .views import Views

__all__ = ["create_app"]


def create_app(caches, token: str | None = None, *, max_concurrent: int | None = None,
               host: str | None = None, allow_hosts: Iterable[str] = ()) -> FastAPI:
    """The web app for ``caches`` (a dict name → cache, a list of caches / cache paths, or an
    :class:`AppState`).

    With ``token``, every request must carry it. Requests must name a loopback host, ``host``
    (the address the server is bound to) or one of ``allow_hosts`` (``"proxy.example.org"``,
    ``"*.example.org"``, ``"*"``) in their ``Host`` header.
    """
    state = caches if isinstance(caches, AppState) else AppState(caches, token=token,
                                                                 max_concurrent=max_concurrent)
    if token is not None:
        state.token = token
    app = FastAPI(title="vfsearch", version="1", docs_url=None, redoc_url=None,
                  openapi_url=OPENAPI_URL,
                  description="Brush a region of an image, find the most similar regions in a "
                              "dataset. Every error is `{error, message, param?}`.")
    app.state.vfs = state
    app.state.views = Views(state)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_openapi(app)

    # outermost last: Host, then origin / content type, then the token
    if state.token:
        app.add_middleware(TokenGuard, token=state.token)
    app.add_middleware(OriginGuard)
    names, patterns = allowed_hosts(host, allow_hosts)
    app.add_middleware(HostGuard, names=names, patterns=patterns)
    return app
