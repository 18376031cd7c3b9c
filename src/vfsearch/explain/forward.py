"""The model passes of the explainers: a private, inference-ready copy of the network run up to
the searched layer and no further.

:func:`layer_net` prepares, once per model (and checks once per layer), a copy of the model's
module with every eval-mode ``BatchNorm2d`` that directly follows a convolution folded into that
convolution's weights, symmetric zero-padding modules in front of convolutions made the
convolution's own padding, ReLU-type activations in place, the weights frozen
(``requires_grad=False``: a backward pass computes the input gradient only) and, where it is
faster, the channels-last memory layout (together about 2-4× faster on a CPU than the original
module). The copy is checked against the original (the hooked forward of
:class:`~vfsearch.extract.FeatureExtractor`, and the input gradient of a backward pass) on a
fixed input before use; if it differs by more than float rounding the original is used.

A forward stops right after the layer (a hook raises; the hook is removed in ``finally``),
with or without autograd: :meth:`LayerNet.forward` for the learned mask,
:meth:`LayerNet.features` under ``torch.inference_mode`` for the black boxes.

The intra-op thread count is settled once per process (:func:`set_threads_once`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["LayerNet", "compose", "layer_net", "set_threads_once"]

#: images per forward pass on the CPU (measured on 2 cores: 8 beats 16 by ~1.5-2× with
#: efficientnet-lite0 at 224 px, whose activations of 16 images no longer fit the caches)
DEFAULT_BATCH = 8

_THREADS_SET = False
_THREADS_LOCK = threading.Lock()


def set_threads_once() -> int:
    """Settle torch's intra-op threads once per process: ``VFSEARCH_THREADS`` if set, else no
    more than the CPUs this process may run on (containers often report more). Later calls do
    nothing; returns the thread count."""
    global _THREADS_SET
    with _THREADS_LOCK:
        if not _THREADS_SET:
            _THREADS_SET = True
            want = os.environ.get("VFSEARCH_THREADS")
            try:
                cpus = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = os.cpu_count() or 1
            n = int(want) if want and want.isdigit() and int(want) > 0 else min(
                torch.get_num_threads(), cpus)
            if n != torch.get_num_threads():
                torch.set_num_threads(n)
    return torch.get_num_threads()


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _stop_after(module: nn.Module, layer: str):
    """Capture ``layer``'s output and end the forward there (the hook is removed on exit)."""
    box: dict = {}

    def hook(_m, _inp, out):
        box["out"] = out
        raise _Stop

    handle = module.get_submodule(layer).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _conv_bn_pairs(module: nn.Module, x: torch.Tensor, layer: str) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN's input is the conv's output in a forward (hooks on
    every conv and BN, removed in ``finally``)."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # tensors kept alive: ids stay unique
    pairs: list[tuple[str, str]] = []
    handles = []

    def conv_hook(name):
        def fn(_m, _inp, out):
            produced[id(out)] = (name, out)
        return fn

    def bn_hook(name):
        def fn(_m, inp, _out):
            src = produced.get(id(inp[0])) if inp else None
            if src is not None and src[1] is inp[0]:
                pairs.append((src[0], name))
        return fn

    try:
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook(name)))
            elif isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats:
                handles.append(m.register_forward_hook(bn_hook(name)))
        with torch.inference_mode(), _stop_after(module, layer):
            try:
                module(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    # a conv or BN called more than once (shared) is not folded
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1]


def _fold(module: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    m = copy.deepcopy(module)
    for cname, bname in pairs:
        conv, bn = m.get_submodule(cname), m.get_submodule(bname)
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = w, b
        parent, _, child = bname.rpartition(".")
        setattr(m.get_submodule(parent) if parent else m, child, nn.Identity())
    for mod in m.modules():
        # "same" convolutions padded by a separate ZeroPad2d (EfficientNet's static padding):
        # a symmetric pad becomes the convolution's own (no padded copy of the activation)
        pad = getattr(mod, "static_padding", None)
        if (isinstance(mod, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)
                and len(set(pad.padding)) == 1 and tuple(mod.padding) == (0, 0)
                and mod.padding_mode == "zeros"):
            mod.padding = (pad.padding[0], pad.padding[0])
            mod.static_padding = nn.Identity()
        # activations in place: one activation-sized allocation less per layer
        if isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
            mod.inplace = True
    return m


class LayerNet:
    """A model run up to ``layer`` (see the module docstring). Not for training: the copy is in
    eval mode with frozen weights. One forward at a time per copy (a lock)."""

    def __init__(self, module: nn.Module, layer: str, prepared: nn.Module, channels_last: bool,
                 folded: int, lock: threading.Lock):
        self.original, self.layer, self.module = module, layer, prepared
        self.channels_last, self.folded = channels_last, folded
        self._lock = lock
        p = next(prepared.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → the layer's (N, C, H, W) output (autograd as the caller's context)."""
        with self._lock, _stop_after(self.module, self.layer) as box:
            try:
                self.module(self._layout(x))
            except _Stop:
                pass
        out = box.get("out")
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            from ..errors import VfsError

            raise VfsError(f"layer {self.layer!r} does not output a 4-D feature map")
        return out

    def features(self, xs, batch: int = DEFAULT_BATCH,
                 between: Callable[[int], None] | None = None) -> np.ndarray:
        """NCHW inputs (numpy or tensor) → (N, H, W, C) float32 numpy, ``batch`` images per
        forward under ``torch.inference_mode``; ``between(done)`` runs after each batch (progress,
        cancellation)."""
        out = []
        n = len(xs)
        with torch.inference_mode():
            for s in range(0, n, batch):
                b = xs[s:s + batch]
                b = torch.from_numpy(np.ascontiguousarray(b)) if isinstance(b, np.ndarray) else b
                f = self.forward(b)
                out.append(f.permute(0, 2, 3, 1).float().contiguous().cpu().numpy())
                if between is not None:
                    between(min(n, s + batch))
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


_NETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NETS_LOCK = threading.Lock()


def _reference(module: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    from ..extract import FeatureExtractor

    with FeatureExtractor(module, [layer]) as fx:
        return torch.from_numpy(fx(x)[layer])


def _input_gradient(run, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    out = run(xg)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (g,) = torch.autograd.grad((out * w).sum(), xg)  # no .grad left on any weight
    return g


def _same_gradient(module: nn.Module, cand: LayerNet, x: torch.Tensor, layer: str) -> bool:
    """The prepared copy's input gradient agrees with the original module's (in-place
    activations and folding must not break autograd). The tolerance is loose on purpose: float
    rounding moves a few units across a ReLU's kink, and the original's own gradient moves by
    ~1 % (relative L2) for a 1e-5 change of its input; a broken backward is off by ~100 %."""
    def original(xg):
        with _stop_after(module, layer) as box:
            try:
                module(xg)
            except _Stop:
                pass
        return box["out"]

    try:
        g_ref = _input_gradient(original, x)
        g = _input_gradient(cand.forward, x)
    except RuntimeError:
        return False
    return float((g - g_ref).norm()) <= 0.1 * (float(g_ref.norm()) or 1.0)


def layer_net(lm, layer: str, size: int | None = None, fast: bool = True) -> LayerNet:
    """The :class:`LayerNet` of a :class:`~vfsearch.models.LoadedModel` (or ``nn.Module``) at
    ``layer``, prepared once and memoised per module. ``fast=False`` gives the original module
    as it is (the reference path). ``size``: the input side used for the check (the model's)."""
    set_threads_once()
    module = getattr(lm, "module", lm)
    if size is None:
        size = getattr(getattr(lm, "transform", None), "size", 224)
    if not fast:
        return LayerNet(module, layer, module, False, 0, threading.Lock())
    with _NETS_LOCK:
        entry = _NETS.get(module)
        if entry is None:
            entry = {"lock": threading.Lock(), "layers": {}}
            _NETS[module] = entry
        if layer in entry["layers"]:
            return entry["layers"][layer]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, size, size, generator=g)
        ref = _reference(module, layer, x)
        if "copy" not in entry:
            pairs = _conv_bn_pairs(module, x, layer)
            prepared = _fold(module, pairs)
            for p in prepared.parameters():
                p.requires_grad_(False)
            entry["copy"], entry["pairs"] = prepared.eval(), pairs
        net = None
        scale = float(ref.abs().max()) or 1.0
        for cl in (True, False):
            if cl:
                m = entry["copy"].to(memory_format=torch.channels_last)
            else:  # a contiguous copy of its own (other layers may share the channels-last one)
                m = copy.deepcopy(entry["copy"]).to(memory_format=torch.contiguous_format)
            cand = LayerNet(module, layer, m, cl, len(entry["pairs"]),
                            entry["lock"] if cl else threading.Lock())
            with torch.inference_mode():
                got = cand.forward(x).permute(0, 2, 3, 1).float().cpu()
            if (got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-3 * scale
                    and _same_gradient(module, cand, x[:1], layer)):
                net = cand
                break
        if net is None:  # folding changed the function (a conv output also used elsewhere)
            net = LayerNet(module, layer, module, False, 0, threading.Lock())
        entry["layers"][layer] = net
        return net


def compose(x: torch.Tensor, xb: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Perturbed images: ``x`` where ``keep`` is 1, the blurred ``xb`` where it is 0.
    ``x``, ``xb``: (3, S, S); ``keep``: (N, S, S) or (N, 1, S, S) → (N, 3, S, S)."""
    if keep.dim() == 3:
        keep = keep[:, None]
    return xb[None] + keep * (x - xb)[None]
