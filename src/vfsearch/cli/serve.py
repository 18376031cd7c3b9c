"""``vfsearch serve`` and ``demo``: the web app on caches, or on the embedded sample photos."""

from __future__ import annotations

from pathlib import Path

import click

from .index import index_log


@click.command("serve")
@click.argument("caches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--token", default=None, help="Access token (generated when --host is not loopback).")
@click.option("--open/--no-open", "open_browser", default=False, help="Open a browser tab.")
@click.option("--image-root", type=click.Path(path_type=Path), default=None,
              help="Re-point the image root of the (single) cache.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer to this Host name (a reverse proxy's; '*.example.org' or '*' "
                   "for any); repeatable. Loopback names and --host always work.")
def serve_cmd(caches, host, port, token, open_browser, image_root, allow_hosts):
    """Open the web app on one or more caches."""
    from ..server import serve

    serve(list(caches), host=host, port=port, token=token, open_browser=open_browser,
          image_root=image_root, allow_hosts=list(allow_hosts))


@click.command("demo")
@click.option("--dir", "workdir", default=".vfsearch-demo", show_default=True,
              type=click.Path(path_type=Path), help="Where the sample images and cache go.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--open/--no-open", "open_browser", default=True)
@click.option("--no-serve", is_flag=True, help="Only build the sample images and the cache.")
def demo_cmd(workdir, port, open_browser, no_serve):
    """Index the embedded sample photos with the default model and open the app."""
    from .. import index
    from ..datasets import sample_images
    from ..models import DEFAULT_MODEL, load_model

    images = sample_images(workdir / "images")
    lm = load_model(DEFAULT_MODEL)
    layers = [lm.default_layer] + [x for x in ("blocks.15", "head") if x != lm.default_layer]
    rep = index(images, workdir / "cache", model=lm, layers=layers, log=index_log)
    click.echo(f"cache ready: {rep.cache.path} ({int(rep.cache.valid.sum())} images, "
               f"layers {', '.join(layers)})")
    from ..embed import build_atlas, compute_map, load_map

    m = load_map(rep.cache, lm.default_layer)
    if m is None or m.stale or not m.attrs.get("atlas"):
        m = compute_map(rep.cache, lm.default_layer, progress=False)
        build_atlas(rep.cache, m, progress=False)
        click.echo(f"map ready: {m.n} images on a {m.side}×{m.side} grid ({lm.default_layer})")
    if not no_serve:
        from ..server import serve

        serve([workdir / "cache"], port=port, open_browser=open_browser)
