"""A CSV file with a path column and label column(s): its reader and, beside it, the writer of
the ``labels.csv`` of a prepared copy."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab._io import write_text
from facelab.data.celeba import CELEBA_PARTITIONS
from facelab.data.table import SPLIT_ALIASES, SampleTable
from facelab.errors import DataError

_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "img")
_META_COLUMNS = ("identity", "person", "person_id", "split", "partition")


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
        if s is not None and s not in SPLIT_ALIASES and s not in CELEBA_PARTITIONS:
            raise DataError(f"{path}, line {lineno}: unknown split {s!r}; use train/valid/test")
        splits.append(CELEBA_PARTITIONS.get(s, SPLIT_ALIASES.get(s)) if s else None)

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


def write_csv_labels(table: SampleTable, rows: list[tuple[int, str]], out: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    label_cols = table.label_names if table.kind == "attributes" else ["label"]
    w.writerow(["path", *label_cols, "identity", "split"])
    for i, name in rows:
        labels = ([int(v) for v in table.labels[i]] if table.kind == "attributes"
                  else [table.label_names[int(table.labels[i])]])
        w.writerow([name, *labels, table.identities[i] or "", table.splits[i] or ""])
    write_text(out / "labels.csv", buf.getvalue())
