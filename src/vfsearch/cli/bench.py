"""``vfsearch bench``: the search kernel against the paper's method and the memory floor."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadParameter
from ._util import err


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BadParameter(f"{what} are whole numbers separated by commas, got {text!r}",
                           param=what) from None
    if not vals:
        raise BadParameter(f"give at least one of {what}", param=what)
    return vals


@click.command("bench")
@click.option("--shape", "shapes", default=None,
              help="Synthetic layer shapes HxWxC[,…] (e.g. 7x7x512,16x16x384): tiled to --n "
                   "images, searched, timed.")
@click.option("--cache", "cache", default=None, type=click.Path(path_type=Path),
              help="Your own cache: its real features (--layer, default the cache's default "
                   "layer) tiled to --n images.")
@click.option("--layer", "layers", multiple=True, help="Layer(s) of --cache (repeatable).")
@click.option("--n", "n", default=50_000, show_default=True, type=click.IntRange(1, None),
              help="Images per shape / layer (--shape, --cache).")
@click.option("--vary/--no-vary", default=True, show_default=True,
              help="Roll each copy's grid by a different number of cells (and mirror odd "
                   "copies), so that copies are different images.")
@click.option("--copies/--no-copies", default=True, show_default=True,
              help="Also time the exact-copy case (231 images, each ~N/231 times).")
@click.option("--queries", default="7,123,456", show_default=True,
              help="Query image ids (the central 3×3 cells), comma-separated.")
@click.option("--sizes", default="25000,50000,75000,100000", show_default=True,
              help="Without --shape / --cache: comma-separated N (images of 7×7×512).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 50),
              help="Timed rounds (interleaved; medians).")
@click.option("--no-reference", is_flag=True, help="Skip the (slow) paper's-method timing.")
@click.option("--no-disk", is_flag=True, help="Skip the streamed-from-disk timing (--sizes).")
@click.option("--threads", default=None, type=int)
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Write the JSON and markdown results here.")
@click.option("--workdir", default=None, type=click.Path(path_type=Path),
              help="Where the tiled caches are built (and kept for the next run).")
def bench_cmd(shapes, cache, layers, n, vary, copies, queries, sizes, repeat, no_reference,
              no_disk, threads, out, workdir):
    """Time the search against the paper's method and the memory floor.

    With --shape and/or --cache: per layer shape, in one run of interleaved rounds: one read
    of the 8-bit features, the search (scan + exact refine, top-10) on each kernel, a
    whole-image query, the exact-copy case, and the reference library's method (on a subset,
    scaled); the top-10 checked against float64. Otherwise the synthetic 7×7×512 benchmark
    over --sizes."""
    if shapes or cache:
        from ..bench import parse_shape, run_layers

        shape_list = [s.strip() for s in shapes.split(",") if s.strip()] if shapes else []
        for s in shape_list:
            parse_shape(s)
        res = run_layers(cache=str(cache) if cache else None, layers=list(layers) or None,
                         shapes=shape_list, n=n, vary=vary, copies=copies,
                         queries=_ints(queries, "queries"), rounds=repeat,
                         reference=not no_reference, workdir=workdir,
                         out=str(out) if out else None, threads=threads, log=err)
        click.echo(res["markdown"])
        return
    from ..bench import run_bench

    res = run_bench(_ints(sizes, "sizes"), repeat=repeat, reference=not no_reference,
                    disk=not no_disk, threads=threads, out=str(out) if out else None,
                    workdir=str(workdir) if workdir else None, log=err)
    click.echo(res["markdown"])
