"""``vfsearch bench``: the search kernel against the paper's method and the memory floor."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadParameter
from ._util import err


@click.command("bench")
@click.option("--sizes", default="25000,50000,75000,100000", show_default=True,
              help="Comma-separated N (images of 7×7×512).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--no-reference", is_flag=True, help="Skip the (slow) paper's-method timing.")
@click.option("--no-disk", is_flag=True, help="Skip the streamed-from-disk timing.")
@click.option("--threads", default=None, type=int)
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Write bench.json/bench.md here.")
@click.option("--workdir", default=None, type=click.Path(path_type=Path))
def bench_cmd(sizes, repeat, no_reference, no_disk, threads, out, workdir):
    """Time the search kernel against the paper's method and the memory floor."""
    from ..bench import run_bench

    try:
        ns = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise BadParameter(f"sizes are whole numbers separated by commas, got {sizes!r}",
                           param="sizes") from None
    if not ns:
        raise BadParameter("give at least one size", param="sizes")
    res = run_bench(ns, repeat=repeat, reference=not no_reference, disk=not no_disk,
                    threads=threads, out=str(out) if out else None,
                    workdir=str(workdir) if workdir else None, log=err)
    click.echo(res["markdown"])
