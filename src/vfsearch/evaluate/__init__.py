"""Quantitative evaluation protocols (the experiments of "Interactive Visual Feature Search" §4.3
and §4.4), each seeded, reproducible and reported with bootstrap confidence intervals.

* ``labels``    — average number of distinct labels in the top-k of N random queries (whole image,
  and random boxes of a few feature cells inside the model's crop).
* ``overlap``   — average ``|top-k(A) ∩ top-k(B)| / k`` of two arms (two layers of one cache, or
  two caches of the same image set) for the same queries.
* ``precision`` — precision@k by label (per-label table), and the spread of the top-k over a
  metadata column (fraction of results sharing the query's value, and where the rest come from).
* ``localize``  — a crop of one image is pasted at a known box into a distractor image; the crop's
  region is queried in its source and the matched box is compared (IoU) with the pasted box, binned
  by area as in §4.4, next to the grid ceilings (the best IoU the feature grid allows).
* ``concepts``  — purity and NMI of discovered concepts against labels: dictionary, saliency
  (Plummer et al., "Why do these match?"), full-frame clustering and random assignment
  (:mod:`.concept_eval`).
* ``boxes``     — §4.4's face protocol on any ground-truth boxes (a CSV, or MTCNN faces from
  :mod:`.faces`): each box a query, the matched boxes' IoU with the results' boxes by area bin
  (:mod:`.boxes`).

Modules: :mod:`.metrics` (CIs, IoU, bins, ceilings), :mod:`.protocols` (sampling, arms, the
first three protocols), :mod:`.localize` (planted crops), :mod:`.report` (markdown, JSON,
figures). Everything here uses the public API (``index``, ``open_cache``, ``make_query``,
``search_many``) and never prints: progress messages go to the ``log`` callback given to a
protocol. ``vfsearch eval`` (in :mod:`vfsearch.cli`) is the command line.
"""

from __future__ import annotations

from ..errors import EvalError
from .boxes import read_boxes, run_boxes, write_boxes_report
from .concept_eval import run_concepts_eval, write_concepts_report
from .localize import (
    DEFAULT_LOCALIZE_LAYERS,
    localize_layer,
    plant_crops,
    prepare_localize,
    run_localize,
)
from .metrics import (
    AREA_BINS,
    area_bin,
    bootstrap_ci,
    cell_ceiling,
    distinct_labels,
    iou,
    match_box,
    overlap_fraction,
    precision_at_k,
    same_value_fraction,
    shift_ceiling,
)
from .protocols import (
    Arm,
    QuerySpec,
    run_arm,
    run_labels,
    run_overlap,
    run_precision,
    sample_queries,
)
from .report import make_figures, to_markdown, write_report

__all__ = [
    "AREA_BINS",
    "DEFAULT_LOCALIZE_LAYERS",
    "PROTOCOLS",
    "Arm",
    "EvalError",
    "QuerySpec",
    "area_bin",
    "bootstrap_ci",
    "cell_ceiling",
    "distinct_labels",
    "iou",
    "localize_layer",
    "make_figures",
    "match_box",
    "overlap_fraction",
    "plant_crops",
    "precision_at_k",
    "prepare_localize",
    "read_boxes",
    "run_arm",
    "run_boxes",
    "run_concepts_eval",
    "run_labels",
    "run_localize",
    "run_overlap",
    "run_precision",
    "same_value_fraction",
    "sample_queries",
    "shift_ceiling",
    "to_markdown",
    "write_boxes_report",
    "write_concepts_report",
    "write_report",
]

#: the protocols of ``vfsearch eval``
PROTOCOLS = ("labels", "overlap", "precision", "localize", "concepts", "boxes")
