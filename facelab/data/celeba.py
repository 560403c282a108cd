"""The official CelebA layout: its reader and, beside it, the writer of the same files for a
prepared copy (``facelab prepare`` keeps a CelebA source a CelebA folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from facelab._io import write_text
from facelab.data.table import SampleTable
from facelab.errors import ConfigError, DataError

CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_IMAGE_DIRS = ("img_align_celeba", "img_celeba")
CELEBA_PARTITIONS = {"0": "train", "1": "valid", "2": "test"}


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc


def _parse_celeba_attrs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    lines = _read_lines(path)
    if len(lines) < 2:
        raise DataError(f"{path}: expected line 1 = image count and line 2 = 40 attribute names; "
                        f"the file has {len(lines)} line(s)")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}, line 1: expected the number of images, found {lines[0][:60]!r}") from None
    names = lines[1].split()
    if len(names) != 40:
        raise DataError(f"{path}, line 2: expected 40 attribute names, found {len(names)}")
    files: list[str] = []
    values = np.zeros((count, 40), dtype=np.uint8)
    body = [(n, line) for n, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(body) != count:
        raise DataError(f"{path}, line 1: header says {count} images but the file lists {len(body)}")
    for row, (lineno, line) in enumerate(body):
        parts = line.split()
        if len(parts) != 41:
            raise DataError(f"{path}, line {lineno}: expected a file name and 40 values, "
                            f"found {len(parts) - 1} value(s)")
        vals = parts[1:]
        bad = [v for v in vals if v not in ("1", "-1", "0")]
        if bad:
            raise DataError(f"{path}, line {lineno}: attribute values must be 1 or -1, found {bad[0]!r}")
        files.append(parts[0])
        values[row] = [v == "1" for v in vals]
    return names, files, values


def _parse_two_column(path: Path, what: str, valid: Sequence[str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}, line {lineno}: expected 'FILE {what}', found {line[:80]!r}")
        if valid is not None and parts[1] not in valid:
            raise DataError(f"{path}, line {lineno}: {what} values must be {', '.join(valid)}, "
                            f"found {parts[1]!r}")
        out[parts[0]] = parts[1]
    return out


def find_celeba_root(path: Path) -> Path | None:
    """The CelebA root for ``path`` (the root itself or one of its image folders)."""
    for cand in (path, path.parent):
        if (cand / CELEBA_ATTR_FILE).is_file():
            return cand
    return None


def load_celeba(root: str | Path, attrs: Sequence[str] | None = None, images: str = "auto") -> SampleTable:
    """Read the official CelebA layout.

    Args:
        root: the folder holding ``list_attr_celeba.txt`` (or its image folder).
        attrs: keep only these attributes (default: all 40).
        images: ``"img_align_celeba"``, ``"img_celeba"`` or ``"auto"`` (the aligned folder
            when present, else the uncropped one; passing an image folder as ``root``
            picks that folder).
    """
    path = Path(root).resolve()
    celeba_root = find_celeba_root(path)
    if celeba_root is None:
        raise DataError(f"{path}: no {CELEBA_ATTR_FILE} here or in the parent folder; "
                        f"the official CelebA layout needs it")
    if images == "auto" and path.name in CELEBA_IMAGE_DIRS and path != celeba_root:
        images = path.name
    if images == "auto":
        found = [d for d in CELEBA_IMAGE_DIRS if (celeba_root / d).is_dir()]
        if not found:
            raise DataError(f"{celeba_root}: no image folder; expected one of {CELEBA_IMAGE_DIRS}")
        images = found[0]
    if images not in CELEBA_IMAGE_DIRS:
        raise ConfigError(f"images must be 'auto' or one of {CELEBA_IMAGE_DIRS}, got {images!r}")
    image_dir = celeba_root / images
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")

    attr_path = celeba_root / CELEBA_ATTR_FILE
    names, files, values = _parse_celeba_attrs(attr_path)
    missing = [(i, f) for i, f in enumerate(files) if not (image_dir / f).is_file()]
    if missing:
        i, f = missing[0]
        raise DataError(f"{attr_path}, line {i + 3}: {image_dir / f} does not exist "
                        f"({len(missing)} of {len(files)} listed files are missing)")

    identities: list[str | None] = [None] * len(files)
    id_path = celeba_root / CELEBA_IDENTITY_FILE
    if id_path.is_file():
        ids = _parse_two_column(id_path, "PERSON_ID")
        identities = [ids.get(f) for f in files]
    splits: list[str | None] = [None] * len(files)
    part_path = celeba_root / CELEBA_PARTITION_FILE
    if part_path.is_file():
        parts = _parse_two_column(part_path, "partition", valid=("0", "1", "2"))
        splits = [CELEBA_PARTITIONS[parts[f]] if f in parts else None for f in files]

    table = SampleTable(
        paths=[image_dir / f for f in files],
        labels=values,
        label_names=names,
        kind="attributes",
        identities=identities,
        splits=splits,
        root=celeba_root,
        source="celeba",
    )
    return table.select_attributes(attrs) if attrs else table


def write_celeba_labels(table: SampleTable, rows: list[tuple[int, str]], out: Path) -> None:
    lines = [str(len(rows)), " ".join(table.label_names)]
    ids, parts = [], []
    split_code = {"train": "0", "valid": "1", "test": "2"}
    for i, name in rows:
        fname = Path(name).name
        lines.append(fname + " " + " ".join("1" if v else "-1" for v in table.labels[i]))
        if table.identities[i] is not None:
            ids.append(f"{fname} {table.identities[i]}")
        split = table.splits[i]
        if split is not None:
            parts.append(f"{fname} {split_code[split]}")
    write_text(out / CELEBA_ATTR_FILE, "\n".join(lines) + "\n")
    if ids:
        write_text(out / CELEBA_IDENTITY_FILE, "\n".join(ids) + "\n")
    if parts:
        write_text(out / CELEBA_PARTITION_FILE, "\n".join(parts) + "\n")
