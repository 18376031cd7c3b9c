"""Choose the default layer by measurement: the planted-crop test.

A crop of a source image is pasted at a known box into a distractor image; the crop's region is
then queried in its source image. A layer is good when the planted image comes back first and the
matched box lands on the pasted box. Usage:

    python benchmarks/choose_default_layer.py [IMAGES_DIR] [--n 60] [--work DIR]

IMAGES_DIR defaults to ../shared/datasets/imagenet-sample-1k (the first 200 images are used).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vfsearch import index
from vfsearch.engine import search
from vfsearch.images import load_image

LAYERS = ["blocks.5", "blocks.8", "blocks.10", "blocks.12", "blocks.14", "blocks.15", "head"]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("images", nargs="?",
                    default=str(here.parent / "shared/datasets/imagenet-sample-1k"))
    ap.add_argument("--n", type=int, default=60, help="planted pairs")
    ap.add_argument("--pool", type=int, default=200, help="images drawn from the folder")
    ap.add_argument("--work", default="/tmp/vfs-layer-choice")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    files = sorted(p for p in Path(args.images).iterdir()
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    files = [files[i] for i in rng.permutation(len(files))[: args.pool]]
    work = Path(args.work)
    imgdir = work / "images"
    imgdir.mkdir(parents=True, exist_ok=True)
    for f in files:
        dst = imgdir / f.name
        if not dst.exists():
            load_image(f).save(dst.with_suffix(".png"))
    plants = []
    for j in range(args.n):
        a, b = rng.choice(len(files), 2, replace=False)
        src = Image.open(imgdir / (files[a].stem + ".png")).convert("RGB")
        dst = Image.open(imgdir / (files[b].stem + ".png")).convert("RGB")
        # keep both boxes inside the model's centre crop (the central min(w,h) square) and paste
        # at the same scale in model-input pixels (scale ∝ 1/shorter side)
        ss, sd = min(src.size), min(dst.size)
        side = int(rng.uniform(0.25, 0.5) * ss)
        dside = max(8, int(round(side * sd / ss)))
        sx0, sy0 = (src.size[0] - ss) // 2, (src.size[1] - ss) // 2
        dx0, dy0 = (dst.size[0] - sd) // 2, (dst.size[1] - sd) // 2
        cx0 = sx0 + int(rng.uniform(0.05, 0.95) * (ss - side))
        cy0 = sy0 + int(rng.uniform(0.05, 0.95) * (ss - side))
        px0 = dx0 + int(rng.uniform(0.05, 0.95) * (sd - dside))
        py0 = dy0 + int(rng.uniform(0.05, 0.95) * (sd - dside))
        crop = src.crop((cx0, cy0, cx0 + side, cy0 + side)).resize((dside, dside),
                                                                   Image.Resampling.BICUBIC)
        dst.paste(crop, (px0, py0))
        side_d = dside
        name = f"planted_{j:03d}.png"
        dst.save(imgdir / name)
        plants.append({"source": files[a].stem + ".png", "planted": name,
                       "crop": [cx0, cy0, cx0 + side, cy0 + side],
                       "pasted": [px0, py0, px0 + side_d, py0 + side_d]})
    t0 = time.time()
    rep = index(imgdir, work / "cache", layers=LAYERS, label_from=None, progress=False)
    c = rep.cache
    print(f"indexed {len(c)} images at {len(LAYERS)} layers in {time.time() - t0:.0f} s")
    ids = {str(p): i for i, p in enumerate(c.paths)}
    rows = []
    for layer in LAYERS:
        top1, ious, ranks = 0, [], []
        for p in plants:
            r = search(c, ids[p["source"]], box=p["crop"], layer=layer, k=len(c), exclude_self=True)
            order = [m.id for m in r]
            target = ids[p["planted"]]
            rank = order.index(target)
            ranks.append(rank)
            top1 += rank == 0
            ious.append(iou(r[rank].box, p["pasted"]))
        rows.append({"layer": layer, "grid": c.grid(layer), "top1": top1 / len(plants),
                     "mean_rank": float(np.mean(ranks)), "iou": float(np.mean(ious)),
                     "iou>0.5": float(np.mean(np.array(ious) > 0.5))})
    print(f"{'layer':<10} {'grid':>7} {'top-1':>6} {'mean rank':>9} {'IoU':>6} {'IoU>.5':>7}")
    for r in rows:
        g = f"{r['grid'][0]}x{r['grid'][1]}"
        print(f"{r['layer']:<10} {g:>7} {r['top1']:>6.2f} {r['mean_rank']:>9.2f} {r['iou']:>6.3f} "
              f"{r['iou>0.5']:>7.2f}")
    (work / "layer_choice.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
