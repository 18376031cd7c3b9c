"""Region search: queries on the feature grid, the fused scan kernel, top-k with exact refine."""

from .query import Query, box_mask, load_mask, make_query, register_query_model
from .searcher import Match, SearchResult, exact_scores, search, search_many

__all__ = [
    "Match",
    "Query",
    "SearchResult",
    "box_mask",
    "exact_scores",
    "load_mask",
    "make_query",
    "register_query_model",
    "search",
    "search_many",
]
