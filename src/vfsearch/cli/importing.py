"""``vfsearch import-vfs``: bring a cache of the reference library (Ulrich & Fong's
VisualFeatureSearch) into vfsearch."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import err


@click.command("import-vfs")
@click.argument("zarr_path", metavar="ZARR", type=click.Path(path_type=Path))
@click.option("--array", "arrays", multiple=True, required=True,
              help="Array of the Zarr v2 group to import, (N, C, H, W) floats (repeatable).")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="The images in the cache's order: a text list, a CSV (path,label,…) or a "
                   "folder in ImageFolder order.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="New cache.")
@click.option("--model", "-m", default=None,
              help="The model the features came from (its transform; external queries work).")
@click.option("--transform", default=None,
              help="Instead of --model: crop:RESIZE:SIZE or squash:SIZE (ImageNet mean/std).")
@click.option("--layer", "-l", "layers", multiple=True,
              help="Name for each array's layer (default: the array names).")
@click.option("--dtype", type=click.Choice(["int8", "f16", "f32"]), default="int8",
              show_default=True)
@click.option("--refine", type=click.Choice(["f32", "f16", "none"]), default="f32",
              show_default=True)
@click.option("--compression", type=click.Choice(["zstd", "lz4", "none"]), default="zstd",
              show_default=True)
@click.option("--chunk", default=500, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--workers", default=None, type=click.IntRange(0, 64),
              help="Processes decoding images for thumbnails.")
@click.option("--quiet", "-q", is_flag=True)
def import_cmd(zarr_path, arrays, images, out, model, transform, layers, dtype, refine,
               compression, chunk, workers, quiet):
    """Import a reference-library cache ZARR (one (N, C, H, W) array per layer) for IMAGES."""
    from ..importing import import_reference

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(unit="chunk", desc="importing", dynamic_ncols=True)

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        rep = import_reference(zarr_path, images, out, arrays=list(arrays),
                               layers=list(layers) or None, model=model, transform=transform,
                               dtype=dtype, refine=refine, compression=compression, chunk=chunk,
                               workers=workers, progress=progress,
                               log=None if quiet else (lambda m: err(f"vfsearch: {m}")))
    finally:
        if bar is not None:
            bar.close()
    c = rep.cache
    click.echo(f"imported {rep.imported} images in {rep.seconds:.1f} s "
               f"({rep.images_per_second:.0f} images/s); cache {c.path}: layers "
               f"{', '.join(c.layers)}" + (f"; {rep.skipped} unreadable image(s) skipped"
                                          if rep.skipped else ""))
