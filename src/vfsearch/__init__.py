"""vfsearch: interactive visual feature search.

Brush a region of an image and find the most similar regions (by a model's features) in a whole
dataset; see where each match is and why.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    BadImage,
    BadMask,
    BadQuery,
    CacheError,
    CacheMismatch,
    CacheNotFound,
    DatasetError,
    VfsError,
)

if TYPE_CHECKING:
    from .cache import FeatureCache, open_cache
    from .engine import Match, Query, SearchResult, make_query, search, search_many
    from .extract import FeatureExtractor
    from .indexing import index
    from .models import DEFAULT_MODEL, from_module, list_layers, load_model
    from .transforms import Transform

__version__ = "0.1.0"

# imported on first use, so that ``import vfsearch`` (and the CLI's start-up) stays light
_LAZY = {
    "FeatureCache": ".cache", "open_cache": ".cache",
    "FeatureExtractor": ".extract", "index": ".indexing",
    "DEFAULT_MODEL": ".models", "from_module": ".models", "list_layers": ".models",
    "load_model": ".models",
    "Match": ".engine", "Query": ".engine", "SearchResult": ".engine", "make_query": ".engine",
    "search": ".engine", "search_many": ".engine",
    "Transform": ".transforms",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "BadImage",
    "BadMask",
    "BadQuery",
    "CacheError",
    "CacheMismatch",
    "CacheNotFound",
    "DEFAULT_MODEL",
    "DatasetError",
    "FeatureCache",
    "FeatureExtractor",
    "Match",
    "Query",
    "SearchResult",
    "Transform",
    "VfsError",
    "from_module",
    "index",
    "list_layers",
    "load_model",
    "make_query",
    "open_cache",
    "search",
    "search_many",
]
