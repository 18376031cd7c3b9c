"""The model passes of the explainers: a private, inference-ready copy of the network run up to
the searched layer and no further.

:func:`layer_net` prepares, once per model and layer, a copy of the model's module with
:func:`vfsearch.forward.prepare_copy` (the one implementation of BatchNorm folding, also the
indexer's: every eval-mode ``BatchNorm2d`` that directly follows a convolution folded into it,
symmetric zero-padding modules in front of convolutions made the convolution's own padding,
ReLU-type activations in place, the weights frozen — a backward pass computes the input
gradient only) and, where it is faster, the channels-last memory layout (together about 2-4×
faster on a CPU than the original module). The copy is checked against the original (the
hooked forward of :class:`~vfsearch.extract.FeatureExtractor`, and the input gradient of a
backward pass) on a fixed input before use; if it differs by more than float rounding the
original is used.

A forward stops right after the layer (:class:`vfsearch.forward.StopEarly`: hooks live only
during a call), with or without autograd: :meth:`LayerNet.forward` for the learned mask,
:meth:`LayerNet.features` under ``torch.inference_mode`` for the black boxes.

The intra-op thread count is settled once per process (:func:`set_threads_once`).
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..forward import StopEarly, prepare_copy

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


class LayerNet:
    """A model run up to ``layer`` (see the module docstring). Not for training: the copy is in
    eval mode with frozen weights. One forward at a time per copy (a lock)."""

    def __init__(self, module: nn.Module, layer: str, prepared: nn.Module, channels_last: bool,
                 folded: int, lock: threading.Lock):
        self.original, self.layer, self.module = module, layer, prepared
        self.channels_last, self.folded = channels_last, folded
        self._lock = lock
        self._stop = StopEarly(prepared, [layer])
        p = next(prepared.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → the layer's (N, C, H, W) output (autograd as the caller's context)."""
        with self._lock:
            return self._stop(self._layout(x))[0]

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
    original = StopEarly(module, [layer])
    try:
        g_ref = _input_gradient(lambda xg: original(xg)[0], x)
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
        entry = _NETS.setdefault(module, {})
        if layer in entry:
            return entry[layer]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, size, size, generator=g)
        ref = _reference(module, layer, x)
        # one copy per layer: the layer's own convolution keeps its BatchNorm after it
        prepared, folded = prepare_copy(module, x[:1], keep=[layer], streamline=True)
        net = None
        scale = float(ref.abs().max()) or 1.0
        for cl in (True, False):
            if cl:
                m = prepared.to(memory_format=torch.channels_last)
            else:
                m = copy.deepcopy(prepared).to(memory_format=torch.contiguous_format)
            cand = LayerNet(module, layer, m, cl, folded, threading.Lock())
            with torch.inference_mode():
                got = cand.forward(x).permute(0, 2, 3, 1).float().cpu()
            if (got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-3 * scale
                    and _same_gradient(module, cand, x[:1], layer)):
                net = cand
                break
        if net is None:  # folding changed the function (a conv output also used elsewhere)
            net = LayerNet(module, layer, module, False, 0, threading.Lock())
        entry[layer] = net
        return net


def compose(x: torch.Tensor, xb: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Perturbed images: ``x`` where ``keep`` is 1, the blurred ``xb`` where it is 0.
    ``x``, ``xb``: (3, S, S); ``keep``: (N, S, S) or (N, 1, S, S) → (N, 3, S, S)."""
    if keep.dim() == 3:
        keep = keep[:, None]
    return xb[None] + keep * (x - xb)[None]
