"""The local web app: ``vfsearch serve CACHE [CACHE...]``.

``create_app(caches, token=None, host=None, allow_hosts=())`` builds the FastAPI app (for tests,
or to mount elsewhere); ``serve(paths, ...)`` opens the caches, prints the URL and runs uvicorn.

The API is declared: ``GET /api/openapi.json`` is its OpenAPI document (every route, its
request and response models, binary media types). Every error is
``{"error": code, "message": ..., "param"?: field}`` with a 4xx status for bad input (5xx only
for faults of the server itself).

    GET  /api/caches                               caches, layers (grid, channels), column summaries
    GET  /api/caches/{cache}/images?q&column&value&offset&limit   filtered dataset listing
    GET  /api/caches/{cache}/random?q&column&value a random indexed image
    GET  /api/caches/{cache}/images/{id}           one image: path, label, size, meta, geometry
    GET  /api/caches/{cache}/lookup?from_cache&id  the same file in another cache
    GET  /api/caches/{cache}/thumb/{id}            JPEG thumbnail (ETag, Cache-Control, 304)
    GET  /api/caches/{cache}/image/{id}            the original file (only inside the image root)
    POST /api/uploads  (multipart "file")          an external query image → {upload, size, …}
    GET  /api/uploads/{upload}[/image]             its size / the image
    POST /api/search   {cache, layer?, image: {id[, cache]} | {upload}, box | mask | whole,
                        k?, exclude_self?, filter?: {column, value}, thumbs?}
                       → {search_id, query, matches, total, curve (≤ 2000 points), timing}
    GET  /api/searches/{sid}/window?start&stop&limit&column&value&thumbs   images at ranks
    GET  /api/searches/{sid}/heat?ids=1,2,3        score maps (every offset) for heat overlays
    GET  /api/searches/{sid}/export?format=csv|json&k
    GET  /api/searches/{sid}/scores | /order       float32 scores / int32 rank order (LE)
    GET  /api/explain/methods                      explain methods, their parameters
    POST /api/searches/{sid}/explain {id, method, params?}
                       → 200 {status: "done", result} | 202 {job} (model-running, memoised)
    GET  /api/caches/{cache}/map?layer&method      dataset map (or status missing | no_atlas |
                                                   computing); POST computes it → 202 {job}
    GET  /api/caches/{cache}/map/grid.bin          the grid as int32 (X-Side header)
    GET  /api/caches/{cache}/map/atlas/{page}      atlas page JPEG (ETag, 304)
    GET  /api/jobs/{job}                           background job: status, progress, result,
                                                   error + code
    GET  /api/overlap?a=sid&b=sid                  shared images of two searches' top-k sets

Trust (:mod:`.security`): requests must name a loopback host, the bound address or an allowed
host (``--allow-host``, for a reverse proxy); POSTs must be JSON (multipart for uploads) and
come from the app's own origin; off loopback a token is required.
"""

from __future__ import annotations

import errno
import secrets
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from ..errors import BadParameter, VfsError
from .app import create_app
from .security import is_loopback
from .state import AppState

__all__ = ["AppState", "create_app", "is_loopback", "serve"]


def _url(host: str, port: int, token: str | None) -> str:
    h = host
    if host in ("0.0.0.0", "::", ""):
        h = "127.0.0.1"
    elif ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return f"http://{h}:{port}/" + (f"?token={token}" if token else "")


def serve(paths, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          open_browser: bool = False, image_root=None, *, allow_hosts=(),
          log_level: str = "warning") -> None:
    """Open the caches at ``paths``, print the URL and serve the app until interrupted.

    Bound to a non-loopback address, the server requires a token (one is generated when none is
    given), accepted as ``?token=``, a cookie, or ``Authorization: Bearer``. Requests must name
    a loopback host, ``host`` or one of ``allow_hosts`` (e.g. a reverse proxy's name,
    ``"*.example.org"``, or ``"*"``) in their ``Host`` header (against DNS rebinding).
    """
    import uvicorn

    from ..cache import open_cache

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise VfsError("give at least one cache to serve")
    if image_root is not None and len(paths) != 1:
        raise VfsError("an image root re-points a single cache; serve one cache at a time with it",
                       param="image_root")
    caches = [open_cache(p, image_root=image_root) for p in paths]
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    state = AppState(caches, token=token)
    app = create_app(state, token=token, host=host, allow_hosts=allow_hosts or ())
    sock = _bind(host, port)
    threading.Thread(target=state.warm_all, name="vfsearch-warm", daemon=True).start()
    url = _url(host, port, token)
    names = ", ".join(f"{n} ({len(e.cache)} images)" for n, e in state.caches.items())
    print(f"vfsearch: serving {names}", file=sys.stderr)
    print(f"vfsearch: open {url}", file=sys.stderr, flush=True)
    if not is_loopback(host):
        print("vfsearch: the server is reachable from other machines; share the token with care",
              file=sys.stderr)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before the URL is announced so that a port in
    use is one clear error (uvicorn then serves on this socket)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadParameter(f"cannot listen on host {host!r}: {e.strerror}", param="host") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BadParameter(f"port {port} on {host} is already in use; pick another (e.g. "
                               f"{port + 1}) or stop what listens there",
                               param="port") from None
        if e.errno == errno.EACCES:
            raise BadParameter(f"no permission to listen on port {port} (ports below 1024 need "
                               "privileges); pick another", param="port") from None
        raise BadParameter(f"cannot listen on {host}:{port}: {e.strerror}", param="host") from None
    sock.set_inheritable(True)
    return sock
