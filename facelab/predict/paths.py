"""Which files ``facelab predict`` reads: files, folders (recursive) and globs -> photo paths,
keeping names that cannot be read so they are reported, not dropped."""
from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Sequence

from facelab.errors import NotFound

__all__ = ["IMAGE_SUFFIXES", "expand_paths"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")


def expand_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive, image suffixes) and globs -> sorted unique photo paths.

    A name that matches nothing, a broken link and a symbolic link loop stay in the list
    (logged): predict reports each as unreadable with its reason and goes on with the other
    paths. Nothing at all to predict is an error (a typo should not silently predict nothing)."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found += _photos_in(path)
        elif path.is_file() or path.is_symlink():
            found.append(path)
        elif glob.has_magic(text):
            hits = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not hits:
                log.warning("%s: the pattern matches no file", text)
            found += hits
        else:
            log.warning("%s: no such file or folder", text)
            found.append(path)
    if not any(p.is_file() for p in found):
        raise NotFound(f"{', '.join(map(str, inputs))}: no photo to predict (no such file, or "
                                "nothing with an image suffix)")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(_key(p), p)
    return list(unique.values())


def _photos_in(folder: Path) -> list[Path]:
    """Image files under ``folder``; a link with an image name that leads nowhere (broken, or a
    loop) is kept, so that it is reported instead of silently dropped."""
    photos = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            photos.append(p)
        elif p.is_symlink():
            log.warning("%s: %s", p, _link_problem(p))
            photos.append(p)
    return photos


def _link_problem(path: Path) -> str:
    import errno
    import os

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        return f"broken symbolic link (its target {os.readlink(path)} is missing)"
    return "not a regular file"


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        return path.absolute()
