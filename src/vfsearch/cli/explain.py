"""``vfsearch explain``: why a result matches the query region.

The methods and their parameters are the explainers' own declarations
(:func:`vfsearch.explain.method_info`, checked by :func:`~vfsearch.explain.check_params`):
``--param NAME=VALUE`` (repeatable) sets any of them, ``--list-methods`` prints them. The
older per-parameter flags (``--mode``, ``--window``, ``--n-masks``…) remain as aliases; left
out, the declared defaults apply. Nothing here imports torch until the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import BadParameter, OutputError
from ._util import parse_box

#: alias flag (its click name) → the declared parameter it sets
_ALIASES = {"mode": "mode", "n_masks": "n_masks", "keep_p": "p", "cells": "cells",
            "window": "window", "stride": "stride", "seed": "seed"}


def _list_methods(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from ..explain import method_info

    for m in method_info():
        kind = "runs the model" if m["runs_model"] else "instant, from the cache"
        click.echo(f"{m['name']}: {m['title']} ({kind})")
        for p in m["params"]:
            lo, hi = p.get("minimum"), p.get("maximum")
            if p.get("choices"):
                rng = " {" + "|".join(map(str, p["choices"])) + "}"
            elif lo is not None and hi is not None:
                rng = f" [{lo:g}..{hi:g}]"
            elif lo is not None:
                rng = f" [>={lo:g}]"
            else:
                rng = f" [<={hi:g}]" if hi is not None else ""
            spec = f"{p['name']}={p['default']}"
            click.echo(f"    {spec:<22} {p['type']:<5}{rng}  {p['help']}")
    ctx.exit(0)


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items:
        name, sep, value = it.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise BadParameter(f"expected NAME=VALUE, got {it!r}", param="param")
        if name in out:
            raise BadParameter(f"{name} given twice", param="param")
        out[name] = value.strip()
    return out


class _Bar:
    """A progress bar on stderr for the model-running methods (tqdm, 0–100 %)."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, leave=False,
                            dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                            "{elapsed}<{remaining}")

    def __call__(self, f: float) -> None:
        if self.bar is not None:
            self.bar.update(max(0, round(100 * f) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("explain")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--image", "-i", required=True, help="Query: dataset image id or image file.")
@click.option("--mask", type=click.Path(path_type=Path), default=None)
@click.option("--box", default=None, help="x0,y0,x1,y1 in the query image's pixels.")
@click.option("--whole", is_flag=True)
@click.option("--layer", "-l", default=None)
@click.option("--result", "-r", "result_id", required=True, type=int,
              help="Result image id to explain.")
@click.option("--method", default="exact", show_default=True,
              help="exact, feature, occlusion, rise, lime, mask, … (see --list-methods).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter of the method (repeatable), e.g. --param n_samples=500; "
                   "names, types and defaults: --list-methods.")
@click.option("--list-methods", is_flag=True, is_eager=True, expose_value=False,
              callback=_list_methods, help="List the methods and their parameters, then exit.")
@click.option("--mode", default=None, help="Alias of --param mode=… (fixed | both).")
@click.option("--n-masks", default=None, type=int, help="Alias of --param n_masks=… (rise).")
@click.option("--p", "keep_p", default=None, type=float, help="Alias of --param p=… (rise, lime).")
@click.option("--cells", default=None, type=int, help="Alias of --param cells=… (rise).")
@click.option("--window", default=None, type=int, help="Alias of --param window=… (occlusion).")
@click.option("--stride", default=None, type=int, help="Alias of --param stride=… (occlusion).")
@click.option("--seed", default=None, type=int, help="Alias of --param seed=….")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr for the model-running methods (default: on a terminal).")
@click.option("--out", "-o", default=None, type=click.Path(path_type=Path),
              help="Write PNG overlays + JSON here.")
def explain_cmd(cache, image, mask, box, whole, layer, result_id, method, params, progress, out,
                **aliases):
    """Explain why RESULT matches the query region (exact shares, feature occlusion,
    sliding-window occlusion, RISE, LIME, learned mask)."""
    from .. import open_cache
    from ..engine import make_query
    from ..explain import METHODS, check_params, explain, needs_query_image, render_overlay
    from ..images import load_image

    given = _parse_params(params)
    for flag, name in _ALIASES.items():
        if aliases.get(flag) is not None:
            if name in given:
                raise BadParameter(f"{name} given both as --param and as its own flag",
                                   param="param")
            given[name] = aliases[flag]
    from_param = set(_parse_params(params))
    try:
        checked = check_params(method, given)
    except BadParameter as e:
        if e.param in from_param:  # shown as "--param: window must be at least 4"
            raise BadParameter(e.message, param="param") from None
        raise
    c = open_cache(cache)
    query = int(image) if image.isdigit() else image
    q = make_query(c, query, mask=str(mask) if mask else None, box=parse_box(box), whole=whole,
                   layer=layer)
    if needs_query_image(method, checked) and q.source_id is None:
        checked["query_image"] = load_image(image)
    slow = METHODS[method].runs_model
    bar = _Bar(slow and (sys.stderr.isatty() if progress is None else progress), method)
    try:
        ex = explain(c, q, result_id, method, progress=bar, **checked)
    except BadParameter as e:
        if e.param in from_param:
            raise BadParameter(e.message, param="param") from None
        raise
    finally:
        bar.close()
    click.echo(f"{method}: score {ex.score:.4f} at offset {ex.offset} in {ex.seconds:.2f} s"
               + (f"; insertion AUC {ex.insertion_auc:.3f}, deletion AUC {ex.deletion_auc:.3f}"
                  if ex.insertion_auc is not None else ""))
    if "forwards" in ex.extra:
        click.echo(f"  {ex.extra['forwards']} model passes"
                   + (f" ({ex.extra['backwards']} with a backward pass)"
                      if ex.extra.get("backwards") else ""))
    if method == "exact":
        click.echo(f"  cell shares sum to {sum(s['share'] for s in ex.extra['cell_shares']):.6f}")
        for ch in ex.extra["top_channels"][:5]:
            click.echo(f"  channel {ch['channel']:>4}: share {ch['share']:+.4f}; top patches in "
                       "images " + ", ".join(str(p["id"]) for p in ch["patches"]))
    elif method == "lime":
        click.echo(f"  {len(ex.extra['selected'])} of {ex.extra['superpixels']} superpixels "
                   f"selected; weighted R² of the fit {ex.extra['fit_r2']:.3f}")
    elif method == "mask":
        obj = ex.extra["objective"]
        click.echo(f"  objective {obj[0]:.4f} → {obj[-1]:.4f} in {ex.extra['iterations']} steps")
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
