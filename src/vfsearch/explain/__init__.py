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
* ``lime`` (:class:`LIMEExplainer`) — LIME: random on/off superpixels (SLIC) of the result, a
  kernel-weighted sparse linear model of the score (Lasso path selection + ridge refit).
* ``mask`` (:class:`MaskExplainer`) — a learned perturbation mask (Fong & Vedaldi): Adam on a
  low-resolution mask with L1 and total-variation penalties; "fixed" or "both" (two masks).

The model-running methods (occlusion, RISE, LIME, mask) share :mod:`.forward`: a private copy
of the network with BatchNorm folded, run up to the searched layer only, batched, under
``torch.inference_mode`` (the mask's forward keeps autograd, for the mask only). A running
explanation reports ``progress`` and stops on ``cancel`` (:class:`~vfsearch.errors.Cancelled`).

A global query ("similar images": the cosine of mean-pooled vectors) is explained by its own
score: ``exact`` splits the pooled cosine over the result's cells, the query's cells and the
channels (:func:`~.exact.pooled_shares`), and the black boxes perturb with the pooled-cosine
scorer.

Every explainer has one signature, ``explain(query, result_id) -> Explanation``, and declares
its parameters (:data:`METHODS`, :func:`method_info`, :func:`check_params`); model hooks are
removed in ``finally``. Insertion / deletion AUCs measure any saliency map: deletion blurs the
most salient cells first and tracks the score, insertion restores them first into a blurred
image.
"""

from . import exact as _exact  # noqa: F401 - registered first: the instant methods lead the list
from .auc import insertion_deletion
from .base import (
    METHODS,
    Control,
    Explainer,
    Explanation,
    Param,
    check_params,
    explain,
    method_info,
    needs_query_image,
    register,
)
from .blackbox import ModelExplainer, OcclusionExplainer, RISEExplainer
from .exact import (
    ExactExplainer,
    FeatureOcclusionExplainer,
    cell_shares,
    pooled_shares,
    top_patches,
)
from .lime import LIMEExplainer
from .mask import MaskExplainer
from .render import render_on_thumbnail, render_overlay

__all__ = [
    "METHODS",
    "Control",
    "ExactExplainer",
    "Explainer",
    "Explanation",
    "FeatureOcclusionExplainer",
    "LIMEExplainer",
    "MaskExplainer",
    "ModelExplainer",
    "OcclusionExplainer",
    "Param",
    "RISEExplainer",
    "cell_shares",
    "check_params",
    "explain",
    "insertion_deletion",
    "method_info",
    "needs_query_image",
    "pooled_shares",
    "register",
    "render_on_thumbnail",
    "render_overlay",
    "top_patches",
]
