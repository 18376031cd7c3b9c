"""vfsearch: interactive visual feature search.

Brush a region of an image and find the most similar regions (by a model's features) in a whole
dataset; see where each match is and why.
"""

from .cache import FeatureCache, open_cache
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
from .extract import FeatureExtractor, index
from .models import DEFAULT_MODEL, from_module, list_layers, load_model
from .engine import Match, Query, SearchResult, make_query, search, search_many
from .transforms import Transform

__version__ = "0.1.0"

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
