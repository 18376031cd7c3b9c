"""One exception hierarchy for the whole library.

Every surface maps these once: the CLI prints ``error: <message>`` and exits with ``exit_code``;
the web app answers ``{"error": <code>, "message": <message>}`` with ``http_status``.
"""

from __future__ import annotations

__all__ = [
    "VfsError",
    "BadImage",
    "BadMask",
    "BadQuery",
    "CacheError",
    "CacheMismatch",
    "CacheNotFound",
    "DatasetError",
    "DiskSpaceError",
    "Forbidden",
    "NotFound",
    "OutputError",
    "PayloadTooLarge",
    "Unauthorized",
    "UnknownLayer",
    "UnknownModel",
]


class VfsError(Exception):
    """Base class: a user-facing error with a clear one-line message."""

    exit_code = 1
    http_status = 400
    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message}


class DatasetError(VfsError):
    """The image source is missing, empty or malformed."""

    exit_code = 2
    code = "bad_dataset"


class BadImage(VfsError):
    """An image could not be decoded (corrupt, truncated, not an image, too many pixels)."""

    exit_code = 2
    code = "bad_image"


class BadMask(VfsError):
    """A query mask is empty, has the wrong size, or falls outside what the model sees."""

    exit_code = 2
    code = "bad_mask"


class BadQuery(VfsError):
    """A query is malformed (unknown image id, bad box, query from another model)."""

    exit_code = 2
    code = "bad_query"


class UnknownModel(VfsError):
    exit_code = 2
    code = "unknown_model"


class UnknownLayer(VfsError):
    exit_code = 2
    code = "unknown_layer"


class CacheError(VfsError):
    """A feature cache is unreadable or inconsistent."""

    exit_code = 3
    http_status = 500
    code = "cache_error"


class CacheNotFound(CacheError):
    http_status = 404
    code = "cache_not_found"


class CacheMismatch(CacheError):
    """A cache was opened or extended with another model, layer, transform or dtype."""

    http_status = 409
    code = "cache_mismatch"


class OutputError(VfsError):
    """The output location cannot be written."""

    exit_code = 4
    http_status = 500
    code = "output_error"


class DiskSpaceError(OutputError):
    code = "disk_space"


class Forbidden(VfsError):
    """A file outside the image root was requested (e.g. through a symlink)."""

    http_status = 403
    code = "forbidden"


class PayloadTooLarge(VfsError):
    """An upload exceeds the size or pixel cap."""

    http_status = 413
    code = "too_large"


class Unauthorized(VfsError):
    """The server requires a token and none (or a wrong one) was given."""

    http_status = 401
    code = "unauthorized"


class NotFound(VfsError):
    """A requested item (image id, cache name, job) does not exist."""

    http_status = 404
    code = "not_found"
