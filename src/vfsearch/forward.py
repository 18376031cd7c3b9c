"""Run a model up to the layers asked for and return their outputs — the one place that does it.

:class:`StopEarly` wraps any ``nn.Module``: its forward returns the outputs of the named layers
and stops right after the deepest of them (forward hooks that raise; for timm vision
transformers, ``forward_intermediates(stop_early=True)``). It is plain torch, so it can be traced
and exported.

:class:`Forward` runs a :class:`StopEarly` on batches with one of these engines:

- ``eager``: the reference, plain torch.
- ``torch``: a copy of the module with BatchNorm folded into the convolution before it and
  channels-last tensors (CPU or CUDA).
- ``openvino``: the truncated network exported once per (weights, architecture, layers, input
  size) to OpenVINO IR under ``$VFSEARCH_CACHE_DIR/exports`` and reused; compiled for f32 (no
  bf16 down-conversion) with static batch shapes. Needs the optional ``openvino`` package.
- ``auto``: ``openvino`` on CPU when installed and worth its one-off export (the export is cached
  or at least ``AUTO_EXPORT_MIN_IMAGES`` images are to be run), else ``torch``.

Every engine but ``eager`` is checked against ``eager`` when it is built (max |a − b| / max |b|
per layer ≤ ``TOLERANCE`` on a fixed pseudo-random batch); one that fails to build or to match
falls back to the next (``openvino`` → ``torch`` → ``eager``) with a one-line note through
``log``. A failed export is remembered, so it is not retried on every run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import BadParameter, UnknownLayer, VfsError
from .layouts import as_grid, model_layout

__all__ = [
    "AUTO_EXPORT_MIN_IMAGES",
    "ENGINES",
    "TOLERANCE",
    "Forward",
    "StopEarly",
    "cuda_batch_size",
    "export_cached",
    "export_dir",
    "fold_batchnorm",
    "openvino_available",
    "prepare_copy",
    "relative_error",
]

ENGINES = ("auto", "eager", "torch", "openvino")
TOLERANCE = 1e-4  # max |a - b| / max |b| per layer, f32
AUTO_EXPORT_MIN_IMAGES = 128  # below this, a first OpenVINO export (seconds) does not pay off
_EXPORT_VERSION = 1


class _Stop(Exception):
    pass


def _vit_indices(module: nn.Module, layers: Sequence[str]) -> list[int] | None:
    """Block indices when ``module`` is a timm vision transformer and every layer is one of its
    ``blocks.N`` (their outputs are token sequences; ``forward_intermediates`` lays them on the
    patch grid without the prefix tokens)."""
    if not (hasattr(module, "forward_intermediates") and hasattr(module, "num_prefix_tokens")
            and isinstance(getattr(module, "blocks", None), nn.Sequential | nn.ModuleList)):
        return None
    idx = []
    for name in layers:
        m = re.fullmatch(r"blocks\.(\d+)", name)
        if m is None or int(m.group(1)) >= len(module.blocks):
            return None
        idx.append(int(m.group(1)))
    return idx


class StopEarly(nn.Module):
    """``forward(x)`` → the outputs (N, C, H, W) of ``layers``, in that order, computed by
    ``module`` and nothing after the deepest of them (``stop=False``: the whole forward runs).
    ``nhwc=True`` returns them as (N, H, W, C) views. Hooks live only during a call. Token
    sequences (N, L, C) lose their prefix tokens and lie on the patch grid; channels-last
    outputs are read as such (:mod:`vfsearch.layouts`, from the model's own metadata)."""

    def __init__(self, module: nn.Module, layers: Sequence[str], *, stop: bool = True,
                 nhwc: bool = False):
        super().__init__()
        self.module = module
        self.layers = list(layers)
        if not self.layers:
            raise BadParameter("no layer given", param="layers")
        self.stop, self.nhwc = stop, nhwc
        self._vit = _vit_indices(module, self.layers) if stop else None
        self._layout = model_layout(module)
        if self._vit is None:
            mods = dict(module.named_modules())
            missing = [name for name in self.layers if name not in mods]
            if missing:
                raise UnknownLayer(f"model has no layer(s) {', '.join(missing)}")
            self._mods = {name: mods[name] for name in dict.fromkeys(self.layers)}
        self.training = False

    def train(self, mode: bool = True) -> StopEarly:
        # an exporter that restores "the wrapper's mode" must never put the model in training
        # mode (BatchNorm would update its running statistics)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._vit is not None:
            want = sorted(set(self._vit))
            outs = self.module.forward_intermediates(
                x, indices=want, norm=False, output_fmt="NCHW", intermediates_only=True,
                stop_early=True)
            by = dict(zip(want, outs, strict=True))
            res = [by[i] for i in self._vit]
        else:
            got: dict[str, torch.Tensor] = {}
            handles = []

            def hook(name):
                def fn(_m, _inp, out):
                    got.setdefault(name, out)
                    if self.stop and len(got) == len(self._mods):
                        raise _Stop

                return fn

            try:
                for name, m in self._mods.items():
                    handles.append(m.register_forward_hook(hook(name)))
                try:
                    self.module(x)
                except _Stop:
                    pass
            finally:
                for h in handles:
                    h.remove()
            missing = [n for n in self.layers if n not in got]
            if missing:
                raise VfsError(f"layer(s) {', '.join(missing)} produced no output in the forward "
                               "pass")
            # token sequences and channels-last maps laid out as (N, C, H, W) views
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            res = [as_grid(self.module, n, got[n], hw, self._layout) for n in self.layers]
        for name, t in zip(self.layers, res, strict=True):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise VfsError(f"layer {name!r} does not output a 4-D feature map")
        if self.nhwc:
            res = [t.permute(0, 2, 3, 1) for t in res]
        return tuple(res)


# -- BatchNorm folding ----------------------------------------------------------------------------


def fold_batchnorm(module: nn.Module, example: torch.Tensor, keep: Sequence[str] = ()) -> int:
    """Fold each eval-mode ``BatchNorm2d`` that directly consumes a ``Conv2d``'s output into that
    convolution (in place; the BatchNorm becomes ``Identity``). Convolutions named in ``keep``
    (requested layers: their own output must stay the convolution's) are left alone. Pairs are
    found by running ``example`` once. Returns the number folded. The result must be checked
    against the original: a convolution output that something else also reads is not detected."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv_out: dict[int, tuple[str, torch.Tensor]] = {}  # tensors kept alive: ids stay unique
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def conv_hook(name):
        def fn(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            conv_out[id(out)] = (name, out)

        return fn

    def bn_hook(name):
        def fn(_m, inp):
            calls[name] = calls.get(name, 0) + 1
            src = conv_out.get(id(inp[0]))
            if src is not None and src[1] is inp[0]:
                pairs.append((src[0], name))

        return fn

    named = dict(module.named_modules())
    try:
        for name, m in named.items():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook(name)))
            elif isinstance(m, nn.BatchNorm2d):
                handles.append(m.register_forward_pre_hook(bn_hook(name)))
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    keep = set(keep)
    done = 0
    for conv_name, bn_name in pairs:
        conv, bn = named[conv_name], named[bn_name]
        if conv_name in keep or calls.get(conv_name) != 1 or calls.get(bn_name) != 1 or \
                bn.training or not bn.track_running_stats or bn.running_mean is None:
            continue
        _replace(module, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(module, bn_name, nn.Identity())
        done += 1
    return done


def prepare_copy(module: nn.Module, example: torch.Tensor, keep: Sequence[str] = (), *,
                 streamline: bool = False) -> tuple[nn.Module, int]:
    """A private inference copy of ``module``: deep-copied, in eval mode, every BatchNorm that
    follows a convolution folded into it (:func:`fold_batchnorm`, ``keep`` left alone), the
    weights frozen (a backward pass then computes input gradients only). Returns (copy, number
    folded); the caller checks the copy against the original.

    ``streamline=True`` also makes each symmetric ``ZeroPad2d`` in front of a convolution
    (EfficientNet's "same" padding) the convolution's own padding (no padded copy of the
    activation) and ReLU-type activations in place (one activation-sized allocation less per
    layer). In-place activations are only safe for a forward that stops right after its one
    layer: an earlier layer's captured output could otherwise be overwritten."""
    net = copy.deepcopy(module).eval()
    folded = fold_batchnorm(net, example, keep=keep)
    for p in net.parameters():
        p.requires_grad_(False)
    if streamline:
        for mod in net.modules():
            pad = getattr(mod, "static_padding", None)
            if (isinstance(mod, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)
                    and len(set(pad.padding)) == 1 and tuple(mod.padding) == (0, 0)
                    and mod.padding_mode == "zeros"):
                mod.padding = (pad.padding[0], pad.padding[0])
                mod.static_padding = nn.Identity()
            if isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
                mod.inplace = True
    return net, folded


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = new


# -- checking -------------------------------------------------------------------------------------


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b| (absolute when b is all zeros)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.abs(b).max()) if b.size else 0.0
    err = float(np.abs(a - b).max()) if b.size else 0.0
    return err / scale if scale > 0 else err


HW = tuple[int, int]


def _hw(size: int | Sequence[int]) -> HW:
    """An input size (side, or (height, width)) as (height, width)."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _check_input(hw: HW, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, *hw, generator=g)


@contextlib.contextmanager
def _exact_cuda():
    """No TF32 on CUDA (its 10-bit mantissa would break equality with the CPU path)."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# -- engines --------------------------------------------------------------------------------------


class _Eager:
    name = "eager"

    def __init__(self, module: nn.Module, layers: list[str], device: str):
        self.layers, self.device = layers, device
        self.net = StopEarly(module, layers, nhwc=True)

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        with torch.inference_mode(), _exact_cuda():
            outs = self.net(x.to(self.device, non_blocking=True))
            return [t.float().contiguous().cpu().numpy() for t in outs]


class _TorchFast(_Eager):
    name = "torch"

    def __init__(self, module: nn.Module, layers: list[str], device: str, hw: HW,
                 fold: bool = True):
        self.layers, self.device = layers, device
        if fold:
            example = _check_input(hw).to(next(iter(module.parameters()), torch.zeros(0)).device)
            net, self.folded = prepare_copy(module, example, keep=layers)
        else:
            net, self.folded = copy.deepcopy(module).eval(), 0
        self.net = StopEarly(net.to(memory_format=torch.channels_last), layers, nhwc=True)

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), _exact_cuda():
            return [t.float().contiguous().cpu().numpy() for t in self.net(x)]


def export_dir() -> Path:
    """Where exported models are kept: ``$VFSEARCH_CACHE_DIR/exports`` (default
    ``~/.cache/vfsearch/exports``)."""
    root = os.environ.get("VFSEARCH_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "vfsearch") / "exports"


def _module_identity(module: nn.Module) -> str:
    """Hash of the architecture (module tree) and every parameter and buffer."""
    h = hashlib.sha256(repr(module).encode())
    h.update(type(module).__qualname__.encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _openvino():
    import openvino

    return openvino


class _OpenVINO:
    """The truncated network as OpenVINO IR, one export per input (height, width) — made at the
    first batch of that shape unless already on disk — compiled for each batch size seen."""

    name = "openvino"

    def __init__(self, module: nn.Module, layers: list[str], hw: HW, threads: int,
                 log: Callable[[str], None] | None, identity: str | None = None):
        ov = _openvino()
        self.module, self.layers, self.threads, self.log = module, layers, threads, log
        self.core = ov.Core()
        self.identity = identity or _module_identity(module)
        self.export_seconds = 0.0
        self._paths: dict[HW, Path] = {}
        self._compiled: dict[tuple[int, HW], tuple] = {}
        self._prepare(hw)

    def _prepare(self, hw: HW) -> Path:
        stem = self._paths.get(hw)
        if stem is not None:
            return stem
        stem, meta = _export_paths(self.identity, self.layers, hw)
        if meta is not None and not meta.get("ok", False):
            raise VfsError(meta.get("reason", "export failed earlier"))
        if meta is None:
            t = time.perf_counter()
            if self.log is not None:
                self.log(f"exporting the model up to {', '.join(self.layers)} at {hw[1]}×{hw[0]}"
                         " px for OpenVINO (once; kept for later runs)")
            _export(self.module, self.layers, hw, stem, self.core)
            self.export_seconds += time.perf_counter() - t
        self._paths[hw] = stem
        return stem

    def _compiled_for(self, n: int, hw: HW):
        cm = self._compiled.get((n, hw))
        if cm is None:
            stem = self._prepare(hw)
            # the first few batch sizes get static shapes (faster); any further: one dynamic
            dynamic = sum(1 for k in self._compiled if k[1] == hw) >= 3
            cm = self._compiled.get((-1, hw)) if dynamic else None
            if cm is None:
                model = self.core.read_model(str(stem.with_suffix(".xml")))
                model.reshape({0: [-1 if dynamic else n, 3, *hw]})
                cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads,
                       "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                       "ENABLE_CPU_PINNING": False}
                compiled = self.core.compile_model(model, "CPU", cfg)
                cm = (compiled, compiled.create_infer_request())
                self._compiled[(-1 if dynamic else n, hw)] = cm
            self._compiled[(n, hw)] = cm
        return cm

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        a = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        compiled, req = self._compiled_for(len(a), (a.shape[2], a.shape[3]))
        res = req.infer({0: a}, share_inputs=True)
        return [np.ascontiguousarray(res[compiled.output(i)], dtype=np.float32)
                for i in range(len(self.layers))]


def _export_paths(identity: str, layers: list[str], hw: HW) -> tuple[Path, dict | None]:
    """(path stem of this export, its record or None when not exported yet)."""
    ov = _openvino()
    key = hashlib.sha256(json.dumps({
        "v": _EXPORT_VERSION, "module": identity, "layers": layers,
        "input": list(hw), "openvino": ov.get_version(), "torch": torch.__version__,
    }, sort_keys=True).encode()).hexdigest()[:24]
    stem = export_dir() / f"ov-{key}"
    rec = stem.with_suffix(".json")
    try:
        meta = json.loads(rec.read_text())
    except (OSError, ValueError):
        return stem, None
    if meta.get("ok") and not (stem.with_suffix(".xml").exists() and
                               stem.with_suffix(".bin").exists()):
        return stem, None
    return stem, meta


def _export(module: nn.Module, layers: list[str], hw: HW, stem: Path, core) -> None:
    """Trace → OpenVINO IR (.xml/.bin) written atomically, its record (.json) last. A failure
    is recorded too (and raised), so later runs fall back at once."""
    ov = _openvino()
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_name(f"{stem.name}.tmp{os.getpid()}")
    rec = {"v": _EXPORT_VERSION, "layers": layers, "input": list(hw),
           "model": type(module).__name__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        from openvino.frontend import FrontEndManager
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

        net = StopEarly(module, layers, nhwc=True)
        g = torch.Generator().manual_seed(99)
        example = torch.randn(2, 3, *hw, generator=g)
        with torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(net, example, check_trace=False, strict=False)
        fe = FrontEndManager().load_by_framework("pytorch")
        decoder = TorchScriptPythonDecoder(traced, shared_memory=False)  # must outlive convert
        model = fe.convert(fe.load(decoder))
        del decoder
        model.reshape({0: [-1, 3, *hw]})
        # checked on another input than the trace's: a forward whose trace froze some value
        # (data-dependent control flow, numpy round trips) is caught here
        cm = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x = _check_input(hw)
        got = cm.create_infer_request().infer({0: x.numpy()})
        with torch.inference_mode():
            want = [t.float().numpy() for t in net(x)]
        errs = [relative_error(got[cm.output(i)], w) for i, w in enumerate(want)]
        rec["errors"] = errs
        if not all(e <= TOLERANCE for e in errs):
            raise VfsError(f"the exported model differs from the eager forward (relative error "
                           f"{max(errs):.1e} > {TOLERANCE:g})")
        ov.save_model(model, str(tmp.with_suffix(".xml")), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), stem.with_suffix(".bin"))
        os.replace(tmp.with_suffix(".xml"), stem.with_suffix(".xml"))
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001 - any failure means: fall back, and remember it
        rec["ok"] = False
        rec["reason"] = (e.message if isinstance(e, VfsError) else
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
        for suffix in (".xml", ".bin"):
            tmp.with_suffix(suffix).unlink(missing_ok=True)
    t = stem.with_name(f"{stem.name}.tmp{os.getpid()}.json")
    t.write_text(json.dumps(rec, indent=1))
    os.replace(t, stem.with_suffix(".json"))
    if not rec["ok"]:
        raise VfsError(rec["reason"])


@contextlib.contextmanager
def _quiet_tracing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def openvino_available() -> bool:
    try:
        _openvino()
    except ImportError:
        return False
    return True


def export_cached(module: nn.Module | str, layers: Sequence[str],
                  size: int | Sequence[int]) -> bool:
    """Whether a good OpenVINO export of ``module`` (or its identity hash) up to ``layers`` at
    ``size`` (side, or (height, width)) exists."""
    if not openvino_available():
        return False
    identity = module if isinstance(module, str) else _module_identity(module)
    _, meta = _export_paths(identity, list(layers), _hw(size))
    return bool(meta and meta.get("ok"))


class Forward:
    """Run ``module`` up to ``layers`` on NCHW batches: ``fwd(x)`` → {layer: (N, H, W, C)
    float32 array}. ``engine`` is one of :data:`ENGINES`; ``engine_name`` says which runs
    (after any fallback, each noted through ``log``). ``size`` is the input side in pixels
    or (height, width) (other shapes work too; OpenVINO exports one model per shape);
    ``expected_images`` lets ``auto`` judge whether an export pays off."""

    def __init__(self, module: nn.Module, layers: Sequence[str], *, size: int | Sequence[int],
                 engine: str = "auto", device: str = "cpu", threads: int | None = None,
                 expected_images: int | None = None, log: Callable[[str], None] | None = None):
        if engine not in ENGINES:
            raise BadParameter(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}",
                               param="engine")
        self.layers = list(layers)
        StopEarly(module, self.layers)  # validates the names
        self.device, self.hw, self.log = device, _hw(size), log
        self.notes: list[str] = []
        cuda = device.startswith("cuda")
        if engine == "openvino" and cuda:
            raise BadParameter("the openvino engine runs on the CPU; use --device cpu or another "
                               "engine", param="engine")
        self._identity = None
        if engine == "auto":
            use_ov = not cuda and openvino_available()
            if use_ov and (expected_images or 0) < AUTO_EXPORT_MIN_IMAGES:
                self._identity = _module_identity(module)
                use_ov = export_cached(self._identity, self.layers, self.hw)
            order = ["openvino", "torch", "eager"] if use_ov else ["torch", "eager"]
        else:
            order = {"openvino": ["openvino", "torch", "eager"], "torch": ["torch", "eager"],
                     "eager": ["eager"]}[engine]
        self._eager = _Eager(module, self.layers, device)
        threads = int(threads or torch.get_num_threads())
        self._impl = None
        for name in order:
            try:
                impl = self._build(name, module, threads)
            except Exception as e:  # noqa: BLE001 - fall back to the next engine, say why
                why = e.message if isinstance(e, VfsError) else f"{type(e).__name__}: {e}"
                self._note(f"{name} engine unavailable ({why.splitlines()[0]}); using "
                           f"{order[order.index(name) + 1]}")
                continue
            self._impl = impl
            break
        assert self._impl is not None

    @property
    def engine_name(self) -> str:
        return self._impl.name

    @property
    def export_seconds(self) -> float:
        """Time spent exporting in this process (0 when the export was on disk)."""
        return float(getattr(self._impl, "export_seconds", 0.0))

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.log is not None:
            self.log(msg)

    def _build(self, name: str, module: nn.Module, threads: int):
        if name == "eager":
            return self._eager
        if name == "openvino":
            impl = _OpenVINO(module, self.layers, self.hw, threads, self.log, self._identity)
            return impl  # checked against eager at export time
        for fold in (True, False):
            impl = _TorchFast(module, self.layers, self.device, self.hw, fold=fold)
            err = self._check(impl)
            if err <= TOLERANCE:
                return impl
        raise VfsError(f"its features differ from the eager forward (relative error {err:.1e})")

    def _check(self, impl) -> float:
        x = _check_input(self.hw)
        return max(relative_error(a, b) for a, b in zip(impl(x), self._eager(x), strict=True))

    def __call__(self, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        try:
            outs = self._impl(x)
        except VfsError as e:  # e.g. the export for a new input shape failed
            if self._impl is self._eager:
                raise
            self._note(f"{self._impl.name} engine failed on a batch of shape "
                       f"{tuple(x.shape)} ({e.message}); using eager from here on")
            self._impl = self._eager
            outs = self._impl(x)
        return dict(zip(self.layers, outs, strict=True))

    def eager(self, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """The reference forward on the same batch."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        return dict(zip(self.layers, self._eager(x), strict=True))


def cuda_batch_size(fwd: Forward, device: str, lo: int = 32, hi: int = 1024) -> int:
    """A batch size that fits the card: the peak memory of a batch of 8, scaled to half the free
    memory, rounded down to a power of two in [lo, hi]."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fwd(torch.zeros(8, 3, *fwd.hw, pin_memory=True))
    torch.cuda.synchronize(dev)
    per_image = max(1, (torch.cuda.max_memory_allocated(dev) - base) // 8)
    free, _total = torch.cuda.mem_get_info(dev)
    n = int(free * 0.5 // per_image)
    b = lo
    while b * 2 <= min(n, hi):
        b *= 2
    return b
