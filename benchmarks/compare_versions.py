"""Search results of this checkout against an older commit, on the same cache: every query of a
fixed set (boxes, soft masks, whole images; both layers of the test fixture) must give the same
ids, scores, offsets and boxes, bit for bit.

The cache is built by the OLD commit (so it is in that commit's format) from the test fixture's
images (6 sample photos × 3 variants); the new code reads it as an older format.

    python benchmarks/compare_versions.py --old 383c5ed [--work /tmp/vfs-compare]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("ids", "scores", "offsets", "boxes", "all_scores")

QUERIES = textwrap.dedent('''
    import json, sys
    import numpy as np
    from vfsearch import open_cache, search
    c = open_cache(sys.argv[1])
    out = []
    for layer in c.layers:
        for i in range(0, len(c), 2):
            w, h = c.image_size(i)
            boxes = [(w * .3, h * .25, w * .6, h * .7), (w * .1, h * .1, w * .35, h * .4)]
            yy, xx = np.mgrid[:h, :w]
            soft = np.clip(1.2 - np.hypot(yy - h * .5, xx - w * .45) / (min(w, h) * .2), 0, 1)
            for kind, kw in ([("box", {"box": b}) for b in boxes]
                             + [("mask", {"mask": soft.astype(np.float32)}),
                                ("whole", {"whole": True})]):
                r = search(c, i, layer=layer, k=8, return_scores=True, **kw)
                out.append({"layer": layer, "image": i, "kind": kind,
                            "ids": [int(m.id) for m in r], "scores": [float(m.score) for m in r],
                            "offsets": [list(map(int, m.offset)) for m in r],
                            "boxes": [list(map(float, m.box)) for m in r],
                            "all_scores": [float(v) if np.isfinite(v) else None for v in r.scores]})
    json.dump(out, sys.stdout)
''')

BUILD = textwrap.dedent('''
    import sys
    from vfsearch import index
    from vfsearch.datasets import sample_images
    keep = ["astronaut", "cat", "coffee", "horse", "rocket", "motorcycle"]
    full = sample_images(sys.argv[1] + "/all", variants=3)
    import shutil, os
    dest = sys.argv[1] + "/imgs"
    for name in keep:
        shutil.copytree(os.path.join(full, name), os.path.join(dest, name), dirs_exist_ok=True)
    index(dest, sys.argv[1] + "/cache", layers=["blocks.15", "blocks.10"], chunk=8, batch_size=8,
          workers=0, progress=False)
''')


def _run(src: Path, code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(src))
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="383c5ed")
    ap.add_argument("--work", default="/tmp/vfs-compare")
    args = ap.parse_args()
    work = Path(args.work)
    old = work / "old"
    if not old.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old],
                       check=True, capture_output=True)
    if not (work / "cache" / "zarr.json").exists():
        _run(old / "src", BUILD, str(work))
    a = json.loads(_run(old / "src", QUERIES, str(work / "cache")))
    b = json.loads(_run(ROOT / "src", QUERIES, str(work / "cache")))
    assert len(a) == len(b)
    pairs = list(zip(a, b, strict=True))
    # per field, the queries (by position) whose old and new values differ
    diff = {key: [j for j, (x, y) in enumerate(pairs) if x[key] != y[key]] for key in KEYS}
    n_bad = len(set().union(*diff.values()))
    print(f"{len(a)} queries compared between {args.old} and this checkout: "
          f"{len(a) - n_bad} identical in every field")
    for key in KEYS:
        line = f"  {key}: {len(a) - len(diff[key])} of {len(a)} identical"
        if key == "all_scores" and diff[key]:
            worst = max(abs(u - v) for j in diff[key]
                        for u, v in zip(a[j][key], b[j][key], strict=True)
                        if u is not None and v is not None)
            line += (f" (the scan's scores of images outside the exact refine; largest "
                     f"difference {worst:.2e})")
        print(line)
    bad = [(a[j]["layer"], a[j]["image"], a[j]["kind"], key) for key in KEYS for j in diff[key]]
    for b_ in bad[:10]:
        print("  differs:", b_)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
