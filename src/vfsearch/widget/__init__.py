"""Jupyter widgets for vfsearch (anywidget): brush a region, search a cache, show results.

* :class:`HighlightWidget` — brush / erase / size / undo / clear over one image; ``.mask`` is a
  float32 array (0–1) at the image's resolution.
* :class:`MultiHighlightWidget` — several of those in a gallery; ``.masks``.
* :class:`SearchWidget` — pick a query image, brush, see the results (match boxes drawn) and the
  sorted-score curve; ``.results`` is the latest :class:`~vfsearch.SearchResult`. Its explain
  view shows why any result matches (exact shares at once; the model-running methods — occlusion,
  RISE, LIME, learned mask — in a background thread with a progress bar and a Cancel button);
  ``.explanation`` is the latest :class:`~vfsearch.explain.Explanation`.
* :func:`show` — a static HTML gallery of a :class:`~vfsearch.SearchResult` (renders anywhere).
* :func:`show_concept` — a static HTML gallery of a stored concept's best patches
  (:mod:`vfsearch.concepts`); :meth:`SearchWidget.search_concept` searches a concept and shows
  its results like any search.

The brush is the web app's own ES module (``vfsearch/static/brush.js``): its text is sent to the
browser in a traitlet and imported from a Blob URL, so the app and the widget share one module.
The mask comes back from the browser as binary (raw uint8 at the brush's mask resolution, or a
PNG) — never as JSON lists — and is resized here to the image's resolution.
"""

from __future__ import annotations

import base64
import html
import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .. import masks
from ..errors import Cancelled, VfsError

try:
    import anywidget
    import ipywidgets
    import traitlets
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError("vfsearch.widget needs anywidget and ipywidgets: "
                      "pip install anywidget ipywidgets") from e

__all__ = [
    "HighlightWidget",
    "MultiHighlightWidget",
    "SearchWidget",
    "concept_html",
    "decode_mask",
    "explanation_html",
    "results_html",
    "show",
    "show_concept",
]

_HERE = Path(__file__).resolve().parent
BRUSH_JS_PATH = _HERE.parent / "static" / "brush.js"
DISPLAY_SIDE = 512  # longest side of the image sent to the browser
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# binary buffers arrive from the frontend as memoryview: make them bytes
_BYTES = dict(ipywidgets.widgets.trait_types.bytes_serialization)


def _brush_source() -> str:
    return BRUSH_JS_PATH.read_text(encoding="utf-8")


# -- mask / image helpers --------------------------------------------------------------------------


def decode_mask(data: bytes, width: int = 0, height: int = 0,
                size: tuple[int, int] | None = None) -> np.ndarray | None:
    """Mask bytes from the browser → float32 array in [0, 1] (:func:`vfsearch.masks.decode_bytes`:
    raw uint8 of ``width × height``, or an image — alpha when it has one, else gray). With
    ``size = (W, H)`` the mask is resampled to that resolution. ``None`` for empty data."""
    data = bytes(data or b"")
    if not data:
        return None
    m = masks.decode_bytes(data, width, height, empty_ok=True)
    return m if size is None else masks.resize_mask(m, tuple(int(v) for v in size))


def _mask_size(w: int, h: int, max_side: int = 512) -> tuple[int, int]:
    """The brush's mask resolution for a w×h image (same rule as brush.js setImageSize)."""
    s = min(1.0, max_side / max(w, h))
    scale = max(s, min(1.0, 48 / min(w, h)))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            im.load()
            return im.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            return im.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    return Image.fromarray(arr[..., :3]).convert("RGB")


def _display_bytes(img: Image.Image, side: int = DISPLAY_SIDE) -> bytes:
    im = img.copy()
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


# -- widgets ---------------------------------------------------------------------------------------


class HighlightWidget(anywidget.AnyWidget):
    """Brush a soft mask over one image. ``.mask`` → float32 (H, W) in [0, 1] at image
    resolution."""

    _esm = _HERE / "widget.js"
    _brush_js = traitlets.Unicode("").tag(sync=True)
    image_data = traitlets.Bytes(b"").tag(sync=True, **_BYTES)  # JPEG shown under the brush
    image_width = traitlets.Int(0).tag(sync=True)  # original resolution (the mask's target)
    image_height = traitlets.Int(0).tag(sync=True)
    display_width = traitlets.Int(384).tag(sync=True)  # CSS px
    # the mask, synced from the browser as binary: raw uint8 (mask_width × mask_height) or a PNG
    mask_data = traitlets.Bytes(b"").tag(sync=True, **_BYTES)
    mask_width = traitlets.Int(0).tag(sync=True)
    mask_height = traitlets.Int(0).tag(sync=True)
    tool = traitlets.Unicode("paint").tag(sync=True)
    size = traitlets.Int(36).tag(sync=True)
    hardness = traitlets.Float(0.35).tag(sync=True)
    # bumped by Python to push mask_data into the browser (set_mask / clear)
    _mask_push = traitlets.Int(0).tag(sync=True)
    label = traitlets.Unicode("").tag(sync=True)

    def __init__(self, image=None, *, display_width: int = 384, label: str = "", **kw):
        super().__init__(_brush_js=_brush_source(), display_width=display_width, label=label, **kw)
        if image is not None:
            self.set_image(image)

    def set_image(self, image, *, size: tuple[int, int] | None = None) -> None:
        """Show ``image`` (PIL, path, bytes or array). With JPEG/PNG ``bytes`` and ``size`` =
        (W, H), the bytes are shown as-is (e.g. a thumbnail) and the mask targets ``size``."""
        if isinstance(image, (bytes, bytearray)) and size is not None:
            data, (w, h) = bytes(image), size
        else:
            img = _to_pil(image)
            data, (w, h) = _display_bytes(img), img.size
        with self.hold_sync():
            self.mask_data = b""
            self.mask_width = self.mask_height = 0
            self.image_width, self.image_height = int(w), int(h)
            self.image_data = data

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_width, self.image_height

    @property
    def mask(self) -> np.ndarray:
        """The brushed mask at the image's resolution (zeros when nothing is brushed)."""
        w, h = self.image_size
        m = decode_mask(self.mask_data, self.mask_width, self.mask_height, size=(w, h))
        return np.zeros((h, w), np.float32) if m is None else m

    def is_empty(self) -> bool:
        data = bytes(self.mask_data or b"")
        if not data:
            return True
        if data[:8] == _PNG_MAGIC:
            return not self.mask.any()
        return not any(data)

    def set_mask(self, mask) -> None:
        """Set the mask from Python (array at any resolution, values 0–1 or 0–255)."""
        arr = np.asarray(mask, dtype=np.float32)
        if arr.max(initial=0) > 1.0:
            arr = arr / 255.0
        mw, mh = _mask_size(*self.image_size)
        img = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8), "L")
        small = np.asarray(img.resize((mw, mh), Image.Resampling.BILINEAR), dtype=np.uint8)
        with self.hold_sync():
            self.mask_width, self.mask_height = mw, mh
            self.mask_data = small.tobytes()
            self._mask_push += 1

    def set_box(self, box) -> None:
        """Fill the box (x0, y0, x1, y1) in image pixels (replaces the mask)."""
        w, h = self.image_size
        m = np.zeros((h, w), np.float32)
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1.0
        self.set_mask(m)

    def clear(self) -> None:
        self.set_mask(np.zeros((self.image_height, self.image_width), np.float32))


class MultiHighlightWidget(ipywidgets.GridBox):
    """Several :class:`HighlightWidget` in a gallery; ``.masks`` lists their masks."""

    def __init__(self, images, *, display_width: int = 256, columns: int = 3, labels=None, **kw):
        images = list(images)
        labels = list(labels) if labels is not None else [""] * len(images)
        self.widgets = [HighlightWidget(im, display_width=display_width, label=str(lab))
                        for im, lab in zip(images, labels, strict=True)]
        layout = ipywidgets.Layout(grid_template_columns=f"repeat({columns}, max-content)",
                                   grid_gap="8px")
        super().__init__(children=self.widgets, layout=layout, **kw)

    def __len__(self) -> int:
        return len(self.widgets)

    def __getitem__(self, i) -> HighlightWidget:
        return self.widgets[i]

    @property
    def masks(self) -> list[np.ndarray]:
        return [w.mask for w in self.widgets]


class SearchWidget(ipywidgets.VBox):
    """Pick a query image, brush a region, see the top-k results and the sorted-score curve.

    A search (``vfsearch.search(cache, q, mask=..., k=k, return_scores=True)``) runs whenever the
    brush's mask traitlet changes (the browser syncs it at the end of each stroke/edit);
    ``.results`` holds the latest :class:`~vfsearch.SearchResult` (``None`` before the first).
    """

    def __init__(self, cache, layer: str | None = None, k: int = 12, query: int | None = None,
                 display_width: int = 384, **kw):
        from .. import open_cache

        if isinstance(cache, (str, os.PathLike)):
            cache = open_cache(cache)
        self.cache = cache
        self.layer = layer
        self.k = int(k)
        self.results = None
        self.error: str | None = None
        self._concept: tuple[int, str] | None = None  # (id, method) while a concept is the query
        valid = np.flatnonzero(cache.valid)
        if len(valid) == 0:
            raise ValueError("the cache has no indexed images")
        first = int(valid[0]) if query is None else int(query)
        self.picker = ipywidgets.BoundedIntText(value=first, min=0, max=len(cache) - 1,
                                                description="query id",
                                                layout=ipywidgets.Layout(width="180px"))
        self.k_box = ipywidgets.BoundedIntText(value=self.k, min=1, max=max(1, len(cache)),
                                               description="k",
                                               layout=ipywidgets.Layout(width="130px"))
        self.status = ipywidgets.HTML("<i>Brush a region of the query image to search.</i>")
        self.brush = HighlightWidget(display_width=display_width)
        self.gallery = ipywidgets.HTML("")
        # explain view: which result, which method, a progress bar for the model-running ones
        from ..explain import METHODS

        self.explanation = None
        self.explain_pick = ipywidgets.Dropdown(options=[], description="explain",
                                                layout=ipywidgets.Layout(width="300px"))
        self.explain_method = ipywidgets.Dropdown(options=list(METHODS), value="exact",
                                                  description="method",
                                                  layout=ipywidgets.Layout(width="200px"))
        self.explain_button = ipywidgets.Button(description="Explain", disabled=True,
                                                tooltip="why does this result match the region?")
        self.explain_progress = ipywidgets.FloatProgress(
            value=0.0, min=0.0, max=1.0,
            layout=ipywidgets.Layout(width="160px", visibility="hidden"))
        self.explain_cancel = ipywidgets.Button(
            description="Cancel", tooltip="stop the running explanation",
            layout=ipywidgets.Layout(width="80px", visibility="hidden"))
        self.explain_cancel.on_click(lambda _b: self.cancel_explain())
        self._explain_stop = threading.Event()
        self.explain_view = ipywidgets.HTML("")
        self._explain_pool = ThreadPoolExecutor(1, thread_name_prefix="vfsearch-explain")
        self._explain_lock = threading.Lock()
        self._explain_seq = 0
        self.explain_button.on_click(lambda _b: self.explain())
        self._load_query(first)
        self.picker.observe(self._on_pick, names="value")
        self.k_box.observe(self._on_k, names="value")
        self.brush.observe(self._on_mask, names="mask_data")
        top = ipywidgets.HBox([self.picker, self.k_box, self.status])
        bar = ipywidgets.HBox([self.explain_pick, self.explain_method, self.explain_button,
                               self.explain_progress, self.explain_cancel])
        super().__init__(children=[top, self.brush, self.gallery, bar, self.explain_view], **kw)

    @property
    def query_id(self) -> int:
        return int(self.picker.value)

    def _load_query(self, i: int) -> None:
        self.brush.set_image(self.cache.thumbnail(i), size=tuple(self.cache.image_size(i)))
        self.brush.label = f"#{i} {self.cache.labels[i]}"

    def _on_pick(self, change) -> None:
        self._concept = None
        self._set_results(None)
        self.gallery.value = ""
        self.status.value = "<i>Brush a region of the query image to search.</i>"
        self._load_query(int(change["new"]))

    def _on_k(self, change) -> None:
        self.k = int(change["new"])
        if self._concept is not None:
            self.search_concept(*self._concept)
        else:
            self.run()

    def _on_mask(self, change) -> None:
        self._concept = None  # brushing makes the image the query again
        self.run()

    def search_concept(self, concept: int, method: str = "dictionary"):
        """Search stored concept ``concept`` of the widget's layer (its direction as a one-cell
        query, :func:`vfsearch.concepts.concept_query`) and show the results like any search's:
        the concept's first patches, then the matches with their boxes and the curve (explain
        works on them too). Brushing the query image makes it the query again. Returns the
        :class:`~vfsearch.SearchResult` (``None`` and the error in the status line when there
        are no such concepts)."""
        from .. import search
        from ..concepts import concept_query, load_concepts

        try:
            cs = load_concepts(self.cache, self.layer, method)
            k = cs.check_id(concept)
            res = search(self.cache, concept_query(self.cache, k, concepts=cs), k=self.k,
                         return_scores=True)
        except (VfsError, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"
            self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
            return None
        self.error = None
        self._concept = (k, cs.method)
        self._set_results(res)
        self.status.value = (f"{len(res)} results · {html.escape(cs.method)} concept {k} · layer "
                             f"{html.escape(cs.layer)}")
        self.gallery.value = (concept_html(self.cache, k, concepts=cs, n=8, thumb_px=72)
                              + results_html(res, curve=True, thumb_px=150))
        return res

    def run(self):
        """Search with the current mask (no-op when the mask is empty); returns the result."""
        from .. import VfsError, search

        if self.brush.is_empty():
            self._set_results(None)
            self.gallery.value = ""
            self.status.value = "<i>The mask is empty: brush a region.</i>"
            return None
        try:
            res = search(self.cache, self.query_id, mask=self.brush.mask, layer=self.layer,
                         k=self.k, return_scores=True)
        except (VfsError, ValueError) as e:  # shown in the widget (a callback's traceback is lost)
            self.error = f"{type(e).__name__}: {e}"
            self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
            return None
        self.error = None
        self._set_results(res)
        self.status.value = f"{len(res)} results · layer {html.escape(res.query.layer)}"
        self.gallery.value = results_html(res, curve=True, thumb_px=150)
        return res

    def _set_results(self, res) -> None:
        """New results (or none): the explain picker lists them; an old explanation goes."""
        self.results = res
        with self._explain_lock:
            self._explain_seq += 1  # a running explanation of the old results is not shown
            self._explain_stop.set()  # … and stops at its next batch
        self.explain_cancel.layout.visibility = "hidden"
        self.explanation = None
        self.explain_view.value = ""
        self.explain_progress.layout.visibility = "hidden"
        opts = [] if res is None else [(f"{m.rank}. #{m.id} {m.label} ({m.score:.3f})", m.rank)
                                       for m in res.matches]
        self.explain_pick.options = opts
        self.explain_button.disabled = not opts

    # -- explain -------------------------------------------------------------------------------

    def explain(self, rank: int | None = None, method: str | None = None, *, wait: bool = False,
                **params) -> Future:
        """Explain why result ``rank`` (1 = the best; default: the one picked) matches the query
        region with ``method`` (default: the one picked; :data:`vfsearch.explain.METHODS`);
        ``params`` go to the explainer (e.g. ``n_masks=``, ``mode="both"``). Runs in a background
        thread and shows the heat maps when done; returns a Future of the
        :class:`~vfsearch.explain.Explanation` (``wait=True`` blocks until it is done)."""
        from ..explain import check_params, explain

        if self.results is None or not len(self.results):
            raise ValueError("no results to explain: brush a region first")
        rank = int(self.explain_pick.value if rank is None else rank)
        if not 1 <= rank <= len(self.results):
            raise ValueError(f"rank must be in 1..{len(self.results)} (1 = the best match)")
        method = method or self.explain_method.value
        try:
            params = check_params(method, params)  # BadParameter (with its param) before any work
        except VfsError as e:
            self.explain_view.value = (f"<span style='color:#b00'>{html.escape(type(e).__name__)}: "
                                       f"{html.escape(str(e))}</span>")
            raise
        res, match = self.results, self.results[rank - 1]
        with self._explain_lock:
            self._explain_seq += 1
            seq = self._explain_seq
            self._explain_stop.set()  # a previous one stops at its next batch
            stop = self._explain_stop = threading.Event()
        self.explain_progress.value = 0.0
        self.explain_progress.layout.visibility = "visible"
        self.explain_cancel.layout.visibility = "visible"
        self.explain_button.disabled = True
        self.explain_view.value = (f"<i>explaining #{match.id} with {html.escape(method)}…</i>")

        def progress(f: float) -> None:
            if seq == self._explain_seq:
                self.explain_progress.value = float(min(1.0, max(0.0, f)))

        def show(body: str) -> bool:
            with self._explain_lock:
                if seq != self._explain_seq:  # superseded by a newer search or explanation
                    return False
                self.explain_button.disabled = not self.explain_pick.options
                self.explain_progress.layout.visibility = "hidden"
                self.explain_cancel.layout.visibility = "hidden"
                self.explain_view.value = body
                return True

        def work():
            # runs in the background thread; the Future is done once the view shows the result
            try:
                ex = explain(self.cache, res.query, match.id, method, progress=progress,
                             cancel=stop, **params)
            except Cancelled:
                show(f"<i>explanation of #{match.id} with {html.escape(method)} cancelled</i>")
                raise
            except Exception as e:
                show(f"<span style='color:#b00'>{html.escape(type(e).__name__)}: "
                     f"{html.escape(str(e))}</span>")
                raise
            if show(explanation_html(self.cache, res, match, ex)):
                self.explanation = ex
            return ex

        fut = self._explain_pool.submit(work)
        if wait:
            fut.result()
        return fut

    def cancel_explain(self) -> None:
        """Stop the running explanation (it ends at its next batch of model passes; its Future
        raises :class:`~vfsearch.errors.Cancelled`)."""
        self._explain_stop.set()


# -- static gallery --------------------------------------------------------------------------------


def _img_uri(jpeg: bytes) -> str:
    kind = "png" if bytes(jpeg[:8]) == _PNG_MAGIC else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(bytes(jpeg)).decode('ascii')}"


def _card(cache, i: int, box, title: str, sub: str, px: int, color: str,
          data_id: bool = True) -> str:
    W, H = cache.image_size(i)
    scale = px / max(W, H)
    w, h = max(1, round(W * scale)), max(1, round(H * scale))
    overlay = ""
    if box is not None:
        x0, y0, x1, y1 = box
        overlay = (f"<div style='position:absolute;left:{100 * x0 / W:.2f}%;"
                   f"top:{100 * y0 / H:.2f}%;"
                   f"width:{100 * (x1 - x0) / W:.2f}%;height:{100 * (y1 - y0) / H:.2f}%;"
                   f"border:2px solid {color};box-sizing:border-box;"
                   f"box-shadow:0 0 0 1px rgba(0,0,0,.5)'></div>")
    attr = f" data-id='{int(i)}'" if data_id else ""
    return (f"<div class='vfs-card'{attr} style='display:inline-block;margin:4px;"
            "vertical-align:top;"
            f"font:12px sans-serif;width:{w}px'>"
            f"<div style='position:relative;width:{w}px;height:{h}px'>"
            f"<img src='{_img_uri(cache.thumbnail(i))}' "
            f"style='width:{w}px;height:{h}px;display:block'>"
            f"{overlay}</div><div><b>{html.escape(title)}</b></div>"
            f"<div style='color:#555;overflow:hidden;text-overflow:ellipsis;white-space:nowrap'>"
            f"{html.escape(sub)}</div></div>")


def _curve_svg(scores: np.ndarray, k: int, width: int = 320, height: int = 90) -> str:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return ""
    lo, hi = float(s.min()), float(s.max())
    span = hi - lo or 1.0
    n = len(s)
    xs = np.linspace(4, width - 4, n) if n > 1 else np.array([width / 2])
    ys = height - 14 - (s - lo) / span * (height - 24)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    cut = ""
    if 0 < k < n:
        cx = (xs[k - 1] + xs[k]) / 2
        cut = (f"<line x1='{cx:.1f}' y1='4' x2='{cx:.1f}' y2='{height - 14}' stroke='#e63' "
               f"stroke-dasharray='3,2'/><text x='{cx + 3:.1f}' y='12' fill='#e63'>top {k}</text>")
    return (f"<svg class='vfs-curve' width='{width}' height='{height}' "
            f"style='font:10px sans-serif;background:#fafafa;border:1px solid #ddd'>"
            f"<polyline points='{pts}' fill='none' stroke='#36c' stroke-width='1.5'/>{cut}"
            f"<text x='4' y='{height - 3}' fill='#555'>sorted scores of {n} images "
            f"({hi:.3f} … {lo:.3f})</text></svg>")


def results_html(results, *, thumb_px: int = 160, curve: bool = True,
                 show_query: bool = True) -> str:
    """HTML for a :class:`~vfsearch.SearchResult`: the query, each match with its box, score and
    label, and (when the result has all scores) the sorted-score curve."""
    cache = results.cache
    q = results.query
    parts = ["<div class='vfs-results'>"]
    if show_query and q.source_id is not None:
        parts.append(_card(cache, int(q.source_id), q.box, f"query #{int(q.source_id)}",
                           f"{cache.labels[int(q.source_id)]} · {q.layer}", thumb_px, "#36c",
                           data_id=False))
    for m in results.matches:
        parts.append(_card(cache, m.id, m.box, f"{m.rank}. #{m.id}  {m.score:.3f}", str(m.label),
                           thumb_px, "#ff5a1f"))
    if not results.matches:
        parts.append("<div><i>no results</i></div>")
    if curve and results.scores is not None:
        svg = _curve_svg(results.sorted_scores(), len(results))
        parts.append(f"<div style='margin:4px'>{svg}</div>")
    parts.append("</div>")
    return "".join(parts)


def _png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _img_uri(buf.getvalue())


def _heat_card(img: Image.Image, title: str, px: int) -> str:
    scale = px / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    return (f"<div class='vfs-heat' style='display:inline-block;margin:4px;vertical-align:top;"
            f"font:12px sans-serif'><img src='{_png_uri(img)}' style='width:{w}px;height:{h}px;"
            f"display:block'><div>{html.escape(title)}</div></div>")


def explanation_html(cache, results, match, ex, *, px: int = 220) -> str:
    """HTML for an :class:`~vfsearch.explain.Explanation` of ``match``: the saliency over the
    result (and over the query, where the method gives one: red raises the score, blue lowers it),
    the numbers, and for "exact" the top channels with their most-activating dataset patches."""
    from ..explain import render_on_thumbnail

    q = results.query
    parts = ["<div class='vfs-explain'>"
             "<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>"]
    if ex.query_saliency is not None and q.source_id is not None:
        heat = render_on_thumbnail(cache, q.source_id, ex.query_saliency, q.geometry)
        parts.append(_heat_card(heat, f"query #{q.source_id}", px))
    elif q.source_id is not None:
        parts.append(_card(cache, int(q.source_id), q.box, f"query #{int(q.source_id)}", q.layer,
                           int(px * 0.7), "#36c", data_id=False))
    parts.append(_heat_card(render_on_thumbnail(cache, match.id, ex.saliency),
                            f"result #{match.id} · {ex.method}", px))
    facts = [f"score {ex.score:.4f} at offset {tuple(ex.offset)}", f"{ex.seconds:.2f} s"]
    if ex.insertion_auc is not None:
        facts.append(f"insertion AUC {ex.insertion_auc:.3f} · deletion AUC {ex.deletion_auc:.3f}")
    if ex.method == "exact":
        total = sum(c["share"] for c in ex.extra["cell_shares"])
        facts.append(f"cell shares sum to {total:.4f}")
    parts.append("<div style='font:12px sans-serif;margin:4px 8px'>"
                 + "<br>".join(html.escape(f) for f in facts) + "</div></div>")
    for ch in ex.extra.get("top_channels", [])[:4]:
        cards = "".join(_card(cache, p["id"], p["box"], f"#{p['id']}", p["label"], 64, "#2a2")
                        for p in ch["patches"][:6])
        parts.append(f"<div class='vfs-channel' style='font:12px sans-serif'>"
                     f"channel {ch['channel']}: "
                     f"share {ch['share']:+.4f}<br>{cards}</div>")
    parts.append("</div>")
    return "".join(parts)


def show(results, *, thumb_px: int = 160, curve: bool = True):
    """A static HTML gallery of ``results`` (an ``IPython.display.HTML``): thumbnails embedded as
    base64 JPEG, match boxes as positioned divs, score and label; renders in any notebook viewer."""
    from IPython.display import HTML

    return HTML(results_html(results, thumb_px=thumb_px, curve=curve))


# -- concepts -----------------------------------------------------------------------------------


def concept_html(cache, concept: int, *, layer: str | None = None, method: str = "dictionary",
                 n: int = 16, thumb_px: int = 110, sheet: bool = False, concepts=None) -> str:
    """HTML for stored concept ``concept`` of ``layer`` / ``method``: its size, the labels of its
    patches and its first ``n`` patches, best first — each its image's thumbnail with the patch's
    box drawn, its score and label (with ``sheet``, the stored contact sheet first). ``concepts``:
    an already loaded :class:`~vfsearch.concepts.ConceptSet`."""
    from ..concepts import load_concepts, sheet_png

    cs = concepts if concepts is not None else load_concepts(cache, layer, method)
    k = cs.check_id(concept)
    patches = cs.patches(k, cache)
    labels: dict[str, int] = {}
    for p in patches:
        labels[p["label"]] = labels.get(p["label"], 0) + 1
    top = " · ".join(f"{lab} {c}" for lab, c in sorted(labels.items(), key=lambda t: -t[1])[:4])
    stale = " · <i>stale (the cache changed since)</i>" if cs.attrs.get("stale") else ""
    parts = [f"<div class='vfs-concept' data-concept='{k}' style='font:12px sans-serif'>"
             f"<div style='margin:4px'><b>{html.escape(cs.method)} concept {k}</b> · "
             f"{html.escape(cs.layer)} · {int(cs.sizes[k]):,} cells · {len(patches)} patches"
             f"{' (' + html.escape(top) + ')' if top else ''}{stale}</div>"]
    if sheet:
        try:
            parts.append(f"<img class='vfs-sheet' src='{_img_uri(sheet_png(cs, k))}' "
                         "style='display:block;margin:4px;max-width:100%'>")
        except VfsError:
            pass  # stored without sheets: the patches below say the same
    for j, p in enumerate(patches[:max(0, int(n))]):
        parts.append(_card(cache, p["id"], p["box"], f"{j + 1}. #{p['id']}  {p['score']:.3f}",
                           p["label"], thumb_px, "#ffdc00"))
    parts.append("</div>")
    return "".join(parts)


def show_concept(cache, concept: int, *, layer: str | None = None, method: str = "dictionary",
                 n: int = 16, thumb_px: int = 110, sheet: bool = False):
    """A static HTML gallery of a stored concept's best patches (an ``IPython.display.HTML``, as
    :func:`show`): ``cache`` (a cache or its path), the concept's id, its ``layer`` (default: the
    cache's first) and ``method``; see :func:`concept_html`."""
    from IPython.display import HTML

    if isinstance(cache, (str, os.PathLike)):
        from .. import open_cache

        cache = open_cache(cache)
    return HTML(concept_html(cache, concept, layer=layer, method=method, n=n, thumb_px=thumb_px,
                             sheet=sheet))
