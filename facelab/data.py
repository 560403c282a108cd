"""Data sources: every way users keep face photos, read into one uniform sample table.

Three layouts are understood, and :func:`load_source` tells them apart:

* a folder per class (``people/alice/*.jpg``, nested folders allowed below the class
  folder; an optional split level above it: ``train/alice``, ``valid/alice``, ``test/alice``);
* the official CelebA layout (``img_align_celeba/`` or ``img_celeba/``,
  ``list_attr_celeba.txt``, optional ``identity_CelebA.txt`` and ``list_eval_partition.txt``);
* a CSV file with a path column and one or more label columns.

A folder written by ``facelab prepare`` keeps its source's layout, so it loads through the
same code; its ``facelab_prepared.json`` is returned as :attr:`SampleTable.prepared`.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab.errors import DataError
from facelab.folders import (INCOMPLETE_MARKER, PREPARED_MANIFEST, check_complete, clear_incomplete, mark_incomplete,
                             read_prepared_manifest)

__all__ = ["DataError", "SampleTable", "load_source",
           "INCOMPLETE_MARKER", "PREPARED_MANIFEST", "check_complete", "clear_incomplete", "mark_incomplete"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".pgm", ".ppm", ".pnm", ".tif", ".tiff")
SPLITS = ("train", "valid", "test")
LABEL_KINDS = ("classes", "attributes")
# Folder names accepted for each split (ImageNet/fastai style trees).
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                  "validation": "valid", "test": "test", "testing": "test"}
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_IMAGE_DIRS = ("img_align_celeba", "img_celeba")
_CELEBA_PARTITIONS = {"0": "train", "1": "valid", "2": "test"}
_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "img")
_META_COLUMNS = ("identity", "person", "person_id", "split", "partition")



@dataclass
class SampleTable:
    """One row per photo, whatever layout it came from.

    Attributes:
        paths: absolute image paths, length N.
        labels: ``kind == "classes"``: int64 array of shape (N,), an index into
            ``label_names``. ``kind == "attributes"``: uint8 array of shape (N, L) with
            values in {0, 1} (CelebA's -1 is converted to 0 once, here).
        label_names: class names (sorted) or attribute names (file order), length L.
        kind: one of :data:`LABEL_KINDS`.
        identities: person id per row, or None where unknown.
        splits: one of :data:`SPLITS` per row, or None where the source has no split.
        root: the folder (or CSV file) the table was read from.
        source: ``"folder"``, ``"celeba"`` or ``"csv"``.
        prepared: the preparation manifest when the folder was written by
            ``facelab prepare`` (its face-preparation config), else None.
        skipped: reason -> count of files passed over while listing (hidden, not an image).
        sources: the original photo of each row when ``paths`` are face crops made from it
            (set by ``prepare_table``), else None: reports name the photo, not the crop.
    """

    paths: list[Path]
    labels: np.ndarray
    label_names: list[str]
    kind: str
    identities: list[str | None]
    splits: list[str | None]
    root: Path
    source: str
    prepared: dict | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    sources: list[Path] | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if len(self.identities) != n or len(self.splits) != n or len(self.labels) != n:
            raise ValueError("paths, labels, identities and splits must have the same length")
        bad = {s for s in self.splits if s is not None and s not in SPLITS}
        if bad:
            raise ValueError(f"unknown split(s) {sorted(bad)}; valid: {SPLITS}")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError("sources must have one entry per row")

    def source_of(self, i: int) -> Path:
        """The photo row ``i`` came from (the crop itself where no source is known)."""
        return self.sources[i] if self.sources is not None else self.paths[i]

    def with_identities(self, identities: Sequence[str | None]) -> "SampleTable":
        return replace(self, identities=list(identities))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_identities(self) -> bool:
        return any(i is not None for i in self.identities)

    @property
    def has_splits(self) -> bool:
        return any(s is not None for s in self.splits)

    def subset(self, index: Sequence[int] | np.ndarray) -> "SampleTable":
        """Rows ``index`` (ints or a boolean mask) as a new table."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            identities=[self.identities[i] for i in idx],
            splits=[self.splits[i] for i in idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx],
        )

    def split(self, name: str) -> "SampleTable":
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {SPLITS}")
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def select_attributes(self, names: Sequence[str]) -> "SampleTable":
        """Keep only the attribute columns ``names`` (CelebA's ``--attrs Smiling,Eyeglasses``)."""
        if self.kind != "attributes":
            raise DataError(f"{self.root}: attributes can only be selected from an attribute "
                            f"source (CelebA or a multi-column CSV); this one has classes {self.label_names}")
        unknown = [n for n in names if n not in self.label_names]
        if unknown:
            raise DataError(f"unknown attribute(s) {unknown}; valid names: {', '.join(self.label_names)}")
        cols = [self.label_names.index(n) for n in names]
        return replace(self, labels=self.labels[:, cols], label_names=list(names))

    def label_text(self, i: int) -> str:
        """Human-readable label of row ``i`` (class name, or the positive attributes)."""
        if self.kind == "classes":
            return self.label_names[int(self.labels[i])]
        on = [n for n, v in zip(self.label_names, self.labels[i]) if v]
        return ",".join(on) if on else "(none)"


# --------------------------------------------------------------------------- listing

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
    with_splits = bool(top) and all(t.lower() in _SPLIT_ALIASES for t in top)
    split_like = sorted(t for t in top if t.lower() in _SPLIT_ALIASES)
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
        split = _SPLIT_ALIASES[parts[0].lower()] if with_splits else None
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


# --------------------------------------------------------------------------- CelebA

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
        raise DataError(f"images must be 'auto' or one of {CELEBA_IMAGE_DIRS}, got {images!r}")
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
        splits = [_CELEBA_PARTITIONS[parts[f]] if f in parts else None for f in files]

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


# --------------------------------------------------------------------------- CSV

def load_csv(path: str | Path, path_column: str | None = None,
             label_columns: Sequence[str] | None = None) -> SampleTable:
    """A CSV with a path column and label column(s).

    One label column of names -> classes. Several columns (or one) of 0/1 (or -1/1)
    values -> attributes. Optional ``identity`` and ``split`` columns are used as such.
    Relative paths are resolved against the CSV's folder.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:  # utf-8-sig: Excel writes a byte-order mark before the header
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc}); save the CSV as UTF-8") from exc
    if not header:
        raise DataError(f"{path}, line 1: empty CSV (expected a header with a path column)")
    lower = {h.lower(): h for h in header}
    pcol = path_column or next((lower[c] for c in _PATH_COLUMNS if c in lower), None)
    if pcol is None or pcol not in header:
        raise DataError(f"{path}, line 1: no path column; name one of {_PATH_COLUMNS} "
                        f"or pass path_column (columns: {header})")
    id_col = next((lower[c] for c in ("identity", "person", "person_id") if c in lower), None)
    split_col = next((lower[c] for c in ("split", "partition") if c in lower), None)
    lcols = list(label_columns) if label_columns else [
        h for h in header if h not in (pcol, id_col, split_col)]
    if not lcols:
        raise DataError(f"{path}, line 1: no label column (columns: {header})")
    if not rows:
        raise DataError(f"{path}: the CSV has a header but no rows")
    raw = [[(r.get(c) or "").strip() for c in lcols] for r in rows]
    for lineno, (r, vals) in enumerate(zip(rows, raw), start=2):
        if r.get(pcol) is None or not all(vals):
            raise DataError(f"{path}, line {lineno}: missing value(s); every row needs a path and "
                            f"the label column(s) {lcols}")

    paths, splits, ids = [], [], []
    for lineno, r in enumerate(rows, start=2):
        p = Path(r[pcol])
        p = p if p.is_absolute() else (path.parent / p)
        if not p.is_file():
            raise DataError(f"{path}, line {lineno}: image {p} does not exist")
        paths.append(p.resolve())
        ids.append(r[id_col] if id_col and r[id_col] else None)
        s = r[split_col].strip().lower() if split_col and r[split_col] else None
        if s is not None and s not in _SPLIT_ALIASES and s not in _CELEBA_PARTITIONS:
            raise DataError(f"{path}, line {lineno}: unknown split {s!r}; use train/valid/test")
        splits.append(_CELEBA_PARTITIONS.get(s, _SPLIT_ALIASES.get(s)) if s else None)

    numeric = all(v in ("0", "1", "-1") for row in raw for v in row)
    if numeric:
        labels = np.array([[v == "1" for v in row] for row in raw], dtype=np.uint8)
        kind, names = "attributes", list(lcols)
    elif len(lcols) == 1:
        names = sorted({row[0] for row in raw})
        labels = np.array([names.index(row[0]) for row in raw], dtype=np.int64)
        kind = "classes"
    else:
        raise DataError(f"{path}: several label columns {lcols} must hold 0/1 (or -1/1) values; "
                        f"for a class name use a single label column")
    return SampleTable(paths=paths, labels=labels, label_names=names, kind=kind,
                       identities=ids, splits=splits, root=path, source="csv")


# --------------------------------------------------------------------------- dispatch

def load_source(path: str | Path, attrs: Sequence[str] | None = None, **kwargs) -> SampleTable:
    """Read any supported source; the layout is detected from what is there.

    Args:
        path: a class-folder tree, a CelebA root (or its image folder), or a CSV file.
        attrs: keep only these attributes (attribute sources only).
        **kwargs: passed to the specific loader (``images=`` for CelebA,
            ``path_column=``/``label_columns=`` for CSV).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    check_complete(p if p.is_dir() else p.parent)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DataError(f"{p}: a data source is a folder or a .csv file")
        table = load_csv(p, **kwargs)
        if attrs:
            table = table.select_attributes(attrs)
    elif find_celeba_root(p.resolve()) is not None:
        table = load_celeba(p, attrs=attrs, **kwargs)
    elif _looks_like_celeba(p):
        raise DataError(f"{p / CELEBA_ATTR_FILE}: missing; this folder has the CelebA layout "
                        f"({', '.join(_celeba_markers(p))}) and its labels come from that file")
    else:
        table = load_folder(p)
        if attrs:
            table = table.select_attributes(attrs)
    if table.root.is_dir() and table.root != p:
        check_complete(table.root)
    if table.root.is_dir():
        table.prepared = read_prepared_manifest(table.root)
    log.info("%s: %d photos, %s %s", table.root, len(table), len(table.label_names), table.kind)
    return table


def _celeba_markers(p: Path) -> list[str]:
    names = (*CELEBA_IMAGE_DIRS, CELEBA_IDENTITY_FILE, CELEBA_PARTITION_FILE)
    return [n for n in names if (p / n).exists()]


def _looks_like_celeba(p: Path) -> bool:
    """A CelebA root that lost its attribute file (so it is not read as one class per folder)."""
    return bool(_celeba_markers(p))


def _log_skipped(root: Path, skipped: dict[str, int]) -> None:
    for reason, n in skipped.items():
        log.info("%s: skipped %d file(s): %s", root, n, reason)
