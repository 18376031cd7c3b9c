"""Finding images (folder, list file, CSV) and decoding them robustly."""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage, DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "ImageSet",
    "discover",
    "load_image",
    "make_thumbnail",
    "DEFAULT_MAX_PIXELS",
]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
DEFAULT_MAX_PIXELS = 100_000_000  # refuse larger images (decompression bombs)


@dataclass
class ImageItem:
    path: str  # relative to the image root, POSIX separators
    label: str = ""
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class ImageSet:
    root: Path
    items: list[ImageItem]
    meta_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def abspath(self, item: ImageItem) -> Path:
        return self.root / item.path


def _label_from(rel: str, label_from: str | None, pattern: re.Pattern | None) -> str:
    p = Path(rel)
    if pattern is not None:
        m = pattern.search(p.name)
        if not m:
            return ""
        return m.group("label") if "label" in m.re.groupindex else m.group(m.re.groups and 1 or 0)
    if label_from == "parent":
        return p.parent.name if str(p.parent) not in ("", ".") else ""
    return ""


def _abs(p) -> Path:
    """Absolute, normalised path; symlinks are kept (a folder of links to images is fine)."""
    return Path(os.path.normpath(os.path.abspath(Path(p).expanduser())))


def discover(
    source: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    label_from: str | None = "parent",
    label_pattern: str | None = None,
) -> ImageSet:
    """Find images to index.

    ``source`` is a folder (searched recursively), a ``.txt`` file of paths (one per line), or a
    ``.csv`` file with a ``path`` column, an optional ``label`` column and any extra metadata
    columns. Paths are stored relative to ``image_root`` (default: the folder, or the list file's
    folder). Labels come from the parent folder name by default; ``label_pattern`` is a regular
    expression applied to the file name (group ``label`` or group 1), e.g.
    ``r"^n\\d+_(?P<label>.+)\\.\\w+$"`` for ``n01440764_tench.JPEG``; ``label_from=None`` disables.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise DatasetError(f"image source not found: {src}")
    pattern = re.compile(label_pattern) if label_pattern else None
    meta_columns: list[str] = []
    rows: list[tuple[str, str | None, dict]] = []  # (path as given, label or None, meta)

    if src.is_dir():
        root = _abs(image_root) if image_root else _abs(src)
        for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                rows.append((str(_abs(Path(dirpath, name))), None, {}))
    elif src.suffix.lower() == ".csv":
        root = _abs(image_root) if image_root else _abs(src).parent
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise DatasetError(f"{src}: a CSV image list needs a 'path' column")
            meta_columns = [c for c in reader.fieldnames if c not in ("path", "label")]
            for r in reader:
                if not (r.get("path") or "").strip():
                    continue
                label = r.get("label")
                rows.append((r["path"].strip(), label, {c: (r.get(c) or "") for c in meta_columns}))
    else:
        root = _abs(image_root) if image_root else _abs(src).parent
        with open(src, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    rows.append((line, None, {}))

    if image_root is None and not src.is_dir() and rows and \
            all(Path(g).expanduser().is_absolute() for g, _l, _m in rows):
        # a list of absolute paths: their common folder is the root
        root = _abs(os.path.commonpath([str(_abs(Path(g).expanduser()).parent)
                                        for g, _l, _m in rows]))
    items: list[ImageItem] = []
    seen: set[str] = set()
    for given, label, meta in rows:
        p = Path(given).expanduser()
        absolute = _abs(p if p.is_absolute() else root / p)
        try:
            rel = absolute.relative_to(root).as_posix()
        except ValueError:
            raise DatasetError(
                f"{given} is outside the image root {root}; give an image root that holds every "
                "image", param="image_root"
            ) from None
        if rel in seen:
            continue
        seen.add(rel)
        if label is None:
            label = _label_from(rel, label_from, pattern)
        elif pattern is not None:
            label = _label_from(rel, label_from, pattern) or label
        items.append(ImageItem(rel, label or "", meta))
    if not items:
        raise DatasetError(f"no images found in {src}")
    return ImageSet(root, items, meta_columns)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(
    path: str | os.PathLike | bytes | io.BytesIO, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode an image file (or bytes) to an upright 8-bit RGB PIL image.

    Handles EXIF orientation, grayscale, CMYK, palette with transparency, 16-bit PNG.
    Raises :class:`BadImage` with the reason for anything unreadable.
    """
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    name = "upload" if isinstance(path, (bytes, io.BytesIO)) else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"{name}: {w}x{h} = {w * h:,} pixels exceeds the cap of "
                                   f"{max_pixels:,}")
                if w < 1 or h < 1:
                    raise BadImage(f"{name}: empty image ({w}x{h})")
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im)
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage(f"{name}: file not found") from None
    except IsADirectoryError:
        raise BadImage(f"{name}: is a directory") from None
    except PermissionError:
        raise BadImage(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        size = os.path.getsize(path) if isinstance(path, (str, os.PathLike)) else None
        why = "empty file (0 bytes)" if size == 0 else "not a recognised image format"
        raise BadImage(f"{name}: {why}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{name}: decompression bomb refused ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            msg = f"truncated or corrupt image data ({msg})"
        raise BadImage(f"{name}: {msg}") from None


def make_thumbnail(img: Image.Image, max_side: int = 256, quality: int = 85) -> bytes:
    """A JPEG thumbnail (longest side ``max_side``) with the image's aspect ratio."""
    t = img.copy()
    t.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    t.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
