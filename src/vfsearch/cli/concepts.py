"""``vfsearch concepts``: discover a layer's concepts (dictionary or saliency), store them in the
cache and write ``concepts.json`` with contact sheets; plus the ``concepts`` and ``boxes``
protocols of ``vfsearch eval`` (:func:`run_eval`)."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import CONTEXT, echo_json, err


@click.command("concepts", context_settings=CONTEXT)
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--layer", "-l", default=None, help="Layer (default: the cache's first layer).")
@click.option("--method", type=click.Choice(["dictionary", "saliency"]), default="dictionary",
              show_default=True,
              help="dictionary: directions learned from every cached cell; saliency: "
                   "Plummer et al.'s attribute discovery from the saliency of nearest-neighbour "
                   "matches.")
@click.option("--n", "n_concepts", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Number of concepts.")
@click.option("--queries", "n_queries", default=200, show_default=True,
              type=click.IntRange(1, 1_000_000), help="saliency: number of query images.")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="Folder for concepts.json and the PNG contact sheets.")
@click.option("--algorithm", type=click.Choice(["kmeans", "nmf"]), default="kmeans",
              show_default=True,
              help="dictionary: spherical k-means, or NMF (non-negative layers only).")
@click.option("--passes", default=2, show_default=True, type=click.IntRange(0, 100),
              help="dictionary: streamed passes over every cell after the sample.")
@click.option("--per-image", default=2, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many patches of one image per concept.")
@click.option("--patches", "n_patches", default=32, show_default=True,
              type=click.IntRange(1, 10_000), help="Patches kept per concept.")
@click.option("--k", "-k", default=20, show_default=True, type=click.IntRange(1, 10_000),
              help="saliency: nearest neighbours per query.")
@click.option("--keep", default=8, show_default=True, type=click.IntRange(1, 10_000),
              help="saliency: neighbours kept per query (peaks in the most common place).")
@click.option("--crop", default=3, show_default=True, type=click.IntRange(1, 64),
              help="saliency: crop side in cells around each neighbour's peak.")
@click.option("--search", "search_mode", type=click.Choice(["global", "whole"]),
              default="global", show_default=True,
              help="saliency: neighbours by pooled-feature cosine, or by the rigid whole-image "
                   "query.")
@click.option("--saliency", type=click.Choice(["exact", "rise"]), default="exact",
              show_default=True,
              help="saliency: exact score shares (no model pass), or fixed-reference RISE "
                   "(runs the model: slow).")
@click.option("--rise-masks", default=64, show_default=True, type=click.IntRange(1, 4000),
              help="saliency with RISE: random masks per map.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-store", is_flag=True, help="Do not store the result in the cache.")
@click.option("--image-root", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print concepts.json to stdout.")
@click.option("--quiet", "-q", is_flag=True)
def concepts_cmd(cache, layer, method, n_concepts, n_queries, out, algorithm, passes, per_image,
                 n_patches, k, keep, crop, search_mode, saliency, rise_masks, seed, no_store,
                 image_root, as_json, quiet):
    """Discover the concepts of a layer: recurring patterns, each with its best patches.

    Writes OUT/concepts.json (boxes in original-image pixels, patches best first), one contact
    sheet per concept (OUT/concept_NNN.png) and an overview (OUT/concepts.png), and stores the
    result in the cache for the app and for `vfsearch search --concept ID`.
    """
    import time

    from .. import open_cache
    from ..concepts import discover, make_sheets, save_concepts, write_concepts

    c = open_cache(cache, image_root=image_root)
    log = None if quiet else err
    t0 = time.perf_counter()
    if method == "dictionary":
        kw = dict(algorithm=algorithm, passes=passes, per_image=per_image, n_patches=n_patches,
                  seed=seed)
    else:
        kw = dict(k=k, keep=keep, crop=crop, search=search_mode, saliency=saliency,
                  rise={"n_masks": rise_masks} if saliency == "rise" else None,
                  per_image=per_image, n_patches=n_patches, seed=seed)
    cs = discover(c, layer, method, n_concepts=n_concepts, n_queries=n_queries, store=False,
                  log=log, **kw)
    sheets = make_sheets(c, cs)
    if not no_store:
        save_concepts(c, cs, sheets)
    paths = write_concepts(c, cs, out, sheets)
    dt = time.perf_counter() - t0
    if as_json:
        echo_json(cs.to_dict(c))
        return
    click.echo(f"{len(cs)} {method} concepts of {cs.layer} ({c.grid(cs.layer)[0]}×"
               f"{c.grid(cs.layer)[1]}) over {cs.attrs.get('n_images')} images in {dt:.1f} s")
    click.echo(f"{'id':>4} {'size':>8}  top patches (label ×count)")
    for j in range(len(cs)):
        labels = [p["label"] for p in cs.patches(j, c)[:8]]
        common = sorted(set(labels), key=lambda s: -labels.count(s))[:3]
        click.echo(f"{j:>4} {int(cs.sizes[j]):>8}  "
                   + ", ".join(f"{s} ×{labels.count(s)}" for s in common))
    if log:
        where = "" if no_store else f"; stored in {c.path} (concepts/{cs.layer}/{method})"
        log(f"wrote {paths['json']} and {len(paths['sheets'])} sheets{where}")


def run_eval(protocol: str, cache, cache2, *, layer, layer2, n, k, seed, boot, out, name,
             no_figures, quiet, boxes=None, detect=None, n_concepts=32, labels=None,
             column=None) -> None:
    """The ``concepts`` and ``boxes`` protocols of ``vfsearch eval`` (called from it)."""
    from .. import open_cache
    from ..errors import EvalError

    log = None if quiet else err
    out = out or Path(f"eval-{protocol}")
    if protocol == "concepts":
        from ..evaluate.concept_eval import run_concepts_eval, write_concepts_report

        if cache2 is not None:
            raise EvalError("concepts takes one cache", param="cache2")
        c = open_cache(cache)
        rep = run_concepts_eval(c, layer or c.default_layer, n_concepts=n_concepts, n_queries=n,
                                seed=seed, n_boot=boot, labels=labels, column=column, log=log)
        res = write_concepts_report(rep, out, prefix=name, figures=not no_figures, log=err)
    else:
        from ..evaluate.boxes import read_boxes, run_boxes, write_boxes_report
        from .eval import arms_from_paths

        arms = arms_from_paths("labels", str(cache), str(cache2) if cache2 else None, layer,
                               layer2)
        if detect:
            from ..evaluate.faces import detect_cache_faces

            dest = Path(boxes) if boxes else Path(out) / "faces.csv"
            boxes = detect_cache_faces(arms[0].cache, dest, log=log, progress=not quiet)
        if boxes is None:
            raise EvalError("boxes needs ground-truth boxes (a CSV: path,x0,y0,x1,y1[,label]) "
                            "or a detector", param="boxes")
        rep = run_boxes(arms, read_boxes(boxes), k=k, seed=seed, n_boot=boot, log=log)
        rep["boxes_file"] = str(boxes)
        rep["detect"] = detect
        res = write_boxes_report(rep, out, prefix=name, figures=not no_figures, log=err)
    click.echo(res["text"])
    if log is not None:
        log(f"wrote {res['json']}, {res['markdown']}" + "".join(f", {p}" for p in res["figures"]))
