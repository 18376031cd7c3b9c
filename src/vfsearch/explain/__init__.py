"""Why are two regions similar?

* ``exact`` (:class:`ExactExplainer`) — the region cosine is a sum over cells and over channels:
  each query cell (and its matched cell) and each channel gets its signed share of the score;
  the shares sum to the score. Plus the top-contributing channels with their top-activating
  dataset patches.
* ``feature`` (:class:`FeatureOcclusionExplainer`) — occlude one cell of the result's cached
  feature map at a time and re-score (no forward pass; milliseconds).
* ``occlusion`` (:class:`OcclusionExplainer`) — sliding-window occlusion of the result image
  (and, in ``"both"`` mode, of the query image), scored through the model.
* ``rise`` (:class:`RISEExplainer`) — randomised input sampling: random low-resolution masks,
  saliency = score-weighted average of the masks.

Every explainer has one signature, ``explain(query, result_id) -> Explanation``, and declares
its parameters (:data:`METHODS`, :func:`method_info`, :func:`check_params`); model hooks are
removed in ``finally``. Insertion / deletion AUCs measure any saliency map: deletion blurs the
most salient cells first and tracks the score, insertion restores them first into a blurred
image.
"""

from .auc import insertion_deletion
from .base import (
    METHODS,
    Explainer,
    Explanation,
    Param,
    check_params,
    explain,
    method_info,
    needs_query_image,
    register,
)
from .blackbox import OcclusionExplainer, RISEExplainer
from .exact import ExactExplainer, FeatureOcclusionExplainer, cell_shares, top_patches
from .render import render_on_thumbnail, render_overlay

__all__ = [
    "METHODS",
    "ExactExplainer",
    "Explainer",
    "Explanation",
    "FeatureOcclusionExplainer",
    "OcclusionExplainer",
    "Param",
    "RISEExplainer",
    "cell_shares",
    "check_params",
    "explain",
    "insertion_deletion",
    "method_info",
    "needs_query_image",
    "register",
    "render_on_thumbnail",
    "render_overlay",
    "top_patches",
]
