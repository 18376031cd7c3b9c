"""Coarse labels for the ImageNet sample (one image per class): a ``path,label`` CSV for
``vfsearch eval concepts --labels``.

With one image per class, purity by class is meaningless (every cluster's majority class has
one image), so the 1000 classes are put in 9 coarse groups by their index in the sorted WordNet
id list (the standard class order, which WordNet keeps roughly by kind): fish, bird,
amphibian/reptile, invertebrate, dog, other mammal, artifact, food, nature (landscapes, plants,
fungi, people). The ranges are approximate and are given here in full.

    python benchmarks/imagenet_groups.py /work/shared/datasets/imagenet-sample-1k > groups.csv
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

GROUPS = {
    "fish": [(0, 6), (389, 397)],
    "bird": [(7, 24), (80, 100), (127, 146)],
    "amphibian_reptile": [(25, 68)],
    "invertebrate": [(69, 79), (107, 126), (300, 329)],
    "dog": [(151, 268)],
    "mammal": [(101, 106), (147, 150), (269, 299), (330, 388)],
    "artifact": [(398, 923), (999, 999)],
    "food": [(924, 969)],
    "nature": [(970, 998)],
}


def group_of(index: int) -> str:
    for name, ranges in GROUPS.items():
        if any(a <= index <= b for a, b in ranges):
            return name
    raise ValueError(index)


def main(folder: str) -> None:
    files = sorted(p.name for p in Path(folder).iterdir() if re.match(r"^n\d+_", p.name))
    wnids = sorted({f.split("_", 1)[0] for f in files})
    if len(wnids) != 1000:
        raise SystemExit(f"expected the 1000 ImageNet classes, found {len(wnids)}")
    index = {w: i for i, w in enumerate(wnids)}
    out = csv.writer(sys.stdout)
    out.writerow(["path", "label"])
    for f in files:
        out.writerow([f, group_of(index[f.split("_", 1)[0]])])


if __name__ == "__main__":
    main(sys.argv[1])
