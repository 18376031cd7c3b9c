"""One open cache as the server sees it: fast per-row lookups, string columns, the path index,
the summary the page shows, and loading a layer into RAM once."""

from __future__ import annotations

import logging
import threading

import numpy as np

from ..cache import FeatureCache
from ..errors import NotFound

log = logging.getLogger("vfsearch.server")

__all__ = ["CacheEntry"]


class CacheEntry:
    """One open cache plus what the server derives from it (string columns, path index)."""

    def __init__(self, name: str, cache: FeatureCache):
        self.name = name
        self.cache = cache
        self.lock = threading.Lock()
        self.warm: set[str] = set()
        self.in_ram: set[str] = set()
        self._path_index: dict[str, int] | None = None
        self._columns: dict[str, np.ndarray] = {}
        self._summary: dict | None = None
        self._lower: np.ndarray | None = None
        self._n: int | None = None
        self._transform = None

    # -- fast per-row lookups (FeatureCache.__len__ goes through zarr on every call) ----------
    @property
    def n(self) -> int:
        if self._n is None:
            self._n = len(self.cache)
        return self._n

    def check_id(self, i, param: str | None = "id") -> int:
        """``i`` as a valid row id of this cache, else NotFound naming ``param``."""
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise NotFound(f"image id must be an integer, got {i!r}", param=param) from None
        if not 0 <= i < self.n:
            raise NotFound(f"no image with id {i} (cache {self.name!r} has ids 0–{self.n - 1})",
                           param=param)
        return i

    def size(self, i: int) -> tuple[int, int]:
        w, h = self.cache.sizes[i]
        return int(w), int(h)

    @property
    def transform(self):
        if self._transform is None:
            self._transform = self.cache.transform
        return self._transform

    def path(self, i: int) -> str:
        return str(self.cache.paths[i])

    def label(self, i: int) -> str:
        return str(self.cache.labels[i])

    # -- metadata ---------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return ["label"] + [c for c in self.cache.meta_columns if c != "label"]

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            self._columns[name] = np.asarray(self.cache.column(name), dtype=object)
        return self._columns[name]

    def path_index(self) -> dict[str, int]:
        if self._path_index is None:
            self._path_index = {str(p): i for i, p in enumerate(self.cache.paths)}
        return self._path_index

    def searchable(self) -> np.ndarray:
        """Lower-cased "label path" strings for the dataset text filter."""
        if self._lower is None:
            pairs = zip(self.cache.labels, self.cache.paths, strict=True)
            self._lower = np.array([f"{lab} {p}".lower() for lab, p in pairs], dtype=object)
        return self._lower

    def summary(self) -> dict:
        if self._summary is None:
            c = self.cache
            valid = c.valid
            cols = {}
            for name in self.columns:
                vals = self.column(name)[valid]
                uniq, counts = (np.unique(vals.astype(str), return_counts=True) if len(vals)
                                else ([], []))
                order = np.argsort(-np.asarray(counts), kind="stable")[:60]
                cols[name] = {
                    "n_unique": len(uniq),
                    "values": [[str(uniq[i]), int(counts[i])] for i in order],
                }
            layers = []
            for layer in c.layers:
                info = c.layer_info(layer)
                layers.append({"name": layer, "grid": list(info["grid"]),
                               "channels": info["channels"], "stride": info.get("stride")})
            self._summary = {
                "name": self.name, "model": c.model, "images": len(c), "indexed": int(valid.sum()),
                "dtype": c.dtype, "refine": c.meta.get("refine", "none"),
                "transform": c.meta["transform"], "layers": layers,
                "default_layer": c.default_layer, "columns": cols,
            }
        return self._summary

    def check_layer(self, layer: str | None) -> str:
        layer = layer or self.cache.default_layer
        if layer not in self.cache.layers:
            raise NotFound(f"cache {self.name!r} has no layer {layer!r}; it has: "
                           f"{', '.join(self.cache.layers)}", param="layer")
        return layer

    def warm_up(self, layer: str) -> None:
        """Load a layer into RAM once (searches then scan memory, not the disk), then make its
        cell-interleaved copy in the background (later searches scan it: faster; searches
        before it is ready scan the features as they are)."""
        if layer in self.warm:
            return
        with self.lock:
            if layer not in self.warm:
                loaded = self.cache.fits_in_memory(layer)
                if loaded:
                    self.cache.load(layer)
                    self.in_ram.add(layer)
                self.warm.add(layer)
                if loaded:
                    threading.Thread(target=self._interleave, args=(layer,),
                                     name="vfsearch-interleave", daemon=True).start()

    def _interleave(self, layer: str) -> None:
        try:
            self.cache.interleave(layer)
        except Exception as exc:  # noqa: BLE001 - only a speed-up: searches go on without it
            log.warning("interleaving %s/%s failed: %s", self.name, layer, exc)

    def rows_features(self, layer: str, ids: np.ndarray) -> np.ndarray:
        """Float32 feature maps (m, H, W, C) of a few rows, as exact as the cache allows."""
        return self.cache.rows_features(layer, ids)
