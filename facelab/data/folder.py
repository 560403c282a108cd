"""A folder per class (``people/alice/*.jpg``; optionally a split level above it)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from facelab.data.table import SPLIT_ALIASES, SampleTable
from facelab.errors import DataError
from facelab.folders import PREPARED_MANIFEST

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".pgm", ".ppm", ".pnm", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Path) -> tuple[list[Path], dict[str, int]]:
    """All image files below ``root`` (sorted), and counts of what was skipped and why."""
    images: list[Path] = []
    skipped: Counter[str] = Counter()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            if p.is_file():
                skipped["hidden file"] += 1
            continue
        if p.is_symlink() and not p.exists() and is_image_file(p):
            # kept, so that prepare reports it per file ("file not found") instead of it vanishing
            log.warning("%s: broken symbolic link (its target %s is missing)", p, os.readlink(p))
            images.append(p)
            continue
        if not p.is_file():
            continue
        if is_image_file(p):
            images.append(p)
        elif p.name != PREPARED_MANIFEST:
            skipped["not an image (extension)"] += 1
    return images, dict(skipped)


# --------------------------------------------------------------------------- folder per class

def load_folder(root: str | Path) -> SampleTable:
    """A folder per class; optionally a split level above (``train/``, ``valid/``, ``test/``).

    The class of a photo is the first folder below ``root`` (or below the split folder);
    deeper folders are allowed and ignored for labelling. Photos directly in ``root`` are
    an error (they have no class).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    images, skipped = list_images(root)
    top = {p.relative_to(root).parts[0] for p in images if len(p.relative_to(root).parts) > 1}
    with_splits = bool(top) and all(t.lower() in SPLIT_ALIASES for t in top)
    split_like = sorted(t for t in top if t.lower() in SPLIT_ALIASES)
    if split_like and not with_splits:
        others = sorted(top - set(split_like))
        raise DataError(f"{root}: mixes split folders {split_like} with other folders {others[:5]}; "
                        f"put every class folder inside train/, valid/ or test/ (or rename the "
                        f"class folders that are named like a split)")
    depth = 2 if with_splits else 1
    rows: list[tuple[Path, str, str | None]] = []
    loose = 0
    for p in images:
        parts = p.relative_to(root).parts
        if len(parts) <= depth:
            loose += 1
            continue
        split = SPLIT_ALIASES[parts[0].lower()] if with_splits else None
        rows.append((p, parts[depth - 1], split))
    if loose:
        skipped["image outside any class folder"] = loose
        log.warning("%s: %d image(s) are not inside a class folder and were skipped", root, loose)
    if not rows:
        raise DataError(f"{root}: no images found in class folders (expected {root}/CLASS_NAME/*.jpg; "
                        f"extensions {', '.join(IMAGE_EXTENSIONS)})")
    names = sorted({c for _, c, _ in rows})
    index = {n: i for i, n in enumerate(names)}
    _log_skipped(root, skipped)
    return SampleTable(
        paths=[p for p, _, _ in rows],
        labels=np.array([index[c] for _, c, _ in rows], dtype=np.int64),
        label_names=names,
        kind="classes",
        identities=[None] * len(rows),
        splits=[s for _, _, s in rows],
        root=root,
        source="folder",
        skipped=skipped,
    )


def _log_skipped(root: Path, skipped: dict[str, int]) -> None:
    for reason, n in skipped.items():
        log.info("%s: skipped %d file(s): %s", root, n, reason)
