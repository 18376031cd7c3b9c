"""Command line: a thin shell over the library. Every :class:`VfsError` becomes one line on
stderr and the error's exit code; no tracebacks for user mistakes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import VfsError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


_LAZY = {"eval": ("vfsearch.evaluate", "eval_cmd"), "map": ("vfsearch.embed", "map_cmd")}


class _Group(click.Group):
    """Maps errors once; ``eval`` and ``map`` are imported only when used (fast start-up)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx, name):
        if name in _LAZY and name not in self.commands:
            import importlib

            mod, attr = _LAZY[name]
            self.add_command(getattr(importlib.import_module(mod), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VfsError as e:
            click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="vfsearch")
def main():
    """vfsearch: brush a region of an image, find the most similar regions in a whole dataset."""


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@main.command("index")
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Cache directory.")
@click.option("--model", "-m", default=None, help="Model name (default: efficientnet-lite0).")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Weights file for torchvision:/timm: models.")
@click.option("--layer", "-l", "layers", multiple=True, help="Layer(s) to cache (repeatable).")
@click.option("--dtype", type=click.Choice(["int8", "f16", "f32"]), default="int8", show_default=True,
              help="Feature storage; int8 = uint8 for non-negative layers, int8 for signed ones.")
@click.option("--refine", type=click.Choice(["f32", "f16", "none"]), default="f32", show_default=True,
              help="Higher-precision copy kept with int8 so search results are exact.")
@click.option("--mode", type=click.Choice(["crop", "whole"]), default="crop", show_default=True,
              help="crop = the model's centre crop; whole = resize the whole image (keeps borders).")
@click.option("--image-root", type=click.Path(path_type=Path), default=None,
              help="Store paths relative to this folder (default: the source folder).")
@click.option("--label-from", type=click.Choice(["parent", "none"]), default="parent", show_default=True)
@click.option("--label-pattern", default=None,
              help=r"Regex on the file name giving the label, e.g. '^n\d+_(?P<label>.+)\.\w+$'.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--chunk", default=256, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Images per Zarr chunk (the unit of resume).")
@click.option("--compression", type=click.Choice(["zstd", "lz4", "none"]), default="zstd",
              show_default=True)
@click.option("--max-pixels", default=100_000_000, show_default=True, type=int,
              help="Refuse images with more pixels (decompression bombs).")
@click.option("--scheduler", default=None,
              help="Dask: local:N (N worker processes) or a scheduler address; workers write chunks.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch threads for the forward pass (default: torch's).")
@click.option("--quiet", "-q", is_flag=True)
def index_cmd(images, out, model, weights, layers, dtype, refine, mode, image_root, label_from,
              label_pattern, batch_size, workers, device, chunk, compression, max_pixels, scheduler,
              threads, quiet):
    """Extract features of IMAGES (folder, .txt list or .csv) into a resumable cache."""
    from .extract import index
    from .models import DEFAULT_MODEL

    rep = index(
        images, out, model=model or DEFAULT_MODEL, weights=weights, layers=list(layers) or None,
        dtype=dtype, refine=refine, mode=mode, image_root=image_root,
        label_from=None if label_from == "none" else label_from, label_pattern=label_pattern,
        batch_size=batch_size, workers=workers, device=device, chunk=chunk,
        compression=compression, max_pixels=max_pixels, progress=not quiet, scheduler=scheduler,
        threads=threads,
    )
    c = rep.cache
    ips = f"{rep.images_per_second:.1f} images/s" if rep.indexed else "nothing to do"
    click.echo(f"indexed {rep.indexed} images in {rep.seconds:.1f} s ({ips}); cache {c.path} holds "
               f"{int(c.valid.sum())} images, {c.info()['bytes_on_disk'] / 1e6:.1f} MB")
    if rep.added or rep.reindexed:
        click.echo(f"  added {rep.added}, re-indexed {rep.reindexed} changed files")
    if rep.skipped:
        click.echo(f"  skipped {len(rep.skipped)} unreadable file(s):")
        for p, why in rep.skipped[:20]:
            click.echo(f"    {p}: {why}")
        if len(rep.skipped) > 20:
            click.echo(f"    … and {len(rep.skipped) - 20} more (vfsearch info {c.path} --skipped)")


@main.command("layers")
@click.argument("model", default="efficientnet-lite0")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Every module with a 4-D output.")
@click.option("--json", "as_json", is_flag=True)
def layers_cmd(model, weights, show_all, as_json):
    """List hookable layers of MODEL with channels, feature grid and stride."""
    import contextlib
    import io

    from .models import list_layers, load_model

    with contextlib.redirect_stdout(io.StringIO()):
        lm = load_model(model, weights)
    infos = list_layers(lm.module, lm.transform, lm.default_layer, None) if show_all else lm.layers()
    if as_json:
        _echo_json([i.__dict__ for i in infos])
        return
    click.echo(f"{lm.name}  input {lm.transform.size}×{lm.transform.size}  weights {lm.weights_hash}")
    click.echo(f"{'layer':<28} {'channels':>8} {'grid':>9} {'stride':>7}  sign")
    for i in infos:
        mark = "  ← default" if i.default else ""
        sign = "≥0" if i.nonnegative else "±"
        click.echo(f"{i.name:<28} {i.channels:>8} {i.grid[0]:>4}×{i.grid[1]:<4} {i.stride:>7g}  "
                   f"{sign}{mark}")


@main.command("info")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--skipped", is_flag=True, help="List every skipped file with its reason.")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(cache, skipped, as_json):
    """Describe a cache: model, layers, counts, size, skipped files."""
    from .cache import open_cache

    c = open_cache(cache)
    d = c.info()
    if skipped:
        d["skipped_files"] = [{"path": p, "reason": r} for p, r in c.skipped()]
    if as_json:
        _echo_json(d)
        return
    click.echo(f"cache      {d['path']}")
    click.echo(f"model      {d['model']} (weights {d['weights_hash']})")
    t = d["transform"]
    click.echo(f"transform  {t['mode']} {t['size']}px (resize {t['resize']}, {t['interpolation']})")
    click.echo(f"images     {d['indexed']} indexed, {d['skipped']} skipped, {d['pending']} pending "
               f"(root {d['image_root']})")
    click.echo(f"storage    {d['dtype']} (refine {d['refine']}), {d['compression']}, "
               f"{d['bytes_on_disk'] / 1e6:.1f} MB on disk")
    for name, li in d["layers"].items():
        click.echo(f"layer      {name}: {li['grid'][0]}×{li['grid'][1]}×{li['channels']}, "
                   f"stride {li['stride']:g}, {'non-negative' if li['nonnegative'] else 'signed'}")
    if d["meta_columns"]:
        click.echo(f"metadata   {', '.join(d['meta_columns'])}")
    if skipped:
        for s in d["skipped_files"]:
            click.echo(f"skipped    {s['path']}: {s['reason']}")


def _parse_box(text: str | None):
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        from .errors import BadMask

        raise BadMask(f"--box takes x0,y0,x1,y1 in image pixels, got {text!r}")
    return vals


@main.command("search")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--image", "-i", required=True, help="Dataset image id, or an image file.")
@click.option("--mask", type=click.Path(path_type=Path), default=None,
              help="Mask image at the query image's size (alpha or gray = weight).")
@click.option("--box", default=None, help="x0,y0,x1,y1 in the query image's pixels.")
@click.option("--whole", is_flag=True, help="Query with the whole image.")
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
def search_cmd(cache, image, mask, box, whole, layer, k, include_self, dedup, memory, image_root,
               scheduler, backend, as_json):
    """Find the K most similar regions to a query region."""
    import time

    from .cache import open_cache
    from .engine import search

    c = open_cache(cache, image_root=image_root)
    query = int(image) if image.isdigit() else image
    t0 = time.perf_counter()
    res = search(c, query, mask=str(mask) if mask else None, box=_parse_box(box), whole=whole,
                 layer=layer, k=k, exclude_self=not include_self, dedup=dedup,
                 memory=_parse_bytes(memory) if memory else "auto", scheduler=scheduler,
                 backend=backend)
    dt = time.perf_counter() - t0
    if as_json:
        d = res.to_dict()
        d["seconds"] = round(dt, 4)
        _echo_json(d)
        return
    q = res.query
    click.echo(f"query {image} box {tuple(round(v) for v in q.box)} → {q.n_cells} cells on "
               f"{q.layer} ({c.grid(q.layer)[0]}×{c.grid(q.layer)[1]}); {int(c.valid.sum())} images "
               f"in {dt * 1000:.0f} ms")
    click.echo(f"{'rank':>4} {'id':>7} {'score':>7}  {'label':<20} {'box (x0,y0,x1,y1)':<24} path")
    for m in res:
        bx = ",".join(str(round(v)) for v in m.box)
        click.echo(f"{m.rank + 1:>4} {m.id:>7} {m.score:>7.4f}  {m.label[:20]:<20} {bx:<24} {m.path}")


@main.command("explain")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--image", "-i", required=True, help="Query: dataset image id or image file.")
@click.option("--mask", type=click.Path(path_type=Path), default=None)
@click.option("--box", default=None, help="x0,y0,x1,y1 in the query image's pixels.")
@click.option("--whole", is_flag=True)
@click.option("--layer", "-l", default=None)
@click.option("--result", "-r", "result_id", required=True, type=int, help="Result image id to explain.")
@click.option("--method", type=click.Choice(["exact", "feature", "occlusion", "rise"]), default="exact",
              show_default=True)
@click.option("--mode", type=click.Choice(["fixed", "both"]), default="fixed", show_default=True,
              help="occlusion/rise: saliency of the result only, or of both images.")
@click.option("--n-masks", default=256, show_default=True, type=int, help="rise: number of masks.")
@click.option("--p", "keep_p", default=0.5, show_default=True, type=float, help="rise: keep probability.")
@click.option("--cells", default=7, show_default=True, type=int, help="rise: mask grid cells.")
@click.option("--window", default=56, show_default=True, type=int, help="occlusion: window (input px).")
@click.option("--stride", default=28, show_default=True, type=int, help="occlusion: stride (input px).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "-o", default=None, type=click.Path(path_type=Path), help="Write PNG overlays + JSON here.")
def explain_cmd(cache, image, mask, box, whole, layer, result_id, method, mode, n_masks, keep_p, cells,
                window, stride, seed, out):
    """Explain why RESULT matches the query region (exact shares, occlusion, RISE)."""
    from .cache import open_cache
    from .explain import explain, render_overlay
    from .images import load_image
    from .engine import make_query

    c = open_cache(cache)
    query = int(image) if image.isdigit() else image
    q = make_query(c, query, mask=str(mask) if mask else None, box=_parse_box(box), whole=whole, layer=layer)
    params = {}
    if method == "rise":
        params = dict(n_masks=n_masks, p=keep_p, cells=cells, seed=seed, mode=mode)
    elif method == "occlusion":
        params = dict(window=window, stride=stride, mode=mode)
    if mode == "both" and q.source_id is None:
        params["query_image"] = load_image(image)
    ex = explain(c, q, result_id, method, **params)
    click.echo(f"{method}: score {ex.score:.4f} at offset {ex.offset} in {ex.seconds:.2f} s"
               + (f"; insertion AUC {ex.insertion_auc:.3f}, deletion AUC {ex.deletion_auc:.3f}"
                  if ex.insertion_auc is not None else ""))
    if method == "exact":
        click.echo(f"  cell shares sum to {sum(s['share'] for s in ex.extra['cell_shares']):.6f}")
        for ch in ex.extra["top_channels"][:5]:
            click.echo(f"  channel {ch['channel']:>4}: share {ch['share']:+.4f}; top patches in images "
                       + ", ".join(str(p["id"]) for p in ch["patches"]))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "explanation.json").write_text(json.dumps(ex.to_dict(), indent=1))
        rimg = load_image(c.thumbnail(result_id)).resize(c.image_size(result_id))
        geom = c.transform.geometry(*c.image_size(result_id))
        render_overlay(rimg, ex.saliency, geom).save(out / f"result_{result_id}_{method}.png")
        if ex.query_saliency is not None:
            qimg = load_image(c.thumbnail(q.source_id)).resize(q.image_size) if q.source_id is not None \
                else load_image(image)
            render_overlay(qimg, ex.query_saliency, q.geometry).save(out / f"query_{method}.png")
        click.echo(f"  wrote {out}")


@main.command("serve")
@click.argument("caches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--token", default=None, help="Access token (generated when --host is not loopback).")
@click.option("--open/--no-open", "open_browser", default=False, help="Open a browser tab.")
@click.option("--image-root", type=click.Path(path_type=Path), default=None,
              help="Re-point the image root of the (single) cache.")
def serve_cmd(caches, host, port, token, open_browser, image_root):
    """Open the web app on one or more caches."""
    from .server import serve

    serve(list(caches), host=host, port=port, token=token, open_browser=open_browser,
          image_root=image_root)


@main.command("demo")
@click.option("--dir", "workdir", default=".vfsearch-demo", show_default=True,
              type=click.Path(path_type=Path), help="Where the sample images and cache go.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--open/--no-open", "open_browser", default=True)
@click.option("--no-serve", is_flag=True, help="Only build the sample images and the cache.")
def demo_cmd(workdir, port, open_browser, no_serve):
    """Index the embedded sample photos with the default model and open the app."""
    from .datasets import sample_images
    from .extract import index
    from .models import DEFAULT_MODEL, load_model

    images = sample_images(workdir / "images")
    lm = load_model(DEFAULT_MODEL)
    layers = [lm.default_layer] + [x for x in ("blocks.15", "head") if x != lm.default_layer]
    rep = index(images, workdir / "cache", model=lm, layers=layers)
    click.echo(f"cache ready: {rep.cache.path} ({int(rep.cache.valid.sum())} images, "
               f"layers {', '.join(layers)})")
    if not no_serve:
        from .server import serve

        serve([workdir / "cache"], port=port, open_browser=open_browser)


@main.command("bench")
@click.option("--sizes", default="25000,50000,75000,100000", show_default=True,
              help="Comma-separated N (images of 7×7×512).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--no-reference", is_flag=True, help="Skip the (slow) paper's-method timing.")
@click.option("--no-disk", is_flag=True, help="Skip the streamed-from-disk timing.")
@click.option("--threads", default=None, type=int)
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Write bench.json/bench.md here.")
@click.option("--workdir", default=None, type=click.Path(path_type=Path))
def bench_cmd(sizes, repeat, no_reference, no_disk, threads, out, workdir):
    """Time the search kernel against the paper's method and the memory floor."""
    from .bench import run_bench

    res = run_bench([int(s) for s in sizes.split(",") if s.strip()], repeat=repeat,
                    reference=not no_reference, disk=not no_disk, threads=threads,
                    out=str(out) if out else None, workdir=str(workdir) if workdir else None,
                    log=lambda m: click.echo(m, err=True))
    click.echo(res["markdown"])


def _parse_bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        from .errors import VfsError

        raise VfsError(f"cannot read a size from {text!r} (use e.g. 512M or 2G)") from None


if __name__ == "__main__":  # pragma: no cover
    main()
