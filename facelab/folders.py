"""What facelab writes into an output folder for later commands to read back, writer and
reader side by side so that each format lives in one place:

* ``facelab_prepared.json``: the manifest of a folder written by ``facelab prepare`` (its
  face-preparation config, source, counts, report files); :func:`facelab.data.load_source`
  returns it as :attr:`~facelab.data.SampleTable.prepared`, and training, evaluate and
  people take the crop config from it;
* ``FACELAB_INCOMPLETE.txt``: the marker of a folder that prepare or collect is still
  filling (or was stopped while filling); such a folder is not read as a data source.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from facelab._io import write_json, write_text
from facelab.errors import DataError

PREPARED_MANIFEST = "facelab_prepared.json"
PREPARED_FORMAT = 1
INCOMPLETE_MARKER = "FACELAB_INCOMPLETE.txt"
"""Written into an output folder when a command (prepare, collect) starts filling it and
removed when it finishes: a folder with it was left half-done (a full disk, a kill) and is
not read as a data source."""


def write_prepared_manifest(out: Path, config: dict[str, Any], source: Path, source_kind: str,
                            counts: dict[str, int], photos: int, rows: int, report: dict[str, str | None]) -> Path:
    """``out/facelab_prepared.json``: how the crops in ``out`` were made (``config``: a
    ``PrepareConfig.to_dict()``), from which source, with what outcome and where the report
    files are (relative to ``out``). Written last, so a folder with it is complete."""
    return write_json(out / PREPARED_MANIFEST, {
        "format": PREPARED_FORMAT, "config": config, "source": str(source), "source_kind": source_kind,
        "counts": counts, "photos": photos, "rows": rows, "report": report,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def read_prepared_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a folder written by ``facelab prepare``, None for any other folder."""
    path = folder / PREPARED_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run facelab prepare into this folder again, "
                        f"or delete the file to read the folder as plain photos") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(manifest).__name__}; run facelab "
                        f"prepare into this folder again")
    return manifest


def mark_incomplete(folder: Path, command: str) -> None:
    """Mark ``folder`` as being filled by ``command`` (see :data:`INCOMPLETE_MARKER`)."""
    write_text(folder / INCOMPLETE_MARKER,
               f"{command} has not finished writing this folder (it was stopped, or the disk was full).\n"
               f"Run the same {command} command again: it resumes, and removes this file when done.\n")


def clear_incomplete(folder: Path) -> None:
    (folder / INCOMPLETE_MARKER).unlink(missing_ok=True)


def check_complete(folder: Path) -> None:
    """DataError when ``folder`` was left half-written by prepare or collect."""
    marker = folder / INCOMPLETE_MARKER
    if marker.is_file():
        first = marker.read_text(encoding="utf-8", errors="replace").partition(" has not")[0].strip()
        raise DataError(f"{folder}: incomplete, {first or 'a facelab command'} stopped before it finished "
                        f"({INCOMPLETE_MARKER}); run it again to finish the folder, or delete the folder")
