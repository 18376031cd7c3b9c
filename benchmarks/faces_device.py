"""MTCNN face boxes for a folder of images on a CUDA machine — the same :func:`detect_faces`
(probability ≥ 0.95, faces ≥ 20 px, clipped to the image, EXIF-upright images) as
``vfsearch eval boxes --detect faces``, which takes ~9 s per ImageNet image on a busy 2-core
CPU. Writes ``path,x0,y0,x1,y1,label,prob`` (paths relative to the folder) to OUT.

    python benchmarks/faces_device.py FOLDER OUT.csv [WHEEL]

``WHEEL``: a facenet-pytorch wheel to install (``--no-deps``) when the package is missing.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(folder: str, out: str, wheel: str | None = None) -> None:
    import importlib.util

    if importlib.util.find_spec("facenet_pytorch") is None:
        if not wheel:
            raise SystemExit("facenet-pytorch is missing: give its wheel")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               "--target", "/tmp/fnp", wheel])
        sys.path.insert(0, "/tmp/fnp")
    import torch

    from vfsearch.evaluate.faces import detect_faces, load_mtcnn
    from vfsearch.images import load_image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # 10× faster than 2 threads on a busy 2-core machine
    mtcnn = load_mtcnn(device=device, min_face_size=20)
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpeg", ".jpg",
                                                                           ".png"))
    t0 = time.perf_counter()
    n = 0
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "x0", "y0", "x1", "y1", "label", "prob"])
        for p in files:
            for x0, y0, x1, y1, prob in detect_faces(mtcnn, load_image(p), 0.95):
                w.writerow([p.name, f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}", f"{y1:.1f}", "face",
                            f"{prob:.4f}"])
                n += 1
    dt = time.perf_counter() - t0
    print(f"{device}: {n} faces in {len(files)} images, {dt:.1f} s ({dt / max(1, len(files)):.3f}"
          f" s/image); torch {torch.__version__}")


if __name__ == "__main__":
    main(*sys.argv[1:])
