"""Weights from local files only — nothing is ever downloaded.

- :func:`read_state_dict`: a ``.pth`` / ``.pt`` / ``.bin`` (torch) or safetensors file (by its
  suffix or its header: the hub cache's blobs have no suffix) holding
  a state dict, bare or inside a training checkpoint's wrapper (``state_dict``, ``model``,
  ``state_dict_ema`` / ``model_ema`` first, as timm loads them), with the ``module.`` (DDP) and
  ``_orig_mod.`` (``torch.compile``) key prefixes removed.
- :func:`hf_file`: a file of a model repository in the local Hugging Face hub cache
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; layout
  ``models--ORG--NAME/snapshots/HASH/FILE`` with ``refs/main`` naming ``HASH``), read without
  the network; a missing file names every place looked at.
- :func:`offline`: Hugging Face's offline mode forced while a model is built.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import torch

from .errors import UnknownModel

__all__ = ["describe_mismatch", "hf_cache_dir", "hf_file", "offline", "read_state_dict"]

#: where a training checkpoint keeps its state dict (EMA weights first, as timm does)
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net", "params")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (see the module docstring), on the CPU."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UnknownModel(f"weights file {p} not found", param="weights")
    try:
        if p.suffix == ".safetensors" or _is_safetensors(p):
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnknownModel(f"cannot read the weights file {p} ({type(e).__name__}: {first})",
                           param="weights") from None
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnknownModel(f"the weights file {p} holds no state dict (a dict of tensors, or one "
                           f"under {', '.join(WRAPPER_KEYS)})", param="weights")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor) or k == "n_averaged":  # AveragedModel's counter
            continue
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _is_safetensors(p: Path) -> bool:
    """A safetensors file whatever its name (a Hugging Face cache blob has none): an 8-byte
    little-endian header length, then the JSON header."""
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return head[8:9] == b"{" and 2 <= n <= 100_000_000 and n + 8 <= p.stat().st_size


def describe_mismatch(want: dict, got: dict, limit: int = 3) -> str:
    """What keeps ``got`` (a state dict) from loading into a model whose state dict is ``want``:
    missing and unexpected keys and shape mismatches, a few of each named."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} ≠ {tuple(want[k].shape)}" for k in want
              if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", shapes)):
        if keys:
            more = f", … ({len(keys)} in all)" if len(keys) > limit else ""
            parts.append(f"{what}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, as ``huggingface_hub`` resolves it (read now, so
    a changed ``HF_HOME`` counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _snapshot(repo_id: str, revision: str | None) -> tuple[Path | None, list[str]]:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch or tag under ``refs/``, or a
    commit hash; default ``main``) in the hub cache, and the places looked at."""
    root = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref = root / "refs" / rev
    looked = [str(ref)]
    if ref.is_file():
        commit = ref.read_text().strip()
    elif re.fullmatch(r"[0-9a-f]{40}", rev):
        commit = rev
    else:
        return None, looked
    snap = root / "snapshots" / commit
    looked.append(str(snap))
    return (snap if snap.is_dir() else None), looked


def hf_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> Path:
    """The first of ``filenames`` present in the local hub cache's snapshot of ``repo_id``."""
    snap, looked = _snapshot(repo_id, revision)
    if snap is not None:
        for name in filenames:
            if (snap / name).is_file():
                return snap / name
        looked = looked[:-1] + [str(snap / n) for n in filenames]
    raise UnknownModel(
        f"{repo_id}: not in the local Hugging Face cache (looked at {', '.join(looked)}); "
        "downloads are disabled: fetch it with `huggingface-cli download` elsewhere, set "
        "HF_HOME to where it is, or give --weights FILE", param="weights")


@contextlib.contextmanager
def offline():
    """Force Hugging Face's offline mode (environment and an imported ``huggingface_hub``) while
    a model is built, so no library call can reach the network."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old_env = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    consts = sys.modules.get("huggingface_hub.constants")
    old_const = getattr(consts, "HF_HUB_OFFLINE", None) if consts is not None else None
    if consts is not None:
        consts.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const
