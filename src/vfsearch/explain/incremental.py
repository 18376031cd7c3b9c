"""Occluded images computed incrementally: only the part of each layer an occluder can reach.

An occluder changes a small box of the input; after a convolution with kernel k, stride s the
change covers the box grown by its reach, and so on layer by layer. For a network that runs as
a chain of stages (each stage's input is the previous stage's output: EfficientNet's stem and
blocks, ResNet's stem and blocks), each stage of an occluded image is computed on a crop of its
input around the changed region (plus the stage's reach, aligned to its stride) and pasted into
the unoccluded image's activation; once the changed region covers a whole stage input the rest
runs as usual. Crops that touch the image border are placed on it, so the convolutions see the
same padding as in the full forward; what a crop's own edges spoil lies outside the part kept.

Whether a network allows this is decided once per prepared network and layer: the chain is
found with forward hooks (removed in ``finally``), each stage's reach is bounded from its
convolutions and poolings, and the result is checked against the full forward on a few
occluders; a network that fails (global pooling inside a block, input-size-dependent padding,
a forward that does more than chain its children) gets the full recompute.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from ..forward import StopEarly
from .forward import LayerNet, compose

__all__ = ["occluded_features"]

_LOCK = threading.Lock()
_CONTAINERS = (nn.Sequential, nn.ModuleList)
_NONLOCAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Linear, nn.Flatten)


def _candidates(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, _CONTAINERS):
            out += _candidates(child, full + ".")
        else:
            out.append((full, child))
    return out


def _pair(v) -> tuple[int, int]:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (int(v[0]), int(v[-1]))


def _reach(m: nn.Module) -> float | None:
    """A bound on how far (in the stage's input pixels) an output reaches beyond its stride
    cell, from the stage's convolutions and poolings taken as a chain; None if the stage holds
    something non-local."""
    h, jump = 0.0, 1.0
    for sub in m.modules():
        if isinstance(sub, _NONLOCAL):
            return None
        if isinstance(sub, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, st, d = _pair(sub.kernel_size), _pair(sub.stride), _pair(getattr(sub, "dilation", 1))
            h += max((k[0] - 1) * d[0], (k[1] - 1) * d[1]) * jump
            jump *= max(st[0], st[1])
    return h


def _chain(net: LayerNet, x: torch.Tensor):
    """The stages from the input to ``net.layer`` as groups [(modules, stride, reach)], or None."""
    cands = _candidates(net.module)
    names = [n for n, _ in cands]
    if net.layer not in names:
        return None
    calls: list = []
    handles = []

    def hook(name):
        def fn(_m, inp, out):
            calls.append((name, inp[0] if inp else None, out))
        return fn

    try:
        for name, m in cands:
            handles.append(m.register_forward_hook(hook(name)))
        with torch.inference_mode():
            StopEarly(net.module, [net.layer])(x)
    finally:
        for h in handles:
            h.remove()
    if not calls or calls[-1][0] != net.layer or calls[0][1] is not x:
        return None
    seen = set()
    mods = dict(cands)
    stages = []
    prev = x
    for name, inp, out in calls:
        if name in seen or inp is not prev or not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        seen.add(name)
        hi, wi, ho, wo = inp.shape[2], inp.shape[3], out.shape[2], out.shape[3]
        if hi % ho or wi % wo or hi // ho != wi // wo:
            return None
        reach = _reach(mods[name])
        if reach is None:
            return None
        stages.append(([mods[name]], hi // ho, reach))
        prev = out
    groups: list = []
    for mlist, s, h in stages:  # pointwise stages join the stage before them
        if groups and s == 1 and h == 0:
            groups[-1] = (groups[-1][0] + mlist, groups[-1][1], groups[-1][2])
        else:
            groups.append((mlist, s, h))
    return groups


def _run_group(mods, t):
    for m in mods:
        t = m(t)
    return t


class _Occluder:
    """The unoccluded image's stage activations, and occluded images computed from them."""

    def __init__(self, net: LayerNet, groups, x: np.ndarray, xb: np.ndarray):
        self.net, self.groups = net, groups
        self.x = net._layout(torch.from_numpy(x)[None])
        self.xb = net._layout(torch.from_numpy(xb)[None])
        acts = [self.x]
        with torch.inference_mode(), net._lock:
            t = self.x
            for mods, _s, _h in groups:
                t = _run_group(mods, t)
                acts.append(t.clone())
        self.acts = acts  # acts[k] = input of group k

    @staticmethod
    def _span(a: int, b: int, s: int, h: float, n_in: int, n_out: int):
        """Changed input rows [a, b) → changed output rows [oa, ob) and the input rows they
        need [lo, hi) (clipped to the input)."""
        hh = int(np.ceil(h))
        oa = max(0, -((-(a - hh - s + 1)) // s))
        ob = min(n_out, (b - 1 + hh) // s + 1)
        return oa, ob, max(0, oa * s - hh), min(n_in, ob * s + hh)

    def features(self, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
        """Layer features (n, H, W, C) of the images occluded at ``boxes`` (y0, x0, y1, x1 in
        model-input pixels; the occluder is the blurred image)."""
        n = len(boxes)
        regs = [(y0, y1, x0, x1) for y0, x0, y1, x1 in boxes]
        patches = [self.xb[0, :, y0:y1, x0:x1] for y0, y1, x0, x1 in regs]
        with torch.inference_mode(), self.net._lock:  # no stop hook of another thread meanwhile
            for k, (mods, s, h) in enumerate(self.groups):
                base = self.acts[k]
                hin, win = base.shape[2], base.shape[3]
                hout, wout = self.acts[k + 1].shape[2], self.acts[k + 1].shape[3]
                spans = [(self._span(r[0], r[1], s, h, hin, hout),
                          self._span(r[2], r[3], s, h, win, wout)) for r in regs]
                ly = max(sy[3] - sy[2] for sy, _ in spans) + s - 1
                lx = max(sx[3] - sx[2] for _, sx in spans) + s - 1
                ly, lx = -(-ly // s) * s, -(-lx // s) * s
                if ly >= hin and lx >= win:  # the change covers it all: the plain forward
                    t = base.expand(n, -1, -1, -1).contiguous(memory_format=self._fmt(base))
                    for i, (y0, y1, x0, x1) in enumerate(regs):
                        t[i, :, y0:y1, x0:x1] = patches[i]
                    for mods2, _s2, _h2 in self.groups[k:]:
                        t = _run_group(mods2, t)
                    return t.permute(0, 2, 3, 1).float().contiguous().cpu().numpy()
                ly, lx = min(ly, hin), min(lx, win)
                starts = []
                for sy, sx in spans:
                    cy = min((sy[2] // s) * s, hin - ly)
                    cx = min((sx[2] // s) * s, win - lx)
                    starts.append((cy, cx))
                t = torch.empty((n, base.shape[1], ly, lx), dtype=base.dtype,
                                device=base.device).contiguous(memory_format=self._fmt(base))
                for i, ((cy, cx), (y0, y1, x0, x1)) in enumerate(zip(starts, regs, strict=True)):
                    t[i] = base[0, :, cy:cy + ly, cx:cx + lx]
                    t[i, :, y0 - cy:y1 - cy, x0 - cx:x1 - cx] = patches[i]
                out = _run_group(mods, t)
                new_regs, new_patches = [], []
                for i, ((cy, cx), (sy, sx)) in enumerate(zip(starts, spans, strict=True)):
                    oy, ox = cy // s, cx // s
                    new_regs.append((sy[0], sy[1], sx[0], sx[1]))
                    new_patches.append(out[i, :, sy[0] - oy:sy[1] - oy, sx[0] - ox:sx[1] - ox])
                regs, patches = new_regs, new_patches
            # the layer itself was reached on crops: paste them into its unoccluded output
            base = self.acts[-1]
            t = base.expand(n, -1, -1, -1).contiguous(memory_format=self._fmt(base))
            for i, (y0, y1, x0, x1) in enumerate(regs):
                t[i, :, y0:y1, x0:x1] = patches[i]
            return t.permute(0, 2, 3, 1).float().contiguous().cpu().numpy()

    @staticmethod
    def _fmt(t: torch.Tensor):
        cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
        return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format


def _verify(net: LayerNet, groups, S: int) -> bool:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, S, S, generator=g).numpy()
    xb = torch.randn(3, S, S, generator=g).numpy() * 0.5
    w = max(4, S // 4)
    boxes = [(0, 0, w, w), (S // 2 - w // 2, S // 3, S // 2 - w // 2 + w, S // 3 + w),
             (S - w, S - w - 3, S, S - 3)]
    try:
        inc = _Occluder(net, groups, x, xb).features(boxes)
    except Exception:  # noqa: BLE001 - a network this cannot run on gets the full recompute
        return False
    keep = np.ones((len(boxes), S, S), np.float32)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        keep[k, y0:y1, x0:x1] = 0
    full = net.features(compose(torch.from_numpy(x), torch.from_numpy(xb), torch.from_numpy(keep)))
    scale = float(np.abs(full).max()) or 1.0
    return inc.shape == full.shape and float(np.abs(inc - full).max()) <= 1e-4 * scale


def occluded_features(net: LayerNet, x: np.ndarray, xb: np.ndarray) -> _Occluder | None:
    """An incremental computer of ``x`` occluded (by ``xb``) at boxes, or None where the
    network does not allow it (decided once per prepared network and layer)."""
    S = x.shape[-1]
    with _LOCK:
        plans = net.__dict__.setdefault("_occlusion_plans", {})
        if S not in plans:
            probe = net._layout(torch.zeros(1, 3, S, S))
            try:
                with net._lock:
                    groups = _chain(net, probe)
            except Exception:  # noqa: BLE001
                groups = None
            plans[S] = groups if groups and _verify(net, groups, S) else None
        groups = plans[S]
    return None if groups is None else _Occluder(net, groups, x, xb)
