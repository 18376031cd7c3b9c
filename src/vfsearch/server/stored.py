"""What the server keeps in memory between requests: uploaded query images and recent searches
(with every image's score, for the distribution curve and rank windows)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..engine import Query

__all__ = ["StoredSearch", "Upload"]


@dataclass
class Upload:
    id: str
    name: str
    image: Image.Image  # upright RGB
    display: bytes  # JPEG or PNG for the browser
    media_type: str
    base: dict = field(default_factory=dict)  # (cache key, layer) -> whole-image Query

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def nbytes(self) -> int:
        w, h = self.image.size
        return w * h * 3 + len(self.display)


@dataclass
class StoredSearch:
    id: str
    cache: str
    layer: str
    query: Query
    scores: np.ndarray  # (N,) float32, -inf for excluded rows
    top: list  # engine matches
    created: float
    image: dict  # the query image reference
    _order: np.ndarray | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def order(self) -> np.ndarray:
        """Ids with finite scores, best first; the engine's (exact) top-k first. Computed on the
        first rank-window request, not for every search."""
        if self._order is None:
            with self._lock:
                if self._order is None:
                    top_ids = np.array([m.id for m in self.top], dtype=np.int64)
                    s = self.scores.copy()
                    s[top_ids] = -np.inf
                    rest = np.flatnonzero(np.isfinite(s))
                    rest = rest[np.argsort(-s[rest], kind="stable")]
                    self._order = np.concatenate([top_ids, rest]).astype(np.int64)
        return self._order

    def nbytes(self) -> int:
        return 2 * self.scores.nbytes + self.query.features.nbytes + (
            self.query.mask.nbytes if self.query.mask is not None else 0)
