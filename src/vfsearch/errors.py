"""One exception hierarchy for the whole library.

Every user mistake is a :class:`VfsError` subclass. Each class carries how every surface shows
it — ``exit_code`` for the CLI, ``http_status`` for the web API, ``code`` for machines — and an
error may name the parameter it is about in ``param`` (the Python keyword, e.g. ``"layer"``).
Surfaces render that name in their own terms: the CLI as its flag (``--layer``), the API as the
JSON field, Python as the keyword. Messages never name CLI flags.

CLI exit codes (the same kind of mistake gives the same code in every command):

====  ==========================================================================
0     success
1     any other :class:`VfsError` (e.g. nothing to serve)
2     bad input: a parameter, image, mask, query, dataset, model or layer
3     a cache is missing, unreadable, of another version or built differently
4     an output cannot be written (no permission, no disk space)
5     a requested compute backend is not available on this machine
130   interrupted (Ctrl-C); run the same command again to resume
====  ==========================================================================

Server errors (HTTP 5xx) are faults of the server itself, never bad input.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "VfsError",
    "BackendUnavailable",
    "BadImage",
    "BadMask",
    "BadParameter",
    "BadQuery",
    "CacheError",
    "CacheMismatch",
    "CacheNotFound",
    "CacheOutdated",
    "Cancelled",
    "DatasetError",
    "DiskSpaceError",
    "EvalError",
    "Forbidden",
    "NotFound",
    "OutputError",
    "PayloadTooLarge",
    "Unauthorized",
    "UnknownLayer",
    "UnknownModel",
]

#: exit code → what it means (documented in the README; one table for every command)
EXIT_CODES = {
    0: "success",
    1: "other error",
    2: "bad input (parameter, image, mask, query, dataset, model, layer)",
    3: "cache missing, unreadable, outdated or built differently",
    4: "output cannot be written",
    5: "compute backend not available on this machine",
    130: "interrupted (run the same command again to resume)",
}


class VfsError(Exception):
    """Base class: a user-facing error with a clear one-line message.

    ``param`` names the parameter the error is about (the Python keyword), when there is one.
    """

    exit_code = 1
    http_status = 400
    code = "error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def to_json(self) -> dict:
        d = {"error": self.code, "message": self.message}
        if self.param:
            d["param"] = self.param
        return d


class BadParameter(VfsError):
    """A parameter has a value outside what it accepts (k < 1, an unknown method, …)."""

    exit_code = 2
    code = "bad_parameter"


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


class EvalError(VfsError):
    """An evaluation protocol cannot run on the given caches or settings."""

    exit_code = 2
    code = "eval_error"


class BackendUnavailable(VfsError):
    """A compute backend was requested that this machine (or this build) does not have."""

    exit_code = 5
    code = "backend_unavailable"


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


class CacheOutdated(CacheError):
    """A cache was written by an older format version and must be upgraded first."""

    http_status = 409
    code = "cache_outdated"


class Cancelled(VfsError):
    """A long computation (e.g. a model-running explanation) was cancelled by its caller."""

    exit_code = 130
    http_status = 409
    code = "cancelled"


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

    exit_code = 2
    http_status = 404
    code = "not_found"
