"""``vfsearch explain``: why a result matches the query region."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import OutputError
from ._util import parse_box


@click.command("explain")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--image", "-i", required=True, help="Query: dataset image id or image file.")
@click.option("--mask", type=click.Path(path_type=Path), default=None)
@click.option("--box", default=None, help="x0,y0,x1,y1 in the query image's pixels.")
@click.option("--whole", is_flag=True)
@click.option("--layer", "-l", default=None)
@click.option("--result", "-r", "result_id", required=True, type=int,
              help="Result image id to explain.")
@click.option("--method", type=click.Choice(["exact", "feature", "occlusion", "rise"]),
              default="exact", show_default=True)
@click.option("--mode", type=click.Choice(["fixed", "both"]), default="fixed", show_default=True,
              help="occlusion/rise: saliency of the result only, or of both images.")
@click.option("--n-masks", default=256, show_default=True, type=int, help="rise: number of masks.")
@click.option("--p", "keep_p", default=0.5, show_default=True, type=float,
              help="rise: keep probability.")
@click.option("--cells", default=7, show_default=True, type=int, help="rise: mask grid cells.")
@click.option("--window", default=56, show_default=True, type=int,
              help="occlusion: window (input px).")
@click.option("--stride", default=28, show_default=True, type=int,
              help="occlusion: stride (input px).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "-o", default=None, type=click.Path(path_type=Path),
              help="Write PNG overlays + JSON here.")
def explain_cmd(cache, image, mask, box, whole, layer, result_id, method, mode, n_masks, keep_p,
                cells, window, stride, seed, out):
    """Explain why RESULT matches the query region (exact shares, occlusion, RISE)."""
    from .. import open_cache
    from ..engine import make_query
    from ..explain import explain, render_overlay
    from ..images import load_image

    c = open_cache(cache)
    query = int(image) if image.isdigit() else image
    q = make_query(c, query, mask=str(mask) if mask else None, box=parse_box(box), whole=whole,
                   layer=layer)
    params = {}
    if method == "rise":
        params = {"n_masks": n_masks, "p": keep_p, "cells": cells, "seed": seed, "mode": mode}
    elif method == "occlusion":
        params = {"window": window, "stride": stride, "mode": mode}
    if mode == "both" and q.source_id is None:
        params["query_image"] = load_image(image)
    ex = explain(c, q, result_id, method, **params)
    click.echo(f"{method}: score {ex.score:.4f} at offset {ex.offset} in {ex.seconds:.2f} s"
               + (f"; insertion AUC {ex.insertion_auc:.3f}, deletion AUC {ex.deletion_auc:.3f}"
                  if ex.insertion_auc is not None else ""))
    if method == "exact":
        click.echo(f"  cell shares sum to {sum(s['share'] for s in ex.extra['cell_shares']):.6f}")
        for ch in ex.extra["top_channels"][:5]:
            click.echo(f"  channel {ch['channel']:>4}: share {ch['share']:+.4f}; top patches in "
                       "images " + ", ".join(str(p["id"]) for p in ch["patches"]))
    if out:
        rimg = load_image(c.thumbnail(result_id)).resize(c.image_size(result_id))
        geom = c.transform.geometry(*c.image_size(result_id))
        overlays = {f"result_{result_id}_{method}.png": render_overlay(rimg, ex.saliency, geom)}
        if ex.query_saliency is not None:
            qimg = (load_image(c.thumbnail(q.source_id)).resize(q.image_size)
                    if q.source_id is not None else load_image(image))
            overlays[f"query_{method}.png"] = render_overlay(qimg, ex.query_saliency, q.geometry)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "explanation.json").write_text(json.dumps(ex.to_dict(), indent=1))
            for name, im in overlays.items():
                im.save(out / name)
        except OSError as e:
            raise OutputError(f"cannot write the explanation to {out}: {e}", param="out") from None
        click.echo(f"  wrote {out}")
