"""Ablations of the concepts protocol (vfsearch.evaluate.concept_eval): the saliency method with
raw shares (no average-image baseline) or rigid whole-image neighbours, and the NMF dictionary,
next to the defaults, on the same images and resamples.

    python benchmarks/concepts_ablation.py CACHE LAYER OUT_DIR [LABELS.csv] [METHOD ...]
"""

from __future__ import annotations

import sys

from vfsearch import open_cache
from vfsearch.evaluate.concept_eval import run_concepts_eval, write_concepts_report


def main(cache: str, layer: str, out: str, labels: str | None = None, *methods: str) -> None:
    methods = methods or ("saliency", "saliency:raw", "saliency:whole", "random")
    rep = run_concepts_eval(open_cache(cache), layer, labels=labels or None, methods=methods,
                            log=print)
    print(write_concepts_report(rep, out, prefix="ablation")["text"])


if __name__ == "__main__":
    main(*sys.argv[1:])
