"""``vfsearch index``, ``layers`` and ``info``: build a cache, list a model's layers, describe a
cache."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import echo_json, err


@click.command("index")
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Cache directory.")
@click.option("--model", "-m", default=None, help="Model name (default: efficientnet-lite0).")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Weights file (.pth, .bin, .safetensors) for torchvision:/timm: models.")
@click.option("--input-size", default=None, type=click.IntRange(8, 4096),
              help="Model input side in pixels (default: the model's; a transformer's must be a "
                   "multiple of its patch size).")
@click.option("--layer", "-l", "layers", multiple=True, help="Layer(s) to cache (repeatable).")
@click.option("--dtype", type=click.Choice(["int8", "f16", "f32"]), default="int8",
              show_default=True,
              help="Feature storage; int8 = uint8 for non-negative layers, int8 for signed ones.")
@click.option("--refine", type=click.Choice(["f32", "f16", "none"]), default="f32",
              show_default=True,
              help="Higher-precision copy kept with int8 so search results are exact.")
@click.option("--mode", type=click.Choice(["crop", "squash", "full", "whole"]), default="crop",
              show_default=True,
              help="crop = the model's centre crop; squash = the whole image resized to a square "
                   "(keeps borders, not the aspect; 'whole' is its old name); full = the whole "
                   "image at the crop's scale with its aspect kept (every pixel searchable; "
                   "about 2.3x the disk and 3x the search time of crop).")
@click.option("--image-root", type=click.Path(path_type=Path), default=None,
              help="Store paths relative to this folder (default: the source folder).")
@click.option("--label-from", type=click.Choice(["parent", "none"]), default="parent",
              show_default=True)
@click.option("--label-pattern", default=None,
              help=r"Regex on the file name giving the label, e.g. '^n\d+_(?P<label>.+)\.\w+$'.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 4096),
              help="Images per forward pass (default: 32; on CUDA, sized to the card).")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--chunk", default=256, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Images per Zarr chunk (the unit of resume).")
@click.option("--compression", type=click.Choice(["zstd", "lz4", "none"]), default="zstd",
              show_default=True)
@click.option("--max-pixels", default=100_000_000, show_default=True, type=int,
              help="Refuse images with more pixels (decompression bombs).")
@click.option("--scheduler", default=None,
              help="Dask: local:N (N worker processes) or a scheduler address; workers write "
                   "chunks.")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch threads for the forward pass (default: torch's).")
@click.option("--engine", type=click.Choice(["auto", "eager", "torch", "openvino"]),
              default="auto", show_default=True,
              help="How the model runs: auto = the fastest that matches eager torch (OpenVINO "
                   "when installed, exported once and reused); eager = plain torch.")
@click.option("--eager", "eager_flag", is_flag=True, help="Same as --engine eager.")
@click.option("--draft", is_flag=True,
              help="Decode JPEGs much larger than the model input at 1/2-1/8 scale (faster; "
                   "features change slightly).")
@click.option("--quiet", "-q", is_flag=True)
def index_cmd(images, out, model, weights, input_size, layers, dtype, refine, mode, image_root,
              label_from, label_pattern, batch_size, workers, device, chunk, compression,
              max_pixels, scheduler, threads, engine, eager_flag, draft, quiet):
    """Extract features of IMAGES (folder, .txt list or .csv) into a resumable cache."""
    from .. import index
    from ..models import DEFAULT_MODEL

    rep = index(
        images, out, model=model or DEFAULT_MODEL, weights=weights, layers=list(layers) or None,
        dtype=dtype, refine=refine, mode=mode, image_root=image_root,
        label_from=None if label_from == "none" else label_from, label_pattern=label_pattern,
        batch_size=batch_size, workers=workers, device=device, chunk=chunk,
        compression=compression, max_pixels=max_pixels, progress=not quiet,
        log=None if quiet else index_log, scheduler=scheduler, threads=threads,
        engine="eager" if eager_flag else engine, draft=draft, input_size=input_size,
    )
    c = rep.cache
    ips = f"{rep.images_per_second:.1f} images/s" if rep.indexed else "nothing to do"
    click.echo(f"indexed {rep.indexed} images in {rep.seconds:.1f} s ({ips}); cache {c.path} holds "
               f"{int(c.valid.sum())} images, {c.info()['bytes_on_disk'] / 1e6:.1f} MB")
    if rep.indexed and rep.engine:
        st = rep.stage_images_per_second()
        click.echo(f"  engine {rep.engine}: decode {st['decode']:.1f} images/s per process, "
                   f"forward {st['forward']:.1f} images/s, write {st['write']:.1f} images/s"
                   + (f"; waited {rep.wait_seconds:.1f} s for decoding" if rep.wait_seconds >= 0.1
                      else "")
                   + (f"; first export {rep.export_seconds:.1f} s" if rep.export_seconds else ""))
    if rep.added or rep.reindexed:
        click.echo(f"  added {rep.added}, re-indexed {rep.reindexed} changed files")
    if rep.skipped:
        click.echo(f"  skipped {len(rep.skipped)} unreadable file(s):")
        for p, why in rep.skipped[:20]:
            click.echo(f"    {p}: {why}")
        if len(rep.skipped) > 20:
            click.echo(f"    … and {len(rep.skipped) - 20} more (vfsearch info {c.path} --skipped)")


def index_log(msg: str) -> None:
    """Where ``index`` says what it is about to do (stderr, as ``vfsearch: …``)."""
    err(f"vfsearch: {msg}")


@click.command("layers")
@click.argument("model", default="efficientnet-lite0")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--input-size", default=None, type=click.IntRange(8, 4096),
              help="Model input side in pixels (default: the model's).")
@click.option("--all", "show_all", is_flag=True,
              help="Every module whose output is a feature map (4-D, or tokens on the grid).")
@click.option("--json", "as_json", is_flag=True)
def layers_cmd(model, weights, input_size, show_all, as_json):
    """List hookable layers of MODEL with channels, feature grid, stride, sign and, for a
    transformer's token layers, the prefix tokens left out (class token, registers)."""
    from ..models import list_layers, load_model

    lm = load_model(model, weights, input_size)
    infos = (list_layers(lm.module, lm.transform, lm.default_layer, None) if show_all
             else lm.layers())
    if as_json:
        echo_json([i.__dict__ for i in infos])
        return
    t = lm.transform
    click.echo(f"{lm.name}  input {t.size}×{t.size} (resize {t.resize}, {t.interpolation})  "
               f"weights {lm.weights_hash}")
    tokens = any(i.layout != "nchw" for i in infos)
    click.echo(f"{'layer':<28} {'channels':>8} {'grid':>9} {'stride':>7}  sign"
               + ("  layout" if tokens else ""))
    for i in infos:
        mark = "  ← default" if i.default else ""
        sign = "≥0" if i.nonnegative else "± "
        extra = ""
        if tokens:
            extra = f"  {i.layout}" + (f" (dropped {i.dropped})" if i.dropped else "")
        click.echo(f"{i.name:<28} {i.channels:>8} {i.grid[0]:>4}×{i.grid[1]:<4} {i.stride:>7g}  "
                   f"{sign}{extra}{mark}")


@click.command("info")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--skipped", is_flag=True, help="List every skipped file with its reason.")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(cache, skipped, as_json):
    """Describe a cache: model, layers, counts, size, skipped files."""
    from .. import open_cache

    c = open_cache(cache)
    d = c.info()
    if skipped:
        d["skipped_files"] = [{"path": p, "reason": r} for p, r in c.skipped()]
    if as_json:
        echo_json(d)
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


@click.command("upgrade")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True)
def upgrade_cmd(cache, quiet):
    """Bring a cache written by an older vfsearch to this version's format, in place.

    Adds what the older format lacks (e.g. pooled vectors for global search) chunk by chunk;
    an interrupted upgrade resumes where it stopped.
    """
    from ..cache import FORMAT_VERSION, open_cache, upgrade

    before = open_cache(cache).format_version

    def progress(done, total):
        if not quiet:
            err(f"  {done}/{total} chunks")

    added = upgrade(cache, progress=progress)
    if added:
        click.echo(f"upgraded {cache} from format {before} to {FORMAT_VERSION}: added "
                   + ", ".join(added))
    else:
        click.echo(f"{cache} is already at format {FORMAT_VERSION}: nothing to do")
