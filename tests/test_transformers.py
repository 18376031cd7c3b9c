"""Vision transformers and channels-last backbones: token layers become feature grids (prefix
tokens dropped, patches on the grid), cached features equal timm's own ``forward_intermediates``,
a planted crop is found at its patch, other input sizes, weights from local files and the
Hugging Face cache (offline), token layers of a plain ``nn.Module``, clear errors.

Every model is a tiny configuration (depth 2, small width) with random weights (fixed seed),
registered in timm's registry under a test name and saved to a temporary file."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image
from torch import nn

from vfsearch import Transform, from_module, index, list_layers, load_model, search
from vfsearch.errors import BadParameter, UnknownModel, VfsError
from vfsearch.forward import Forward, relative_error
from vfsearch.models import _import_torchvision

try:
    _import_torchvision()  # timm imports torchvision
except ImportError:
    pass
timm = pytest.importorskip("timm")

from timm.models import register_model  # noqa: E402
from timm.models.swin_transformer import swin_tiny_patch4_window7_224  # noqa: E402
from timm.models.vision_transformer import (  # noqa: E402
    vit_small_patch14_reg4_dinov2,
    vit_small_patch16_224,
)

TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)
TINY_SWIN = dict(depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8))
REL = 1e-5


def _register():
    """Tiny versions of real architectures (their pretrained configs: DINOv2's 518 px, mean/std
    and crop fraction; ViT-S/16's; Swin-T's) under test names."""
    if timm.is_model("vfs_tiny_dinov2"):
        return

    @register_model
    def vfs_tiny_dinov2(pretrained=False, **kw):
        return vit_small_patch14_reg4_dinov2(pretrained=pretrained, **{**TINY_VIT, **kw})

    @register_model
    def vfs_tiny_vit(pretrained=False, **kw):
        return vit_small_patch16_224(pretrained=pretrained, **{**TINY_VIT, **kw})

    @register_model
    def vfs_tiny_swin(pretrained=False, **kw):
        return swin_tiny_patch4_window7_224(pretrained=pretrained, **{**TINY_SWIN, **kw})


_register()


def _reference(arch: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, **kw).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Each tiny model's random weights, saved in a different file format / wrapper."""
    d = tmp_path_factory.mktemp("weights")
    from safetensors.torch import save_file

    dino = _reference("vfs_tiny_dinov2")
    # a training checkpoint: a wrapper and DDP's "module." prefix
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           dino.state_dict().items()}}, d / "dino.pth")
    vit = _reference("vfs_tiny_vit", seed=1)
    save_file(vit.state_dict(), d / "vit.safetensors")
    swin = _reference("vfs_tiny_swin", seed=2)
    torch.save({"model": swin.state_dict()}, d / "swin.bin")
    return {"dino": (dino, str(d / "dino.pth")), "vit": (vit, str(d / "vit.safetensors")),
            "swin": (swin, str(d / "swin.bin"))}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("tf_imgs")
    for i in range(5):
        photo(300 + 20 * i, 260, seed=i).save(src / f"{i}.png")
    return src


def _inputs(folder, transform: Transform) -> torch.Tensor:
    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    return torch.stack([transform(Image.open(f).convert("RGB")) for f in files])


def _intermediates(ref: nn.Module, x: torch.Tensor, i: int) -> np.ndarray:
    with torch.inference_mode():
        out = ref.forward_intermediates(x, indices=[i], norm=False, intermediates_only=True)[0]
    return out.permute(0, 2, 3, 1).numpy()  # NCHW → the cache's NHWC


def _cached(cache, layer: str) -> np.ndarray:
    return np.stack([cache.features(i, layer) for i in range(len(cache))])


@pytest.mark.parametrize("which,arch,layer,block,grid,channels,stride,dropped", [
    ("dino", "vfs_tiny_dinov2", "blocks.1", 1, (37, 37), 64, 14.0, "1 class + 4 register tokens"),
    ("vit", "vfs_tiny_vit", "blocks.0", 0, (14, 14), 64, 16.0, "1 class token"),
    ("swin", "vfs_tiny_swin", "layers.2", 2, (14, 14), 128, 16.0, ""),
])
def test_cached_features_equal_timm_forward_intermediates(weights, folder, tmp_path, which, arch,
                                                          layer, block, grid, channels, stride,
                                                          dropped):
    ref, path = weights[which]
    lm = load_model(f"timm:{arch}", path)
    info = lm.layer(layer)
    assert (info.grid, info.channels, info.stride, info.dropped) == (grid, channels, stride,
                                                                     dropped)
    assert info.layout == ("nhwc" if which == "swin" else "tokens")
    c = index(folder, tmp_path / "c", model=lm, layers=[layer], dtype="f32", refine="none",
              engine="eager", workers=0, progress=False).cache
    li = c.layer_info(layer)
    assert (tuple(li["grid"]), li["channels"], li["stride"]) == (grid, channels, stride)
    assert li.get("dropped", "") == dropped
    got = _cached(c, layer)
    want = _intermediates(ref, _inputs(folder, c.transform), block)
    assert got.shape == (5, *grid, channels)
    assert relative_error(got, want) <= REL
    if which != "swin":  # no prefix token is left: the grid is the tokens after the prefix
        tokens = {}
        h = ref.blocks[block].register_forward_hook(lambda _m, _i, o: tokens.setdefault("t", o))
        with torch.inference_mode():
            ref(_inputs(folder, c.transform))
        h.remove()
        t = tokens["t"]
        p = ref.num_prefix_tokens
        assert t.shape[1] == p + grid[0] * grid[1]
        assert relative_error(got, t[:, p:].reshape(5, *grid, channels).numpy()) <= REL


def test_dinov2_default_layer_preprocessing_and_listing(weights):
    lm = load_model("timm:vfs_tiny_dinov2", weights["dino"][1])
    t = lm.transform
    # DINOv2's own pretrained config: 518 px, crop fraction 1.0, bicubic, ImageNet mean/std
    assert (t.size, t.resize, t.interpolation) == (518, 518, "bicubic")
    assert t.mean == pytest.approx((0.485, 0.456, 0.406)) and lm.multiple == 14
    names = [i.name for i in lm.layers()]
    assert names == ["patch_embed", "blocks.0", "blocks.1", "norm"]
    assert lm.default_layer == "norm"
    # --all: every module on the grid (attention maps and pooled outputs are not)
    every = {i.name: i for i in list_layers(lm.module, t)}
    assert every["blocks.0.attn.qkv"].channels == 192 and "blocks.0.attn.attn_drop" not in every
    assert every["patch_embed.proj"].layout == "nchw" and every["patch_embed"].dropped == ""


def _paste(dst: Image.Image, src: Image.Image, box, at) -> Image.Image:
    out = dst.copy()
    out.paste(src.crop(box), at)
    return out


def test_planted_crop_is_found_at_its_patch(weights, tmp_path):
    """A patch-aligned crop of image 0 pasted into image 6 at another place: the search of that
    region ranks image 6 first, at the pasted patch offset, with the pasted box."""
    lm = load_model("timm:vfs_tiny_dinov2", weights["dino"][1], input_size=224)
    assert lm.transform.resize == 224  # crop fraction 1.0: a 224 px image is the input itself
    src = tmp_path / "imgs"
    src.mkdir()
    imgs = [photo(224, 224, seed=10 + i) for i in range(10)]
    p = 14
    box = (3 * p, 2 * p, 6 * p, 5 * p)  # 3×3 patches at row 2, col 3
    imgs[6] = _paste(imgs[6], imgs[0], box, (9 * p, 10 * p))  # to row 10, col 9
    for i, im in enumerate(imgs):
        im.save(src / f"{i}.png")
    c = index(src, tmp_path / "c", model=lm, layers=["blocks.1"], workers=0,
              progress=False).cache
    assert c.grid("blocks.1") == (16, 16)
    r = search(c, 0, box=box, layer="blocks.1", k=3)
    top = r[0]
    assert top.id == 6 and top.offset == (10, 9)
    assert np.allclose(top.box, (9 * p, 10 * p, 12 * p, 13 * p), atol=1e-3)
    assert top.score > r[1].score + 0.05


def test_other_input_sizes_resample_position_embeddings_as_timm_does(weights, folder, tmp_path):
    ref, path = weights["dino"]
    dyn = _reference("vfs_tiny_dinov2", dynamic_img_size=True)
    dyn.load_state_dict(ref.state_dict())
    for size in (224, 280):
        lm = load_model("timm:vfs_tiny_dinov2", path, input_size=size)
        assert lm.layer("norm").grid == (size // 14, size // 14)
        assert lm.transform.size == size and lm.transform.resize == size
        x = _inputs(folder, lm.transform)
        got = Forward(lm.module, ["blocks.1"], size=size, engine="eager")(x)["blocks.1"]
        assert relative_error(got, _intermediates(dyn, x, 1)) <= REL
    # stored in the cache's transform; an external query image runs at that size
    c = index(folder, tmp_path / "c", model="timm:vfs_tiny_dinov2", weights=path,
              input_size=280, layers=["blocks.1"], workers=0, progress=False).cache
    assert c.transform.size == 280 and c.grid("blocks.1") == (20, 20)
    r = search(c, str(folder / "2.png"), whole=True, layer="blocks.1", k=1)
    assert r[0].id == 2 and r[0].score == pytest.approx(1.0, abs=1e-4)
    # the crop fraction comes from the pretrained config (ViT-S/16: 0.9; timm rounds down)
    vit = load_model("timm:vfs_tiny_vit", weights["vit"][1], input_size=320)
    assert (vit.transform.size, vit.transform.resize) == (320, 355)
    assert vit.layer("blocks.1").grid == (20, 20)


def test_a_cnn_at_a_larger_input():
    lm = load_model("efficientnet-lite0", input_size=320)
    assert (lm.transform.size, lm.transform.resize) == (320, 366)
    assert lm.layer("blocks.10").grid == (20, 20) and lm.default_layer == "blocks.10"


def test_full_mode_rounds_the_padded_input_to_whole_patches(weights):
    lm = load_model("timm:vfs_tiny_vit", weights["vit"][1])
    assert lm.transform.resize == 248  # 224 / 0.9, rounded down as timm does
    t = lm.transform_for("full")
    assert (t.resize, t.long) == (256, 512) and t.input_shape == (256, 512)
    x = torch.zeros(1, 3, *t.input_shape)
    out = Forward(lm.module, ["blocks.1"], size=t.input_shape, engine="eager")(x)["blocks.1"]
    assert out.shape == (1, 16, 32, 64)
    assert lm.transform_for("crop") == lm.transform


def test_full_mode_index_of_a_vit_equals_its_forward_per_image(weights, folder, tmp_path):
    """A ViT in index mode full: each image (landscape and portrait) at its own padded input,
    the tokens of its own patches stored (portraits transposed, padding zero), searchable."""
    imgs = tmp_path / "imgs"
    shutil.copytree(folder, imgs)
    photo(200, 330, seed=9).save(imgs / "9.png")  # a portrait
    path = weights["vit"][1]
    ref = _reference("vfs_tiny_vit", seed=1, dynamic_img_size=True)  # the same weights, any size
    lm = load_model("timm:vfs_tiny_vit", path)
    c = index(imgs, tmp_path / "c", model=lm, layers=["blocks.0"], mode="full", dtype="f32",
              refine="none", engine="eager", workers=0, progress=False).cache
    assert c.grid("blocks.0") == (16, 32) and c.transposed("blocks.0").sum() == 1
    for i in range(len(c)):
        img = Image.open(c.abspath(i)).convert("RGB")
        x = torch.from_numpy(c.transform.to_array(img))[None]
        want = _intermediates(ref, x, 0)[0]
        fr = c.frame(i, "blocks.0")
        assert want.shape[:2] == fr.grid
        assert relative_error(c.features(i, "blocks.0"), want * fr.valid_cells()[..., None]) <= REL
    portrait = int(np.flatnonzero(c.transposed("blocks.0"))[0])
    res = search(c, portrait, box=(20, 200, 180, 330), layer="blocks.0", k=3, exclude_self=False)
    assert res[0].id == portrait and res[0].score == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(res[0].box, (16, 198, 184, 330), atol=16)


def test_wrong_input_size_and_weights_that_do_not_fit(weights, folder, tmp_path):
    with pytest.raises(BadParameter, match=r"not a multiple of .* patch size 14.*224 or 238"):
        load_model("timm:vfs_tiny_dinov2", weights["dino"][1], input_size=230)
    with pytest.raises(BadParameter, match="multiple"):
        index(folder, tmp_path / "c", model="timm:vfs_tiny_dinov2", weights=weights["dino"][1],
              input_size=230, workers=0, progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(UnknownModel, match=r"do not fit timm:vfs_tiny_swin .*missing"):
        load_model("timm:vfs_tiny_swin", weights["vit"][1])
    with pytest.raises(UnknownModel, match="shape mismatch: .*pos_embed"):
        load_model("timm:vfs_tiny_vit", weights["dino"][1])
    with pytest.raises(UnknownModel, match="not found"):
        load_model("timm:vfs_tiny_vit", str(tmp_path / "nope.pth"))
    with pytest.raises(UnknownModel, match="timm has no model"):
        load_model("timm:no_such_arch", weights["vit"][1])
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UnknownModel, match="cannot read the weights file"):
        load_model("timm:vfs_tiny_vit", str(bad))


def test_a_checkpoint_with_another_classifier_loads_without_it(tmp_path):
    """Fine-tuned weights with 10 classes into an architecture built for 1000: the head is
    dropped (searches never use it), every other weight must fit."""
    ref = _reference("vfs_tiny_vit", seed=3, num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "ft.pth")
    lm = load_model("timm:vfs_tiny_vit", str(tmp_path / "ft.pth"))
    x = torch.randn(2, 3, 224, 224)
    got = Forward(lm.module, ["blocks.1"], size=224, engine="eager")(x)["blocks.1"]
    assert relative_error(got, _intermediates(ref, x, 1)) <= REL


def _hf_repo(root, repo: str, model: nn.Module, arch: str, args: dict, h: str = "b" * 40,
             linked: bool = False):
    """A Hugging Face hub cache entry under ``root/hub`` as huggingface_hub lays it out;
    ``linked``: the weights a blob linked from the snapshot, as the real cache does where links
    are allowed (a copy where they are not)."""
    from safetensors.torch import save_file

    d = root / "hub" / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / h
    snap.mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(h)
    if linked:
        blob = d / "blobs" / "w"
        blob.parent.mkdir()
        save_file(model.state_dict(), blob)
        try:
            (snap / "model.safetensors").symlink_to(blob)
        except OSError:
            shutil.copy(blob, snap / "model.safetensors")
    else:
        save_file(model.state_dict(), snap / "model.safetensors")
    keep = ("tag", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
            "num_classes", "first_conv", "classifier", "license")
    cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k in keep}
    (snap / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": model.num_classes, "model_args": args,
        "pretrained_cfg": cfg}))
    return snap


def test_hugging_face_cache_is_found_offline(weights, tmp_path, monkeypatch):
    ref = weights["dino"][0]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = "timm/vit_small_patch14_reg4_dinov2.lvd142m"
    snap = _hf_repo(tmp_path / "hf", repo, ref, "vit_small_patch14_reg4_dinov2", TINY_VIT)

    def no_network(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    lm = load_model(f"timm:hf-hub:{repo}", input_size=224)
    assert lm.weights_path == str((snap / "model.safetensors").resolve())
    assert lm.name == f"timm:hf-hub:{repo}" and lm.layer("norm").grid == (16, 16)
    x = torch.randn(2, 3, 224, 224)
    dyn = _reference("vfs_tiny_dinov2", dynamic_img_size=True)
    dyn.load_state_dict(ref.state_dict())
    got = Forward(lm.module, ["blocks.0"], size=224, engine="eager")(x)["blocks.0"]
    assert relative_error(got, _intermediates(dyn, x, 0)) <= REL
    # reloaded from the recorded weights path (the cache's way), config beside it
    again = load_model(f"timm:hf-hub:{repo}", lm.weights_path, input_size=224)
    assert again.weights_hash == lm.weights_hash
    with pytest.raises(UnknownModel, match=r"models--timm--nothing_here.refs.main"):
        load_model("timm:hf-hub:timm/nothing_here")
    with pytest.raises(UnknownModel, match=r"no local weights for timm:vit_small_patch16_224 "
                                           r"\(looked at .*models--timm--vit_small_patch16_224"):
        load_model("timm:vit_small_patch16_224")


def test_a_linked_hub_blob_is_read_and_its_link_recorded(weights, tmp_path):
    """The hub cache's snapshot file is a link to a blob named by its hash (no suffix, no
    config beside it): the safetensors blob is read by its header, and the link (not the blob)
    is what the cache records, so a reload finds the config and the format again."""
    from safetensors.torch import save_file

    ref = weights["vit"][0]
    blob = tmp_path / "blobs" / ("e" * 64)
    blob.parent.mkdir()
    save_file(ref.state_dict(), blob)
    link = tmp_path / "snap" / "model.safetensors"
    link.parent.mkdir()
    try:
        link.symlink_to(blob)
    except OSError:
        pytest.skip("no symbolic links here")
    lm = load_model("timm:vfs_tiny_vit", str(link))
    assert lm.weights_path == str(link)
    assert load_model("timm:vfs_tiny_vit", str(blob)).weights_hash == lm.weights_hash
    x = torch.randn(1, 3, 224, 224)
    got = Forward(lm.module, ["blocks.1"], size=224, engine="eager")(x)["blocks.1"]
    assert relative_error(got, _intermediates(ref, x, 1)) <= REL


class TokenNet(nn.Module):
    """A minimal transformer-like module: 8-px patches, a class token first, two blocks."""

    def __init__(self, dim=24):
        super().__init__()
        torch.manual_seed(5)
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim),
                                                    nn.GELU()) for _ in range(2)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        return self.head(self.blocks(t)[:, 0])


def test_token_layers_of_a_plain_module(tmp_path, folder):
    t = Transform(size=64, resize=72, interpolation="bilinear")
    plain = from_module(TokenNet(), t, name="plain")
    assert "blocks.1" not in [i.name for i in plain.layers()]  # tokens without a layout
    with pytest.raises(VfsError, match=r"not a feature map.*tokens=\{'prefix'"):
        Forward(plain.module, ["blocks.1"], size=64, engine="eager")(torch.zeros(1, 3, 64, 64))
    lm = from_module(TokenNet(), t, name="tok", tokens={"prefix": 1, "grid": (8, 8)})
    infos = {i.name: i for i in lm.layers()}
    b = infos["blocks.1"]
    assert (b.grid, b.channels, b.stride, b.layout, b.dropped) == ((8, 8), 24, 8.0, "tokens",
                                                                   "1 prefix token")
    assert infos["patch"].layout == "nchw" and lm.multiple == 8
    net = lm.module
    x = _inputs(folder, t)
    with torch.inference_mode():
        raw = net.blocks(torch.cat([net.cls.expand(5, -1, -1),
                                    net.patch(x).flatten(2).transpose(1, 2)], 1))
    got = Forward(net, ["blocks.1"], size=64, engine="eager")(x)["blocks.1"]
    assert relative_error(got, raw[:, 1:].reshape(5, 8, 8, 24).numpy()) <= REL
    c = index(folder, tmp_path / "c", model=lm, layers=["blocks.1"], workers=0,
              progress=False).cache
    assert c.grid("blocks.1") == (8, 8)
    r = search(c, 3, box=(130, 90, 230, 170), layer="blocks.1", k=1, exclude_self=False)
    assert r[0].id == 3 and r[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(BadParameter, match="unknown tokens key"):
        from_module(TokenNet(), t, tokens={"prefixes": 1})


def test_torchvision_vit_class_token_first_and_other_sizes():
    tv = _import_torchvision()
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    from vfsearch.models import _dynamic_torchvision_vit

    torch.manual_seed(0)
    kw = dict(patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    net = VisionTransformer(image_size=64, **kw).eval()
    lm = from_module(net, Transform(size=64, resize=72))
    layers = {i.name: i for i in list_layers(net, lm.transform)}
    enc = layers["encoder.layers.encoder_layer_1"]
    assert (enc.grid, enc.stride, enc.dropped) == ((4, 4), 16.0, "1 class token")
    assert isinstance(tv.models.VisionTransformer, type)
    # at 96 px: the same as torchvision's own model rebuilt at 96 px with its resampled weights
    big = VisionTransformer(image_size=96, **kw).eval()
    big.load_state_dict(interpolate_embeddings(96, 16, net.state_dict()))
    _dynamic_torchvision_vit(net)
    x = torch.randn(2, 3, 96, 96)
    got = Forward(net, ["encoder.layers.encoder_layer_1"], size=96, engine="eager")(x)
    tokens = {}
    h = big.encoder.layers[1].register_forward_hook(lambda _m, _i, o: tokens.setdefault("t", o))
    with torch.inference_mode():
        big(x)
    h.remove()
    want = tokens["t"][:, 1:].reshape(2, 6, 6, 32).numpy()
    assert relative_error(got["encoder.layers.encoder_layer_1"], want) <= REL


def test_cli_layers_lists_token_layers(weights):
    from click.testing import CliRunner

    from vfsearch.cli import main

    r = CliRunner().invoke(main, ["layers", "timm:vfs_tiny_dinov2", "--weights",
                                  weights["dino"][1], "--input-size", "224"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("blocks.1 "))
    assert "16×16" in line and " 14 " in line and "1 class + 4 register tokens" in line
    assert "input 224×224" in r.output
    r = CliRunner().invoke(main, ["layers", "timm:vfs_tiny_dinov2", "--weights",
                                  weights["dino"][1], "--input-size", "230"])
    assert r.exit_code == 2 and "multiple" in r.output
    r = CliRunner().invoke(main, ["layers", "timm:vfs_tiny_swin", "--weights",
                                  weights["swin"][1], "--json"])
    rows = {d["name"]: d for d in json.loads(r.output)}
    assert rows["layers.2"]["layout"] == "nhwc" and rows["layers.2"]["grid"] == [14, 14]
