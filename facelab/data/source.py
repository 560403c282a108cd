"""Any source: :func:`load_source` tells the layouts apart and refuses half-written folders."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from facelab.data.celeba import CELEBA_ATTR_FILE, CELEBA_IDENTITY_FILE, CELEBA_IMAGE_DIRS, CELEBA_PARTITION_FILE, \
    find_celeba_root, load_celeba
from facelab.data.csvfile import load_csv
from facelab.data.folder import load_folder
from facelab.data.table import SampleTable
from facelab.errors import DataError
from facelab.folders import check_complete, read_prepared_manifest

log = logging.getLogger(__name__)

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


