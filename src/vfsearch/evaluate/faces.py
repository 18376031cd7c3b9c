"""Face boxes for the ``boxes`` protocol, from the MTCNN detector whose weights ship in the
``facenet-pytorch`` wheel (an optional extra).

``facenet-pytorch`` pins old versions of torch and torchvision, so it is installed without its
dependencies: ``pip install --no-deps facenet-pytorch`` (it then runs on vfsearch's torch and
torchvision). It calls ``torchvision.ops.batched_nms``, whose compiled kernel a CPU-only torch
with the registry's (CUDA-built) torchvision does not have: the schemas are defined as
:mod:`vfsearch.models` does, and where the kernel is missing the detector's NMS is replaced by
the numpy one here (the same greedy suppression, per image).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EvalError, OutputError

__all__ = ["INSTALL", "detect_cache_faces", "detect_faces", "load_mtcnn", "nms"]

#: how to install the optional detector (its pins are old: without its dependencies)
INSTALL = "pip install --no-deps facenet-pytorch"


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first (a box is
    dropped when its IoU with a kept one exceeds ``iou_threshold``, as torchvision does)."""
    b = np.asarray(boxes, np.float64)
    s = np.asarray(scores, np.float64)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    x0, y0, x1, y1 = b.T
    area = (x1 - x0) * (y1 - y0)
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        r = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[r]) - np.maximum(x0[i], x0[r]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[r]) - np.maximum(y0[i], y0[r]), 0, None)
        inter = iw * ih
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[i] + area[r] - inter)
        order = r[~(iou > iou_threshold)]
    return np.asarray(keep, np.int64)


def _batched_nms(boxes, scores, idxs, iou_threshold):
    """``torchvision.ops.batched_nms`` in numpy (boxes of different ``idxs`` never suppress
    each other)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    b = boxes.detach().cpu().double().numpy()
    off = idxs.detach().cpu().double().numpy() * (b.max() + 1.0)
    keep = nms(b + off[:, None], scores.detach().cpu().numpy(), float(iou_threshold))
    return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)


def load_mtcnn(device: str = "cpu", min_face_size: int = 20, **kw):
    """facenet-pytorch's MTCNN (all faces of an image), ready on this torch; a clear
    :class:`~vfsearch.errors.EvalError` naming the install command when it is missing."""
    try:
        from ..models import _import_torchvision

        _import_torchvision()
    except ImportError:
        raise EvalError(f"face detection needs torchvision and facenet-pytorch: pip install "
                        f"torchvision, then {INSTALL}", param="detect") from None
    try:
        import facenet_pytorch
        from facenet_pytorch.models.utils import detect_face
    except ImportError as e:
        raise EvalError(f"face detection needs facenet-pytorch ({e}); install it with: {INSTALL}",
                        param="detect") from None
    try:
        from torchvision.extension import _has_ops

        native = bool(_has_ops())
    except ImportError:
        native = False
    if not native:
        detect_face.batched_nms = _batched_nms
    return facenet_pytorch.MTCNN(keep_all=True, device=device, min_face_size=min_face_size, **kw)


def detect_faces(mtcnn, img, min_prob: float = 0.9) -> list[tuple[float, ...]]:
    """Faces in a PIL image: (x0, y0, x1, y1, probability), clipped to the image, most probable
    first."""
    boxes, probs = mtcnn.detect(img.convert("RGB"))
    if boxes is None:
        return []
    w, h = img.size
    out = []
    for b, p in zip(boxes, probs, strict=True):
        if p is None or p < min_prob:
            continue
        x0, y0 = max(0.0, float(b[0])), max(0.0, float(b[1]))
        x1, y1 = min(float(w), float(b[2])), min(float(h), float(b[3]))
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1, float(p)))
    return sorted(out, key=lambda t: -t[4])


def detect_cache_faces(cache, out_csv, *, min_prob: float = 0.95, min_face_size: int = 20,
                       device: str = "cpu", threads: int | None = 1,
                       log: Callable[[str], None] | None = None, progress: bool = False) -> Path:
    """Detect the faces of every indexed image of ``cache`` into a boxes CSV
    (``path,x0,y0,x1,y1,label`` with the cache's paths, label = ``face``, plus ``prob``).

    ``threads``: torch threads while detecting (MTCNN runs hundreds of tiny operations per
    image; on a busy 2-core machine one thread was 10× faster than two: 1.8 s vs 20 s on an
    ImageNet photo). Resumable: a ``.progress.json`` file next to the CSV records how many
    images are done, with the settings; the same call continues where an interrupted one
    stopped."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _detect_cache_faces(cache, Path(out_csv), min_prob, min_face_size, device, log,
                                   progress)
    finally:
        torch.set_num_threads(before)


def _detect_cache_faces(cache, out_csv: Path, min_prob, min_face_size, device, log,
                        progress) -> Path:
    from ..images import load_image

    state_p = out_csv.with_name(out_csv.name + ".progress.json")
    setup = {"cache": str(cache.path), "fingerprint": cache.fingerprint(), "min_prob": min_prob,
             "min_face_size": min_face_size}
    done, offset = 0, 0
    if out_csv.exists() and state_p.exists():
        st = json.loads(state_p.read_text())
        if st.get("setup") == setup:
            done, offset = int(st["done"]), int(st.get("offset", 0))
            if st.get("complete"):
                return out_csv
    mtcnn = load_mtcnn(device, min_face_size)
    ids = np.flatnonzero(cache.valid)
    try:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        f = open(out_csv, "r+" if done else "w", newline="", encoding="utf-8")
        if done:  # drop rows written after the last checkpoint
            f.seek(offset)
            f.truncate()
    except OSError as e:
        raise OutputError(f"cannot write {out_csv}: {e.strerror or e}", param="boxes") from None
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), initial=done, unit="img", desc="faces")
    with f:
        w = csv.writer(f)
        if not done:
            w.writerow(["path", "x0", "y0", "x1", "y1", "label", "prob"])
        n_faces = 0
        for j in range(done, len(ids)):
            i = int(ids[j])
            try:
                img = load_image(cache.abspath(i))
            except Exception:  # noqa: BLE001 - an unreadable image simply has no faces
                img = None
            if img is not None:
                for x0, y0, x1, y1, p in detect_faces(mtcnn, img, min_prob):
                    w.writerow([str(cache.paths[i]), f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}",
                                f"{y1:.1f}", "face", f"{p:.4f}"])
                    n_faces += 1
            if bar is not None:
                bar.update(1)
            if (j + 1) % 25 == 0 or j + 1 == len(ids):
                f.flush()
                state_p.write_text(json.dumps({"setup": setup, "done": j + 1, "offset": f.tell(),
                                               "complete": j + 1 == len(ids)}))
    if bar is not None:
        bar.close()
    if log:
        log(f"  faces: {n_faces} new boxes in {len(ids) - done} images "
            f"({time.perf_counter() - t0:.0f} s) → {out_csv}")
    if not ids.size:
        state_p.write_text(json.dumps({"setup": setup, "done": 0, "complete": True}))
    return out_csv
