"""What a local server that users trust checks before any route runs (as Jupyter does).

* :class:`HostGuard` — the ``Host`` header must be a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``, …), the address the server is bound to, or an allowed host (a
  reverse proxy's name). A page on another site that rebinds its DNS name to 127.0.0.1 sends
  its own name as ``Host`` and is refused (DNS rebinding).
* :class:`OriginGuard` — a state-changing request (POST, …) must send JSON (or multipart form
  data, for uploads) or no body at all, and when the browser says where it comes from
  (``Origin``, ``Sec-Fetch-Site``) it must be the app's own origin. A cross-site ``text/plain``
  form post (which browsers send without a CORS preflight) is refused.
* :class:`TokenGuard` — the access token (``?token=``, cookie or ``Authorization: Bearer``) on
  every request when the server has one (always when bound off loopback).

Each refusal is a :class:`~vfsearch.errors.VfsError` rendered by the one error mapping.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from ..errors import Forbidden, Unauthorized, VfsError
from .http import UnsupportedMediaType, error_response

__all__ = ["TOKEN_COOKIE", "HostGuard", "OriginGuard", "TokenGuard", "allowed_hosts",
           "is_loopback"]

TOKEN_COOKIE = "vfsearch_token"
LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")
WILDCARD = ("", "0.0.0.0", "::", "*")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
BODY_TYPES = ("application/json", "multipart/form-data")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, ``[::1]`` brackets allowed) is this machine."""
    host = host.strip().rstrip(".").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str | None]:
    """``"Example.org:8000"`` → ``("example.org", "8000")``; ``"[::1]:80"`` → ``("::1", "80")``."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:  # a bare name, or a bare IPv6 address
        host, port = value, None
    return host.rstrip("."), (port or None)


def allowed_hosts(bind: str | None = None, extra: Iterable[str] = ()) -> tuple[frozenset, tuple]:
    """(exact names, ``*.suffix`` patterns) the ``Host`` header may name.

    Always the loopback names; the bound address; bound to every interface (``0.0.0.0``,
    ``::``) also this machine's host names and any IP address (a literal address cannot be
    rebound); plus ``extra`` (``"proxy.example.org"``, ``"*.example.org"``, or ``"*"`` for any).
    """
    names = set(LOOPBACK_NAMES) | {"127.0.0.1", "::1"}
    patterns: list[str] = []
    if bind is not None:
        b = bind.strip().lower().strip("[]")
        if b in WILDCARD:
            patterns.append("ip")
            for n in (socket.gethostname(), socket.getfqdn()):
                if n:
                    names.add(n.lower().rstrip("."))
        else:
            names.add(b)
    for h in extra or ():
        h = str(h).strip().lower()
        if not h:
            continue
        if h == "*":
            patterns.append("*")
        elif h.startswith("*."):
            patterns.append(h[1:])
        else:
            names.add(split_host(h)[0])
    return frozenset(names), tuple(patterns)


def host_allowed(host: str, names: frozenset, patterns: tuple) -> bool:
    if "*" in patterns:
        return True
    if not host:
        return False
    if host in names or is_loopback(host):
        return True
    if "ip" in patterns and _is_ip(host):
        return True
    return any(p != "ip" and host.endswith(p) for p in patterns)


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class HostGuard:
    """Refuse a request whose ``Host`` is not allowed (403, ``param: "Host"``)."""

    def __init__(self, app, names: frozenset, patterns: tuple = ()):
        self.app, self.names, self.patterns = app, names, patterns

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        raw = _headers(scope).get("host", "")
        host, _port = split_host(raw)
        if not host_allowed(host, self.names, self.patterns):
            err = Forbidden(f"this server does not answer to the host name {raw!r} (a page on "
                            "another site may be trying to reach it); start it with "
                            "--allow-host for a reverse proxy", param="Host")
            return await error_response(err)(scope, receive, send)
        return await self.app(scope, receive, send)


def _same_origin(origin: str, host_header: str) -> bool:
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    default = {"http": "80", "https": "443"}.get(parts.scheme)
    try:
        oport = str(parts.port) if parts.port else default
    except ValueError:
        return False
    host, port = split_host(host_header)
    # the Host header has no scheme: behind a TLS proxy the origin is https and Host its name
    return parts.hostname.lower().rstrip(".") == host and (port or default) == oport


class OriginGuard:
    """State-changing requests: JSON, multipart or no body, and only from the app's own origin."""

    def __init__(self, app):
        self.app = app

    def check(self, scope) -> VfsError | None:
        if scope["method"] in SAFE_METHODS:
            return None
        h = _headers(scope)
        origin = h.get("origin")
        site = h.get("sec-fetch-site", "").lower()
        foreign = origin is not None and not _same_origin(origin, h.get("host", ""))
        if site == "cross-site" or foreign:
            return Forbidden(f"cross-site request refused (from {origin or 'another site'!s}); "
                             "state-changing requests must come from the app's own page",
                             param="Origin")
        ctype = h.get("content-type", "").split(";")[0].strip().lower()
        has_body = h.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in h
        if ctype in BODY_TYPES or (ctype.startswith("application/") and ctype.endswith("+json")):
            return None
        if ctype or has_body:
            return UnsupportedMediaType(
                f"a {scope['method']} request must send application/json (multipart/form-data "
                f"for uploads), not {ctype or 'an untyped body'}", param="Content-Type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            err = self.check(scope)
            if err is not None:
                return await error_response(err)(scope, receive, send)
        return await self.app(scope, receive, send)


class TokenGuard:
    """Require the token (``?token=``, cookie or ``Authorization: Bearer``) on every request.
    A valid ``?token=`` also sets an HttpOnly cookie so the page's later requests carry it."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    def given(self, scope) -> tuple[str | None, bool]:
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if qs.get("token"):
            return qs["token"][0], True
        headers = _headers(scope)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        if "cookie" in headers:
            c = SimpleCookie()
            try:
                c.load(headers["cookie"])
            except CookieError:
                return None, False
            if TOKEN_COOKIE in c:
                return c[TOKEN_COOKIE].value, False
        return None, False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given, via_query = self.given(scope)
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            err = Unauthorized("this server needs its access token: open the URL printed at "
                               "start (…/?token=…) or send 'Authorization: Bearer <token>'")
            resp = error_response(err, headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        if not via_query:
            return await self.app(scope, receive, send)
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie)]
            await send(message)

        return await self.app(scope, receive, send_with_cookie)
