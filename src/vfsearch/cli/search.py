"""``vfsearch search``: the K most similar regions to a query region."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import echo_json, err, parse_box, parse_bytes, write_csv


@click.command("search")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--image", "-i", default=None,
              help="Dataset image id, or an image file (or give --concept).")
@click.option("--mask", type=click.Path(path_type=Path), default=None,
              help="Mask image at the query image's size (alpha or gray = weight).")
@click.option("--box", default=None, help="x0,y0,x1,y1 in the query image's pixels.")
@click.option("--whole", is_flag=True,
              help="The paper's rigid whole-image query (cell (i, j) against cell (i, j)).")
@click.option("--global", "global_", is_flag=True,
              help="Similar images: cosine of mean-pooled features (content anywhere).")
@click.option("--concept", type=int, default=None,
              help="Query a stored concept (vfsearch concepts) instead of an image region.")
@click.option("--concepts-method", type=click.Choice(["dictionary", "saliency"]),
              default="dictionary", show_default=True,
              help="Which stored concepts --concept names.")
@click.option("--layer", "-l", default=None, help="Layer (default: the cache's first layer).")
@click.option("--k", "-k", default=10, show_default=True, type=click.IntRange(1, 100000))
@click.option("--include-self", is_flag=True, help="Keep the query image in the results.")
@click.option("--dedup", type=click.FloatRange(0, 1), default=None,
              help="Drop near-duplicates (pooled-feature cosine ≥ this).")
@click.option("--memory", default=None, help="Stream the cache within this RAM budget (e.g. 2G).")
@click.option("--image-root", type=click.Path(path_type=Path), default=None)
@click.option("--scheduler", default=None, help="Dask: local:N or a scheduler address.")
@click.option("--backend", default="auto", show_default=True,
              help="auto | avx512 | avx2 | generic | numpy | torch | torch:cuda")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "csv_out", default=None, type=click.Path(path_type=Path),
              help="Write the results table here ('-' for stdout).")
def search_cmd(cache, image, mask, box, whole, global_, concept, concepts_method, layer, k,
               include_self, dedup, memory, image_root, scheduler, backend, as_json, csv_out):
    """Find the K most similar regions to a query region (or, with --global, similar images)."""
    import time

    from .. import open_cache
    from ..engine import search

    c = open_cache(cache, image_root=image_root)
    if concept is not None:
        from ..concepts import concept_query
        from ..errors import BadQuery

        if image is not None or mask or box or whole or global_:
            raise BadQuery("a concept query takes no image, mask, box, whole or global mode",
                           param="concept")
        query = concept_query(c, concept, layer=layer, method=concepts_method)
        image = f"concept {concept} ({concepts_method})"
    elif image is None:
        raise click.UsageError("give --image (a dataset id or an image file) or --concept")
    else:
        query = int(image) if image.isdigit() else image
    t0 = time.perf_counter()
    res = search(c, query, mask=str(mask) if mask else None, box=parse_box(box), whole=whole,
                 mode="global" if global_ else None, layer=layer, k=k,
                 exclude_self=not include_self, dedup=dedup,
                 memory=parse_bytes(memory) if memory else "auto", scheduler=scheduler,
                 backend=backend)
    dt = time.perf_counter() - t0
    for note in res.query.notes:
        err(f"vfsearch: note: {note}")
    if csv_out is not None:
        write_csv(res.rows(), csv_out)
        if str(csv_out) == "-":
            return
    if as_json:
        d = res.to_dict()
        d["seconds"] = round(dt, 4)
        echo_json(d)
        return
    q = res.query
    what = (f"the pooled features of {q.layer}" if q.mode == "global" else
            f"its direction as one cell of {q.layer}" if concept is not None else
            f"box {tuple(round(v) for v in q.box)} → {q.n_cells} cells on {q.layer} "
            f"({c.grid(q.layer)[0]}×{c.grid(q.layer)[1]})")
    click.echo(f"query {image} ({q.mode}): {what}; {int(c.valid.sum())} images in "
               f"{dt * 1000:.0f} ms")
    click.echo(f"{'rank':>4} {'id':>7} {'score':>7}  {'label':<20} {'box (x0,y0,x1,y1)':<24} path")
    for m in res:
        bx = ",".join(str(round(v)) for v in m.box)
        click.echo(f"{m.rank:>4} {m.id:>7} {m.score:>7.4f}  {m.label[:20]:<20} {bx:<24} {m.path}")
