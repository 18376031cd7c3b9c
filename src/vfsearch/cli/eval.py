"""``vfsearch eval``: the quantitative experiments of :mod:`vfsearch.evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import EvalError, UnknownLayer
from ._util import CONTEXT, err

# the protocols and localize defaults of vfsearch.evaluate (kept here so that ``--help`` imports
# nothing heavy; a test checks they agree)
PROTOCOLS = ("labels", "overlap", "precision", "localize", "concepts", "boxes")
DEFAULT_LOCALIZE_LAYERS = ("blocks.10", "blocks.15")


def arms_from_paths(protocol: str, cache_path: str, cache2_path: str | None, layer: str | None,
                    layer2: str | None) -> list:
    """The arms of ``vfsearch eval PROTOCOL CACHE [CACHE2] [--layer A] [--layer2 B]``."""
    from .. import open_cache
    from ..evaluate import Arm

    c1 = open_cache(cache_path)
    c2 = open_cache(cache2_path) if cache2_path else None
    n1 = Path(cache_path).name or str(cache_path)
    n2 = (Path(cache2_path).name or str(cache2_path)) if cache2_path else None
    if c2 is not None and n2 == n1:
        n1, n2 = f"{n1}#1", f"{n2}#2"

    def arm(c, name, lay, param):
        if lay not in c.layers:
            raise UnknownLayer(f"cache {c.path} has no layer {lay!r}; it has: "
                               f"{', '.join(c.layers)}", param=param)
        return Arm(f"{name}:{lay}", c, lay)

    if protocol == "overlap":
        la = layer or c1.default_layer
        if c2 is not None:
            lb = layer2 or (layer if layer in c2.layers else None) or c2.default_layer
            return [arm(c1, n1, la, "layer"), arm(c2, n2, lb, "layer2")]
        if layer2 is None:
            others = [x for x in c1.layers if x != la]
            if not others:
                raise EvalError("overlap needs two arms: a second cache, or a cache with two "
                                "layers (--layer A --layer2 B)")
            layer2 = others[0]
        if layer2 == la:
            raise EvalError("overlap of a layer with itself: give two different layers",
                            param="layer2")
        return [arm(c1, n1, la, "layer"), arm(c1, n1, layer2, "layer2")]
    # labels / precision: every requested arm
    arms = [arm(c1, n1, layer, "layer")] if layer else [arm(c1, n1, x, "layer") for x in c1.layers]
    if c2 is not None:
        l2 = layer2 or layer
        arms += [arm(c2, n2, l2, "layer2")] if l2 else [arm(c2, n2, x, "layer2") for x in c2.layers]
    elif layer2:
        arms.append(arm(c1, n1, layer2, "layer2"))
    return arms


@click.command("eval", context_settings=CONTEXT)
@click.argument("protocol", type=click.Choice(PROTOCOLS))
@click.argument("cache", type=click.Path(path_type=Path))
@click.argument("cache2", required=False, type=click.Path(path_type=Path))
@click.option("--layer", "-l", default=None,
              help="Layer of CACHE (default: every layer; overlap: the first).")
@click.option("--layer2", default=None,
              help="Second layer (of CACHE2, or of CACHE when there is no CACHE2).")
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Number of random queries (localize: planted crops).")
@click.option("--k", "-k", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--boot", default=1000, show_default=True, type=click.IntRange(0, 100_000),
              help="Bootstrap resamples for the 95 % confidence intervals.")
@click.option("--queries", "kinds", type=click.Choice(["both", "whole", "region", "global", "all"]),
              default="both",
              show_default=True,
              help="Query kinds: whole images (the paper's rigid mask), random regions of 2–4 "
                   "cells, both (whole + region), global (pooled-feature cosine) or all three.")
@click.option("--column", default=None, help="precision: metadata column for the spread analysis.")
@click.option("--out", "-o", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder (default: eval-PROTOCOL).")
@click.option("--name", default=None, help="File name prefix of the outputs (default: PROTOCOL).")
@click.option("--work", default=None, type=click.Path(path_type=Path),
              help="localize: folder for the planted images and their cache (resumable).")
@click.option("--pool", default=200, show_default=True, type=click.IntRange(1, 1_000_000),
              help="localize: distractor images drawn from the folder (besides the N sources).")
@click.option("--min-side", default=24.0, show_default=True, type=float,
              help="localize: smallest crop side (px).")
@click.option("--max-side", default=300.0, show_default=True, type=float,
              help="localize: largest crop side (px).")
@click.option("--label-pattern", default=None,
              help="localize: label regex on file names (for the cache).")
@click.option("--model", "-m", "model", default=None,
              help="localize: the model that indexes the planted set (default: "
                   "efficientnet-lite0; its default layer when no --layer is given).")
@click.option("--weights", default=None, type=click.Path(path_type=Path),
              help="localize: weights file for a torchvision:/timm: --model.")
@click.option("--input-size", default=None, type=click.IntRange(16, 4096),
              help="localize: model input side in pixels.")
@click.option("--boxes", "boxes", default=None, type=click.Path(path_type=Path),
              help="boxes: ground-truth boxes CSV (path,x0,y0,x1,y1[,label]); with --detect, "
                   "where the detections go.")
@click.option("--detect", type=click.Choice(["faces"]), default=None,
              help="boxes: make the boxes with a detector (faces: MTCNN, facenet-pytorch).")
@click.option("--concepts", "n_concepts", default=32, show_default=True,
              type=click.IntRange(1, 4096), help="concepts: number of concepts (K).")
@click.option("--labels", "labels_file", default=None, type=click.Path(path_type=Path),
              help="concepts: labels from a CSV (path,label) instead of the cache's.")
@click.option("--no-figures", is_flag=True, help="Skip the matplotlib figures.")
@click.option("--quiet", "-q", is_flag=True)
def eval_cmd(protocol, cache, cache2, layer, layer2, n, k, seed, boot, kinds, column, out, name,
             work, pool, min_side, max_side, label_pattern, model, weights, input_size, boxes,
             detect, n_concepts, labels_file, no_figures, quiet):
    """Quantitative experiments: PROTOCOL is labels, overlap, precision, localize, concepts
    or boxes.

    \b
    labels     CACHE [CACHE2]: distinct labels in the top-k (per layer / cache)
    overlap    CACHE --layer A --layer2 B, or CACHE CACHE2: |top-k(A) ∩ top-k(B)| / k
    precision  CACHE [CACHE2] [--column COL]: precision@k by label, spread over COL
    localize   IMAGES --work DIR [--layer A --layer2 B]: planted-crop IoU by area bin
               (CACHE is then a folder of images; the planted set and its cache go to --work)
    concepts   CACHE [--layer L] [--concepts K] [--n QUERIES] [--labels CSV | --column COL]:
               purity and NMI of dictionary, saliency, full-frame and random concepts
    boxes      CACHE [CACHE2] --boxes CSV | --detect faces: every box a query, IoU of the
               matched boxes with the result images' boxes by area bin (§4.4, Fig. 8)

    Writes PROTOCOL.json, PROTOCOL.md and PNG figures into --out and prints the markdown table.
    """
    if protocol != "localize" and (model or weights or input_size):
        raise EvalError("only localize indexes images: --model, --weights and --input-size "
                        "belong to it (the other protocols read the caches' own model)",
                        param="model")
    if protocol in ("concepts", "boxes"):
        from .concepts import run_eval

        return run_eval(protocol, cache, cache2, layer=layer, layer2=layer2, n=n, k=k,
                        seed=seed, boot=boot, out=out, name=name, no_figures=no_figures,
                        quiet=quiet, boxes=boxes, detect=detect, n_concepts=n_concepts,
                        labels=labels_file, column=column)
    from ..evaluate import run_labels, run_localize, run_overlap, run_precision, write_report

    out = out or Path(f"eval-{protocol}")
    kind_list = {"both": ("whole", "region"), "all": ("whole", "region", "global")}.get(
        kinds, (kinds,))
    log = None if quiet else err
    if protocol == "localize":
        if cache2 is not None:
            raise EvalError("localize takes one IMAGES folder")
        if work is None:
            raise EvalError("localize needs a folder for the planted images and their cache",
                            param="work")
        if not 0 < min_side < max_side:
            raise EvalError("need 0 < --min-side < --max-side")
        lm = None
        if model or weights or input_size:
            from .. import load_model

            lm = load_model(model or "efficientnet-lite0", str(weights) if weights else None,
                            input_size)
        layers = [x for x in (layer, layer2) if x] or (
            [lm.default_layer] if lm is not None else list(DEFAULT_LOCALIZE_LAYERS))
        rep = run_localize(cache, work, layers=layers, n=n, pool=pool, k=k, seed=seed,
                           n_boot=boot, sides=(min_side, max_side), label_pattern=label_pattern,
                           model=lm, progress=not quiet, log=log)
    else:
        if work is not None:
            raise EvalError("only localize takes a work folder", param="work")
        arms = arms_from_paths(protocol, str(cache), str(cache2) if cache2 else None, layer,
                               layer2)
        if protocol == "labels":
            rep = run_labels(arms, n=n, k=k, seed=seed, n_boot=boot, kinds=kind_list, log=log)
        elif protocol == "overlap":
            rep = run_overlap(arms[0], arms[1], n=n, k=k, seed=seed, n_boot=boot,
                              kinds=kind_list, log=log)
        else:
            rep = run_precision(arms, n=n, k=k, seed=seed, n_boot=boot, column=column,
                                kinds=kind_list, log=log)
    rep["options"] = {"cache2": str(cache2) if cache2 else None, "layer": layer, "layer2": layer2,
                      "queries": kinds, "column": column}
    res = write_report(rep, out, prefix=name, figures=not no_figures, log=err)  # notes even with -q
    click.echo(res["text"])
    if log is not None:
        log(f"wrote {res['json']}, {res['markdown']}" + "".join(f", {p}" for p in res["figures"]))
