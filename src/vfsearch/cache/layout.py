"""The cache's on-disk layout: every array name, dtype, shape and codec, written once.

Nothing outside :mod:`vfsearch.cache` knows these names. Layout (format version 3)::

    CACHE/zarr.json                 root attributes ``vfsearch``: format version, model, weights
                                    hash, transform, image root, layers, dtype, compression
    CACHE/images/path|label|error   (N,) UTF-8          relative path, label, skip reason
    CACHE/images/meta/<column>      (N,) UTF-8          extra CSV columns
    CACHE/images/size               (N, 2) int32        original (upright) width, height
    CACHE/images/stat               (N, 2) int64        file size, mtime_ns when indexed
    CACHE/images/status             (N,) uint8          0 pending, 1 indexed, 2 skipped
    CACHE/images/thumb              (N,) bytes          JPEG thumbnail (longest side 256)
    CACHE/layers/<layer>/features   (N, H, W, C)        uint8 | int8 | float16 | float32 (NHWC)
    CACHE/layers/<layer>/scale      (N, H, W) float32   per-cell scale (8-bit only)
    CACHE/layers/<layer>/sqnorm     (N, H, W) float32   squared norm of each (dequantised) cell
    CACHE/layers/<layer>/qerr2      (N, H, W) float32   squared quantisation error (8-bit only)
    CACHE/layers/<layer>/refine     (N, H, W, C)        higher-precision copy for exact re-ranking,
                                                        uncompressed (format 3): one row, one read
    CACHE/layers/<layer>/digest     (N, 16) uint8       BLAKE2b-128 of each refine row's bytes
                                                        (format 4): exact copies are read once
    CACHE/layers/<layer>/pooled     (N, C) float32      mean of the (float) cells: global search
    CACHE/derived/<kind>/<layer>/<name>/...             stored results (maps, atlases, concepts)

All per-image arrays are chunked along N with the same chunk length (the refine copy in smaller,
uncompressed chunks: the refine step reads scattered rows, each straight from its chunk file at
its offset, so it reads O(candidates) bytes), and ``images/status`` is written last for a
chunk: Zarr's local store replaces each chunk file atomically, so a chunk whose status is
written is complete.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
from zarr.codecs import BloscCodec
from zarr.core.dtype import VariableLengthBytes, VariableLengthUTF8

from ..errors import BadParameter, CacheError

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")

FORMAT_VERSION = 4
PENDING, INDEXED, SKIPPED = 0, 1, 2
DTYPES = ("int8", "f16", "f32")
REFINE = ("f32", "f16", "none")
COMPRESSIONS = ("zstd", "lz4", "none")
REFINE_CHUNK = 16
DIGEST_BYTES = 16
THUMB_CHUNK = 64

IMAGE_TEXT = ("path", "label", "error")


def image_key(name: str) -> str:
    return f"images/{name}"


def meta_key(column: str) -> str:
    return f"images/meta/{column}"


def layer_key(layer: str, name: str = "") -> str:
    return f"layers/{layer}" + (f"/{name}" if name else "")


def derived_key(kind: str, layer: str, name: str) -> str:
    return f"derived/{kind}/{layer}/{name}"


def compressor(kind: str = "zstd") -> list:
    if kind not in COMPRESSIONS:
        raise BadParameter(f"unknown compression {kind!r} (use {', '.join(COMPRESSIONS)})",
                           param="compression")
    if kind == "none":
        return []
    if kind == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def stored_dtype(dtype: str, nonnegative: bool) -> np.dtype:
    if dtype == "int8":
        return np.dtype(np.uint8 if nonnegative else np.int8)
    return np.dtype(np.float16 if dtype == "f16" else np.float32)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the layout: key, per-row shape, dtype, chunk rows, compressed, fill."""

    key: str
    row_shape: tuple[int, ...]
    dtype: object
    chunk: int
    compressed: bool = True
    fill: object = 0


def image_specs(meta: dict) -> list[ArraySpec]:
    c = int(meta["chunk"])
    specs = [ArraySpec(image_key(k), (), VariableLengthUTF8(), c, fill="") for k in IMAGE_TEXT]
    specs += [ArraySpec(meta_key(col), (), VariableLengthUTF8(), c, fill="")
              for col in meta["meta_columns"]]
    specs += [ArraySpec(image_key("size"), (2,), np.int32, c),
              ArraySpec(image_key("stat"), (2,), np.int64, c),
              ArraySpec(image_key("status"), (), np.uint8, c),
              ArraySpec(image_key("thumb"), (), VariableLengthBytes(), THUMB_CHUNK,
                        compressed=False, fill=b"")]
    return specs


def layer_specs(meta: dict, layer: str) -> list[ArraySpec]:
    info = meta["layer_info"][layer]
    h, w = info["grid"]
    ch = info["channels"]
    c = int(meta["chunk"])
    specs = [ArraySpec(layer_key(layer, "features"), (h, w, ch),
                       stored_dtype(meta["dtype"], info["nonnegative"]), c),
             ArraySpec(layer_key(layer, "sqnorm"), (h, w), np.float32, c),
             ArraySpec(layer_key(layer, "pooled"), (ch,), np.float32, c)]
    if meta["dtype"] == "int8":
        specs += [ArraySpec(layer_key(layer, "scale"), (h, w), np.float32, c),
                  ArraySpec(layer_key(layer, "qerr2"), (h, w), np.float32, c)]
        if meta["refine"] != "none":
            rdt = np.float16 if meta["refine"] == "f16" else np.float32
            specs += [ArraySpec(layer_key(layer, "refine"), (h, w, ch), rdt,
                                min(c, REFINE_CHUNK), compressed=False),
                      ArraySpec(layer_key(layer, "digest"), (DIGEST_BYTES,), np.uint8, c)]
    return specs


def encode_features(x: np.ndarray, meta: dict, layer: str, cells: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """NHWC float32 features of one layer → every per-layer array of the layout (by name).
    ``cells``: each row's number of valid cells when padding cells (zeros) are part of the grid
    (the ``full`` index mode), so ``pooled`` is the mean over the image's own cells."""
    info = meta["layer_info"][layer]
    q, scale, sqn, qerr2 = quantize(x, meta["dtype"], info["nonnegative"])
    out = {"features": q, "sqnorm": sqn, "pooled": pooled(x, cells)}
    if meta["dtype"] == "int8":
        out["scale"], out["qerr2"] = scale, qerr2
        if meta["refine"] != "none":
            out["refine"] = x.astype(np.float16 if meta["refine"] == "f16" else np.float32)
            out["digest"] = row_digests(out["refine"])
    return out


def row_digests(rows: np.ndarray) -> np.ndarray:
    """(m, DIGEST_BYTES) uint8: BLAKE2b-128 of each row's bytes (C order), so that the refine
    step reads exact copies (camera traps, video frames, re-uploads) once. Equal digests are
    taken as equal rows; a collision between two different rows has probability ~2^-128."""
    rows = np.ascontiguousarray(rows)
    out = np.empty((len(rows), DIGEST_BYTES), np.uint8)
    for i, r in enumerate(rows):
        out[i] = np.frombuffer(hashlib.blake2b(r.data, digest_size=DIGEST_BYTES).digest(),
                               np.uint8)
    return out


def pooled(x: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """Mean over the cells of NHWC features (float64 sums: identical bytes on every run);
    ``cells`` (per row): divide the sum by that many valid cells (padding cells are zero)."""
    x = np.asarray(x)
    if x.shape[0] == 0:
        return np.zeros((0, x.shape[-1]), np.float32)
    if cells is None:
        return x.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    s = x.astype(np.float64).sum(axis=(1, 2))
    return (s / np.maximum(np.asarray(cells, np.float64), 1.0)[:, None]).astype(np.float32)


def quantize(x: np.ndarray, dtype: str, nonnegative: bool):
    """NHWC float32 features → (stored array, scale | None, sqnorm, qerr2 | None).

    8-bit: per-cell scale, ``uint8`` (max/255) for non-negative layers, symmetric ``int8``
    (max|x|/127) for signed ones. ``sqnorm`` is the squared norm of the dequantised cell and
    ``qerr2`` the squared norm of the quantisation error (used to bound 8-bit scores).
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x, None, _sqsum(x), None
    if dtype == "f16":
        h = x.astype(np.float16)
        return h, None, _sqsum(h.astype(np.float32)), None
    if dtype != "int8":
        raise BadParameter(f"unknown dtype {dtype!r} (use {', '.join(DTYPES)})", param="dtype")
    if nonnegative:
        if (x < 0).any():
            raise CacheError("layer marked non-negative produced negative values; store it as "
                             "f16 or f32", param="dtype")
        top, qmax, lo, npdt = x.max(axis=-1), 255.0, 0.0, np.uint8
    else:
        top, qmax, lo, npdt = np.abs(x).max(axis=-1), 127.0, -127.0, np.int8
    scale = (top / qmax).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(x / safe), lo, qmax).astype(npdt)
    deq = q.astype(np.float32) * scale[..., None]
    err = x - deq
    return q, scale, _sqsum(deq), _sqsum(err)


def _sqsum(a: np.ndarray) -> np.ndarray:
    """Per-cell squared norm, summed in float64 so the float32 result does not depend on memory
    alignment or thread count (a resumed or distributed run writes identical bytes)."""
    return np.einsum("nhwc,nhwc->nhw", a, a, dtype=np.float64).astype(np.float32)


def estimate_bytes(n: int, layer_info: dict[str, dict], dtype: str, refine: str) -> int:
    """Uncompressed upper estimate of a cache's size (compression usually saves some)."""
    per = 16 * 1024  # thumbnail + per-image records
    for info in layer_info.values():
        h, w = info["grid"]
        cells = h * w
        c = info["channels"]
        item = {"int8": 1, "f16": 2, "f32": 4}[dtype]
        per += cells * c * item + cells * 4 + c * 4
        if dtype == "int8":
            per += cells * 8
            if refine != "none":
                per += cells * c * (2 if refine == "f16" else 4)
    return int(n * per)
