"""``vfsearch map``: every image of a cache on a similarity grid (stored in the cache)."""

from __future__ import annotations

from pathlib import Path

import click

# the embedding methods of vfsearch.embed (kept here so that ``--help`` imports nothing heavy)
METHODS = ("tsne", "umap")


@click.command("map")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--layer", "-l", default=None, help="Layer (default: the cache's first layer).")
@click.option("--method", type=click.Choice(list(METHODS)), default="tsne", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--perplexity", default=30.0, show_default=True, type=float, help="t-SNE.")
@click.option("--n-neighbors", default=15, show_default=True, type=int, help="UMAP.")
@click.option("--jobs", default=None, type=click.IntRange(1, 256),
              help="t-SNE threads (default: 1 below 5000 images, else up to 8).")
@click.option("--tile", default=32, show_default=True, type=click.IntRange(4, 256),
              help="Atlas tile size (px).")
@click.option("--no-atlas", is_flag=True, help="Skip the thumbnail atlas.")
@click.option("--quiet", "-q", is_flag=True)
def map_cmd(cache, layer, method, seed, perplexity, n_neighbors, jobs, tile, no_atlas, quiet):
    """Lay out every image of CACHE on a similarity grid (stored in the cache)."""
    import time

    from .. import open_cache
    from ..embed import build_atlas, compute_map

    c = open_cache(cache)
    res = compute_map(c, layer=layer, method=method, seed=seed, progress=not quiet,
                      perplexity=perplexity, n_neighbors=n_neighbors, n_jobs=jobs)
    a = res.attrs
    tm = a["timings"]
    q = a["knn_preservation"]
    click.echo(f"map of {a['n']} images on {res.layer} ({method}, seed {seed}): "
               f"{res.side}×{res.side} grid ({a['gridify']}) in {a['seconds']:.1f} s "
               f"(pool {tm['pool']:.1f}, embed {tm['embed']:.1f}, gridify {tm['gridify']:.1f})")
    click.echo(f"  10-NN kept: embedding {q['embedding']:.3f}, grid {q['grid']:.3f} "
               f"(random ≈ {10 / max(1, a['n'] - 1):.4f}); stored in {c.path}")
    if not no_atlas:
        t = time.perf_counter()
        pages = build_atlas(c, res, tile=tile, progress=not quiet)
        click.echo(f"  atlas: {len(pages)} page(s), {sum(len(p) for p in pages) / 1e6:.2f} MB, "
                   f"{time.perf_counter() - t:.1f} s")
