"""What every explainer shares: :class:`Explanation`, the :class:`Explainer` base with its
declared parameters (:class:`Param`), the registry :data:`METHODS`, parameter checking and the
memoised :func:`explain` entry point. The surfaces (CLI, web API, widget) read the declarations
here instead of repeating them."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache import FeatureCache
from ..engine.query import Query
from ..errors import BadParameter, BadQuery, CacheMismatch, Cancelled

__all__ = ["METHODS", "Control", "Explainer", "Explanation", "Param", "check_params", "explain",
           "method_info", "needs_query_image", "register"]

_TRUE = {"true": True, "1": True, "yes": True, "on": True,
         "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Param:
    """One declared parameter of an explain method."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None

    def check(self, value) -> Any:
        if self.type is bool:
            if isinstance(value, str) and value.strip().lower() in _TRUE:
                return _TRUE[value.strip().lower()]
            if not isinstance(value, bool):
                raise BadParameter(f"{self.name} must be true or false", param=self.name)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise BadParameter(f"{self.name} must be a {self.type.__name__}", param=self.name)
        if isinstance(value, str) and self.type is int:  # "12", also "1e3" from a command line
            try:
                value = float(value.strip())
            except ValueError:
                raise BadParameter(f"{self.name} must be a whole number", param=self.name) from None
            if not np.isfinite(value):
                raise BadParameter(f"{self.name} must be a whole number", param=self.name)
        try:
            v = self.type(value)
        except (TypeError, ValueError):
            raise BadParameter(f"{self.name} must be a {self.type.__name__}",
                               param=self.name) from None
        if self.type is int and isinstance(value, float) and value != int(value):
            raise BadParameter(f"{self.name} must be a whole number", param=self.name)
        if self.type is float and not np.isfinite(v):
            raise BadParameter(f"{self.name} must be finite", param=self.name)
        if self.choices is not None and v not in self.choices:
            raise BadParameter(f"{self.name} must be one of {', '.join(map(str, self.choices))}",
                               param=self.name)
        if self.minimum is not None and v < self.minimum:
            raise BadParameter(f"{self.name} must be at least {self.minimum:g}", param=self.name)
        if self.maximum is not None and v > self.maximum:
            raise BadParameter(f"{self.name} must be at most {self.maximum:g}", param=self.name)
        return v

    def to_dict(self) -> dict:
        d = {"name": self.name, "type": self.type.__name__, "default": self.default,
             "help": self.help}
        for k in ("minimum", "maximum"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


@dataclass
class Explanation:
    method: str
    result_id: int
    score: float  # region score of the query against the (unperturbed) result
    offset: tuple[int, int]
    # result image saliency: (H, W) grid for exact/feature, (S, S) input pixels otherwise
    saliency: np.ndarray
    query_saliency: np.ndarray | None = None
    space: str = "grid"  # "grid" (feature cells) or "input" (model-input pixels)
    insertion_auc: float | None = None
    deletion_auc: float | None = None
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "method": self.method, "result_id": self.result_id, "score": self.score,
            "offset": list(self.offset), "space": self.space, "seconds": round(self.seconds, 4),
            "insertion_auc": self.insertion_auc, "deletion_auc": self.deletion_auc,
            "params": self.params, "saliency": np.round(self.saliency, 6).tolist(),
        }
        if self.query_saliency is not None:
            d["query_saliency"] = np.round(self.query_saliency, 6).tolist()
        d.update({k: v for k, v in self.extra.items() if k != "cell_shares_matrix"})
        return d


class Explainer:
    """Base class: ``explain(query, result_id)`` with the method's parameters set at init.

    Subclasses declare ``name``, ``title``, ``runs_model`` (it runs the network: slow, a
    background job in the app) and ``params`` (their :class:`Param` s); the surfaces build their
    options from these.
    """

    name = "base"
    title = ""
    runs_model = False
    params_spec: tuple[Param, ...] = ()

    def __init__(self, cache: FeatureCache, model=None, **params):
        self.cache = cache
        self.params = check_params(self.name, params) if self.name in METHODS else params
        self._model = model

    # -- shared helpers ----------------------------------------------------------------------
    def model(self):
        if self._model is None:
            from ..engine.query import model_for_cache

            self._model = model_for_cache(self.cache)
        if self._model.weights_hash != self.cache.weights_hash:
            raise CacheMismatch("the model's weights differ from the cache's")
        return self._model

    def _result_features(self, q: Query, result_id: int) -> np.ndarray:
        return self.cache.features(result_id, q.layer)

    def explain(self, query: Query, result_id: int, progress: Callable[[float], None] | None = None,
                cancel=None) -> Explanation:
        """Explain why ``result_id`` matches ``query``. ``progress(fraction)`` is called as the
        work goes (it reaches 1.0); ``cancel`` (a ``threading.Event`` or a callable returning
        true to stop) is checked between batches of model passes, and a set one raises
        :class:`~vfsearch.errors.Cancelled`."""
        t0 = time.perf_counter()
        if not self.cache.valid[self.cache._check_id(result_id)]:
            raise BadQuery(f"image {result_id} was not indexed", param="result_id")
        if self.runs_model and self.cache.padded:
            raise BadQuery(f"the {self.name!r} explanation runs the model on perturbed square "
                           "inputs and does not support caches indexed in mode 'full' yet; use "
                           "'exact' or 'feature' (they read the cached features)",
                           param="method")
        ctl = Control(progress, cancel)
        ctl.check()
        ex = self._explain(query, int(result_id), ctl)
        ctl.progress(1.0)
        ex.seconds = time.perf_counter() - t0
        ex.params = dict(self.params)
        return ex

    def _explain(self, q: Query, rid: int, progress) -> Explanation:  # pragma: no cover
        raise NotImplementedError


class Control:
    """Progress and cancellation of one explanation: calling it reports progress (0–1) after
    checking the cancel flag; :meth:`check` only checks. The explainers call it between
    batches, so a cancel takes effect within one batch of model passes."""

    def __init__(self, progress: Callable[[float], None] | None = None, cancel=None):
        self.progress = progress or (lambda f: None)
        if cancel is None:
            self._cancelled = lambda: False
        elif hasattr(cancel, "is_set"):
            self._cancelled = cancel.is_set
        elif callable(cancel):
            self._cancelled = cancel
        else:
            raise BadParameter("cancel must be a threading.Event or a callable", param="cancel")

    def check(self) -> None:
        if self._cancelled():
            raise Cancelled("the explanation was cancelled")

    def __call__(self, fraction: float) -> None:
        self.check()
        self.progress(float(min(1.0, max(0.0, fraction))))

    def part(self, lo: float, hi: float) -> Callable[[float], None]:
        """Progress of a sub-task mapped onto [lo, hi] of the whole."""
        return lambda f: self(lo + (hi - lo) * f)


METHODS: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Add an explainer class to :data:`METHODS` (a class decorator)."""
    METHODS[cls.name] = cls
    return cls


def _spec(method: str) -> dict[str, Param]:
    if method not in METHODS:
        raise BadParameter(f"unknown explain method {method!r}; use one of {', '.join(METHODS)}",
                           param="method")
    return {p.name: p for p in METHODS[method].params_spec}


def check_params(method: str, params: dict | None) -> dict:
    """``params`` of ``method`` checked against its declaration, defaults filled in (the
    ``query_image`` of the "both" modes passes through)."""
    spec = _spec(method)
    params = dict(params or {})
    extra = {k: params.pop(k) for k in ("query_image",) if k in params}
    unknown = [k for k in params if k not in spec]
    if unknown:
        raise BadParameter(f"unknown parameter {unknown[0]!r} for {method}; known: "
                           f"{', '.join(spec) or 'none'}", param=unknown[0])
    out = {name: p.check(params[name]) if name in params else p.default
           for name, p in spec.items()}
    return {**out, **extra}


def needs_query_image(method: str, params: dict | None) -> bool:
    """Whether the method perturbs the query image too (then an external query needs it)."""
    p = check_params(method, params)
    return METHODS[method].runs_model and p.get("mode") == "both"


def method_info() -> list[dict]:
    """Every method with its title, whether it runs the model, and its parameters."""
    return [{"name": name, "title": cls.title, "runs_model": cls.runs_model,
             "params": [p.to_dict() for p in cls.params_spec]} for name, cls in METHODS.items()]


_RESULTS: OrderedDict[tuple, Explanation] = OrderedDict()
_RESULTS_LOCK = threading.Lock()
_MAX_RESULTS = 64


def explain(cache: FeatureCache, query: Query, result_id: int, method: str = "exact",
            model=None, progress=None, use_cache: bool = True, cancel=None,
            **params) -> Explanation:
    """Explain why ``result_id`` matches ``query`` with ``method`` (results are memoised per
    query, result, method and parameters). ``progress(fraction)`` reports progress;
    ``cancel`` (a ``threading.Event`` or a callable) stops a running explanation between two
    batches with :class:`~vfsearch.errors.Cancelled` (nothing is memoised then)."""
    checked = check_params(method, params)
    qimg = checked.pop("query_image", None)
    key = (str(cache.path), query.layer, query.source_id, query.mode, query.weights.tobytes(),
           hash(query.features.tobytes()),
           None if query.pooled is None else query.pooled.tobytes(),
           int(result_id), method, tuple(sorted(checked.items())),
           None if qimg is None else id(qimg))
    if use_cache:
        with _RESULTS_LOCK:
            if key in _RESULTS:
                _RESULTS.move_to_end(key)
                return _RESULTS[key]
    kw = dict(checked, **({"query_image": qimg} if qimg is not None else {}))
    ex = METHODS[method](cache, model, **kw).explain(query, result_id, progress, cancel)
    with _RESULTS_LOCK:
        _RESULTS[key] = ex
        while len(_RESULTS) > _MAX_RESULTS:
            _RESULTS.popitem(last=False)
    return ex
