"""The format-version policy.

Every cache records ``format_version``. This vfsearch writes :data:`~.layout.FORMAT_VERSION`
and reads every older version it knows: what an older cache lacks is listed in
:data:`ADDED` (version → arrays per layer that version added). An operation that needs a
missing array refuses with :class:`~vfsearch.errors.CacheOutdated`, naming the upgrade
(``vfsearch upgrade CACHE`` / :func:`vfsearch.cache.upgrade`) — never a silent misread;
extending an older cache (``vfsearch index`` into it) upgrades it first. The upgrade adds what
is missing chunk by chunk and records its progress, so an interrupted upgrade resumes; arrays
whose storage changed (:data:`RESTORED`) are rewritten the same way. A cache written by a newer
vfsearch is refused.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CacheMismatch, CacheOutdated
from .layout import FORMAT_VERSION

#: format version → per-layer arrays it added (what an older cache lacks)
ADDED: dict[int, tuple[str, ...]] = {2: ("pooled",), 4: ("digest",)}
#: format version → per-layer arrays it stores differently (an older cache has them and reads
#: correctly, only slower): 3 keeps ``refine`` uncompressed, so that one row is one read
RESTORED: dict[int, tuple[str, ...]] = {3: ("refine",)}
OLDEST = 1


def check_readable(path: Path, attrs: dict) -> None:
    v = attrs.get("format_version")
    if not isinstance(v, int) or v < OLDEST:
        raise CacheMismatch(f"{path}: unknown cache format version {v!r}")
    if v > FORMAT_VERSION:
        raise CacheMismatch(f"{path} was written by a newer vfsearch (cache format {v}; this "
                            f"one reads up to {FORMAT_VERSION}): upgrade vfsearch")


def missing(version: int) -> tuple[str, ...]:
    """Per-layer arrays a cache of ``version`` lacks."""
    return tuple(a for v in range(version + 1, FORMAT_VERSION + 1) for a in ADDED.get(v, ()))


def restored(version: int) -> tuple[str, ...]:
    """Per-layer arrays a cache of ``version`` stores in an older way (the upgrade rewrites
    them)."""
    return tuple(a for v in range(version + 1, FORMAT_VERSION + 1) for a in RESTORED.get(v, ()))


def require(cache, layer: str, name: str) -> None:
    """Refuse, with the upgrade to run, when ``layer`` lacks the array ``name``."""
    if cache.has(layer, name):
        return
    raise CacheOutdated(
        f"cache {cache.path} (format {cache.format_version}) has no {name!r} arrays, which "
        f"this operation needs; add them with: vfsearch upgrade {cache.path} (resumable; "
        "Python: vfsearch.cache.upgrade(path))", param="cache")
