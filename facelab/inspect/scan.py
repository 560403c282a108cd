"""Reading every photo once: size, format, brightness, contrast, colour, hashes."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab._io import os_reason
from facelab._phash import fingerprint
from facelab._progress import progress as progress_bar
from facelab.images import ImageError, decode_image
from facelab.inspect.config import ImageStats


def _stats(path: Path) -> ImageStats:
    import hashlib

    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as exc:  # a symbolic link loop is not an "empty file"
        raise ImageError(path, os_reason(exc)) from None
    rgb = decode_image(data, name=str(path))
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or path.suffix.lstrip(".").upper()
    small = rgb[:: max(1, rgb.shape[0] // 128), :: max(1, rgb.shape[1] // 128)].astype(np.float32)
    luma = small @ np.array([0.299, 0.587, 0.114], np.float32)
    chroma = small.max(axis=2) - small.min(axis=2)
    return ImageStats(width=rgb.shape[1], height=rgb.shape[0], format=fmt,
                      greyscale=bool(chroma.max() <= 2.0), brightness=float(luma.mean()),
                      contrast=float(luma.std()), saturation=float(chroma.mean()),
                      sha256=hashlib.sha256(data).hexdigest(), fp=fingerprint(rgb))


def scan(paths: Sequence[Path], workers: int = 2, progress: bool = True) -> tuple[list[ImageStats | None], dict[int, str]]:
    """Statistics of every photo (None where unreadable) and the reason per unreadable index."""
    def one(p: Path) -> ImageStats | str:
        try:
            return _stats(p)
        except ImageError as exc:
            return exc.reason
        except OSError as exc:
            return f"cannot be read ({exc})"

    stats: list[ImageStats | None] = []
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(workers) as pool, progress_bar(len(paths), "inspect", enabled=progress) as bar:
        for i, r in enumerate(pool.map(one, paths)):
            bar.update()
            if isinstance(r, str):
                errors[i] = r
                stats.append(None)
            else:
                stats.append(r)
    return stats, errors
