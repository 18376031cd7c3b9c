"""The feature cache: one Zarr v3 directory per (image set, model), one group per layer.

This package is the only code that knows the cache's layout (:mod:`.layout`). Read with
:class:`FeatureCache` (:func:`open_cache`), write with :class:`CacheWriter`; older formats are
read where possible and upgraded with :func:`upgrade` (:mod:`.versions`).
"""

from .layout import (
    COMPRESSIONS,
    DTYPES,
    FORMAT_VERSION,
    INDEXED,
    PENDING,
    REFINE,
    SKIPPED,
    compressor,
    estimate_bytes,
    quantize,
)
from .reader import FeatureCache, LayerData, Stored, disk_usage, open_cache
from .rows import read_rows
from .writer import CacheWriter, RowRecord, synthetic_cache, upgrade

__all__ = [
    "COMPRESSIONS",
    "DTYPES",
    "FORMAT_VERSION",
    "INDEXED",
    "PENDING",
    "REFINE",
    "SKIPPED",
    "CacheWriter",
    "FeatureCache",
    "LayerData",
    "RowRecord",
    "Stored",
    "compressor",
    "disk_usage",
    "estimate_bytes",
    "open_cache",
    "quantize",
    "read_rows",
    "synthetic_cache",
    "upgrade",
]
