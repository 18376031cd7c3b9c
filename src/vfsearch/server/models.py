"""The web API's wire format, declared once: request models (FastAPI validates every body with
them) and response models (published in the OpenAPI document; the tests check real responses
against it). Field names and shapes are the ones the front-end uses.

Request bodies are strict (``"k": "5"`` or ``"whole": ""`` is refused, not coerced), reject
unknown fields and non-finite numbers; every refusal names the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_INT",
    "CachesResponse",
    "ConceptsInfo",
    "DiscoverRequest",
    "ErrorBody",
    "ExplainMethods",
    "ExplainRequest",
    "ExplainResponse",
    "ExportResponse",
    "Health",
    "HeatResponse",
    "ImageList",
    "ImageRecord",
    "Job",
    "MapInfo",
    "Overlap",
    "SearchRequest",
    "SearchResponse",
    "UploadRecord",
    "WindowResponse",
]

MAX_INT = 2**31 - 1  # bound for every integer a client sends (ids, ranks, offsets)
MAX_K = 500  # most matches one search returns (AppState checks the same)
MAX_KNOWN = 2000  # most thumbnail ids a search request may say the page holds
Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
Name = Annotated[str, Field(max_length=200)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- requests --------------------------------------------------------------------------------


class ImageRef(_Request):
    """The query image: a dataset image (``id``, in ``cache`` or the searched one) or an
    ``upload``."""

    id: Int | None = None
    cache: Name | None = None
    upload: Name | None = None


class MaskSpec(_Request):
    """A mask at any size with the image's aspect ratio (±2 %): a PNG (base64 or data URL),
    raw bytes (``u8`` + ``width`` + ``height``), a nested list (0–1 or 0–255) or ``rle``
    ("w.h.runs", brush.js's run-length code)."""

    png: str | None = None
    u8: str | None = None
    width: Annotated[int, Field(ge=1, le=1 << 16)] | None = None
    height: Annotated[int, Field(ge=1, le=1 << 16)] | None = None
    data: list[list[float]] | None = None
    rle: str | None = None


class ResultFilter(_Request):
    """Keep only results whose ``column`` equals ``value`` (compared as text)."""

    column: Name | None = None
    value: str | int | float | None = None


class ConceptSpec(_Request):
    """A stored concept of the searched layer (``GET /api/caches/{name}/concepts``)."""

    id: Int
    method: Literal["dictionary", "saliency"] = "dictionary"


class SearchRequest(_Request):
    """One search. ``mode`` "region" (the default): exactly one of ``box`` (image pixels) or
    ``mask``; "whole" (or ``whole: true``): the paper's rigid whole-image query; "global":
    similar images by the cosine of mean-pooled features (no region). Or a ``concept`` instead
    of ``image`` and its region: the concept's direction as a one-cell query."""

    cache: Name
    layer: Name | None = None
    image: ImageRef | None = None
    concept: ConceptSpec | None = None
    mode: Literal["region", "whole", "global"] | None = None
    box: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None
    mask: MaskSpec | None = None
    whole: bool | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 20
    exclude_self: bool = True
    filter: ResultFilter | None = None
    thumbs: bool = False
    known: Annotated[list[Annotated[int, Field(ge=0, le=MAX_INT)]],
                     Field(max_length=MAX_KNOWN,
                           description="with thumbs: ids whose thumbnails the page already "
                                       "holds (not sent again)")] | None = None


ParamValue = str | int | float | bool | None


class ExplainRequest(_Request):
    """Explain why image ``id`` matches the search; ``params`` as ``GET /api/explain/methods``
    lists them for ``method``."""

    id: Int
    method: Name = "exact"
    params: dict[Annotated[str, Field(max_length=64)], ParamValue] | None = None


class DiscoverRequest(_Request):
    """Parameters of a concept discovery (``n_queries``: the saliency method's queries)."""

    n_concepts: Annotated[int, Field(ge=1, le=128)] = 32
    n_queries: Annotated[int, Field(ge=1, le=2000)] = 200


# -- responses -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error: a machine code, a one-line message, and the field it is about."""

    error: str
    message: str
    param: str | None = None


class Health(_Response):
    ok: bool
    caches: list[str]


class Geometry(_Response):
    """Where the original image lands in the model input (``u = x * sx - left``)."""

    sx: float
    sy: float
    left: float
    top: float
    input: list[int]
    image: list[int]
    size: int
    crop: list[float]


class LayerInfo(_Response):
    name: str
    grid: list[int]
    channels: int
    stride: int | None = None


class ColumnSummary(_Response):
    n_unique: int
    values: list[tuple[str, int]]


class CacheSummary(_Response):
    name: str
    model: str | None
    images: int
    indexed: int
    dtype: str
    refine: str
    transform: dict[str, Any]
    layers: list[LayerInfo]
    default_layer: str
    columns: dict[str, ColumnSummary]


class Limits(_Response):
    upload_bytes: int


class CachesResponse(_Response):
    caches: list[CacheSummary]
    limits: Limits


class ImageBrief(_Response):
    id: int
    path: str
    label: str
    size: list[int]


class ImageRecord(ImageBrief):
    valid: bool
    meta: dict[str, str]
    geometry: Geometry


class ImageList(_Response):
    total: int
    offset: int
    items: list[ImageBrief]


class UploadRecord(_Response):
    upload: str
    name: str
    size: list[int]
    geometry: dict[str, Geometry] = Field(description="the model's view of it, per cache name")


class QueryConcept(_Response):
    """The concept a concept search queried (it has no query image)."""

    id: int
    method: str
    layer: str
    size: int = Field(description="cells assigned to the concept")
    version: str | None = Field(None, description="the stored set's version (sheet URLs)")


class QueryRecord(_Response):
    image: dict[str, Any]
    layer: str
    grid: list[int]
    cell_box: list[int]
    weights: list[list[float]]
    n_cells: int
    box: list[float]
    image_size: list[int]
    geometry: Geometry
    label: str | None = None
    mode: Literal["region", "whole", "global"] = "region"
    notes: list[str] = Field(default_factory=list, description="what the user should know "
                             "(e.g. a region partly outside the model's view)")
    concept: QueryConcept | None = Field(None, description="a concept search: the concept "
                                         "(the query image is virtual: the model input)")


class Carry(_Response):
    """The query carried to the match: query-image pixels → result-image pixels."""

    matrix: list[float] = Field(description="[a, 0, 0, d, e, f] as canvas setTransform takes it")
    clip: list[float]


class Match(_Response):
    id: int
    rank: int = Field(description="1 for the best match (positions in the score order, "
                      "window start/stop, are 0-based)")
    score: float
    path: str
    label: str
    offset: list[int]
    box: list[float]
    image_size: list[int]
    geometry: Geometry
    carry: Carry
    meta: dict[str, str]


class Curve(_Response):
    n: int
    ranks: list[int]
    scores: list[float]


class Timing(_Response):
    query_ms: float
    wait_ms: float
    search_ms: float
    total_ms: float


class SearchResponse(_Response):
    search_id: str
    cache: str
    layer: str
    k: int
    query: QueryRecord
    matches: list[Match]
    total: int
    curve: Curve
    stats: dict[str, Any]
    timing: Timing
    thumbs: dict[str, str] | None = Field(None, description="id → base64 JPEG thumbnail")


class WindowResponse(_Response):
    search_id: str
    start: int
    stop: int
    total: int
    items: list[Match]
    thumbs: dict[str, str] | None = None


class HeatResponse(_Response):
    search_id: str
    cell_box: list[int]
    grid: list[int]
    maps: dict[str, list[list[float]]]


class ExportResponse(_Response):
    search_id: str
    cache: str
    model: str
    layer: str
    query: QueryRecord
    matches: list[Match]


class Overlap(_Response):
    a: str
    b: str
    k: list[int]
    count: int
    shared: list[list[int]]
    jaccard: float


class Job(_Response):
    """A background job (a map, a model-running explanation)."""

    job: str
    kind: str
    status: Literal["running", "done", "error"]
    progress: float
    seconds: float
    error: str | None = Field(None, description="what went wrong (status 'error')")
    code: str | None = Field(None, description="the error's machine code (status 'error')")
    param: str | None = Field(None, description="the field the error is about, if any")
    result: Any = None


class MapInfo(_Response):
    cache: str
    layer: str
    method: str
    status: Literal["missing", "no_atlas", "computing", "ready"]
    job: Job | None = None
    side: int | None = None
    n: int | None = None
    rows: int | None = None
    stale: bool | None = None
    tile: int | None = None
    page_tiles: int | None = None
    pages_x: int | None = None
    pages_y: int | None = None
    pages: int | None = None
    background: list[int] | None = None
    seconds: float | None = None
    knn_preservation: dict[str, Any] | None = None
    version: str | None = None
    grid: list[int] | None = Field(None, description="side × side image ids, -1 = empty")


class Explanation(_Response):
    method: str
    result_id: int
    score: float | None
    offset: list[int]
    space: Literal["grid", "input"]
    saliency: list[list[float | None]]
    query_saliency: list[list[float | None]] | None = None
    insertion_auc: float | None = None
    deletion_auc: float | None = None
    seconds: float | None = None
    params: dict[str, Any]
    result: dict[str, Any]
    query: dict[str, Any]
    concepts: dict[str, Any] | None = Field(
        None, description="the stored concepts of the layer the match shares with its query "
        "(layer, method, shared: [{concept, query_cells, result_cells, size}], cells, "
        "same_cells); null for a global query or when no concepts were computed")


class ExplainDone(_Response):
    status: Literal["done"]
    result: Explanation


ExplainResponse = ExplainDone | Job


class ParamInfo(_Response):
    name: str
    type: Literal["int", "float", "str", "bool"]
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None


class MethodInfo(_Response):
    name: str
    title: str
    runs_model: bool = Field(description="slow: runs as a background job (202 + job)")
    params: list[ParamInfo]


class ExplainMethods(_Response):
    methods: list[MethodInfo]


class ConceptPatch(_Response):
    id: int
    path: str
    label: str
    size: list[int] = Field(description="the image's size (the box is in its pixels)")
    box: list[float]
    score: float
    cells: list[int] = Field(description="row0, col0, h, w on the layer's grid")


class ConceptRecord(_Response):
    id: int
    size: int = Field(description="cells assigned to the concept")
    n_patches: int = Field(description="stored patches (the first `patches` are listed)")
    patches: list[ConceptPatch]
    labels: list[tuple[str, int]] = Field(description="labels of all its stored patches, "
                                          "most first")


class ConceptsInfo(_Response):
    cache: str
    layer: str
    method: str
    status: Literal["missing", "computing", "ready"]
    stored: dict[str, bool] = Field(description="which methods have concepts of this layer")
    job: Job | None = None
    n_concepts: int | None = None
    stale: bool | None = None
    algorithm: str | None = None
    params: dict[str, Any] | None = None
    grid: list[int] | None = None
    n_images: int | None = None
    n_cells: int | None = None
    seconds: float | None = None
    version: str | None = None
    concepts: list[ConceptRecord] | None = None
