"""The two files collect reads: the user's URL list (text or CSV) and ``OUT/manifest.csv``
(written back atomically as the run goes, so a re-run skips what is settled)."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterable, Iterator

from facelab._io import atomic_path
from facelab.collect.config import MANIFEST_COLUMNS, Entry
from facelab.errors import DataError

def _safe_label(label: str, where: str) -> str:
    label = label.strip()
    if not label:
        return ""
    clean = re.sub(r"[^\w.+-]+", "_", label).strip("._")
    if not clean:
        raise DataError(f"{where}: label {label!r} cannot be used as a folder name")
    return clean


def read_url_list(path: str | Path) -> list[Entry]:
    """Parse a URL list (text or CSV). Malformed URLs become ``invalid`` entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: URL list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc
    rows = list(_rows(text, csv_like=path.suffix.lower() == ".csv"))
    entries = [_entry(path, lineno, cells) for lineno, cells in rows]
    if not entries:
        raise DataError(f"{path}: no URLs found (one URL per line, optionally followed by a label)")
    return entries


def _rows(text: str, csv_like: bool) -> Iterator[tuple[int, list[str]]]:
    lines = text.splitlines()
    if csv_like:
        parsed = list(csv.reader(lines))
        header = [c.strip().lower() for c in parsed[0]] if parsed else []
        if "url" in header:
            ucol = header.index("url")
            lcol = next((header.index(c) for c in ("label", "class", "folder") if c in header), None)
            for lineno, cells in enumerate(parsed[1:], start=2):
                if any(c.strip() for c in cells):
                    yield lineno, [cells[ucol] if ucol < len(cells) else "",
                                   cells[lcol] if lcol is not None and lcol < len(cells) else ""]
            return
        for lineno, cells in enumerate(parsed, start=1):
            if cells and cells[0].strip() and not cells[0].lstrip().startswith("#"):
                yield lineno, cells[:2]
        return
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, re.split(r"[\s,]+", line, maxsplit=1)


def _entry(path: Path, lineno: int, cells: list[str]) -> Entry:
    url = cells[0].strip()
    label = _safe_label(cells[1] if len(cells) > 1 else "", f"{path}, line {lineno}")
    e = Entry(url=url, label=label, line=lineno)
    if not re.match(r"^https?://[^\s/]+", url):
        e.status, e.reason = "invalid", f"line {lineno}: not an http(s) URL"
    return e


# --------------------------------------------------------------------------- manifest

def read_manifest(path: Path) -> dict[tuple[str, str], Entry]:
    """Earlier rows keyed by (url, label); a missing manifest is an empty one."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        url, label, file, status, reason, sha256 = (r.get(k) or "" for k in MANIFEST_COLUMNS)
        out[(url, label)] = Entry(url, label, file=file, status=status, reason=reason, sha256=sha256)
    return out


def write_manifest(path: Path, entries: Iterable[Entry]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for e in entries:
            w.writerow(e.row())


