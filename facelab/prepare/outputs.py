"""Where each crop of a prepared folder goes (names unique on any file system) and the label
files that make the folder load like its source."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from facelab._io import fit_name
from facelab.data import SampleTable, write_celeba_labels, write_csv_labels
from facelab.prepare.cache import FileResult, place_crop

def _output_stems(table: SampleTable) -> list[Path]:
    """Each row's natural output name without extension, relative to the output folder."""
    stems: list[Path] = []
    for src in table.paths:
        if table.source == "celeba":
            rel = Path(src.parent.name if src.parent.name != "img_celeba" else "img_align_celeba") / src.name
        elif table.source == "csv":
            rel = Path("images") / _relative(src, table.root.parent)
        else:
            rel = _relative(src, table.root)
        stems.append(rel.with_suffix(""))
    return stems


def primary_names(table: SampleTable, fmt: str) -> list[str]:
    """Each photo's output name for its first crop, relative to the output folder, no two
    alike (case-insensitively, for macOS and Windows disks): ``x.jpg`` and ``x.png`` in one
    folder become ``x.jpg`` and ``x.png.jpg``. A photo keeps its natural name (the source's
    stem) when it is the first to claim it; names too long for the file system are cut
    and given a short hash (:func:`facelab._io.fit_name`)."""
    suffix = f".{fmt}"
    stems = _output_stems(table)
    natural = [str(st.parent / fit_name(st.name, suffix)) for st in stems]
    names: list[str | None] = [None] * len(stems)
    taken: set[str] = set()
    for i, name in enumerate(natural):
        if name.casefold() not in taken:
            names[i] = name
            taken.add(name.casefold())
    for i, st in enumerate(stems):
        if names[i] is None:
            candidates = (st.name + table.paths[i].suffix, *(f"{st.name}~{j}" for j in range(2, 10 ** 6)))
            names[i] = _first_free(st.parent, candidates, suffix, taken)
    return names  # type: ignore[return-value]


def _first_free(folder: Path, stems: Any, suffix: str, taken: set[str]) -> str:
    """The first ``folder/stem+suffix`` not in ``taken`` (which it joins)."""
    for stem in stems:
        name = str(folder / fit_name(stem, suffix))
        if name.casefold() not in taken:
            taken.add(name.casefold())
            return name
    raise RuntimeError(f"no free output name for {folder / stems}")  # pragma: no cover - 10^6 tries


def _extra_names(primary: str, n: int, taken: set[str]) -> list[str]:
    """Names of a photo's 2nd..nth crops (``multi_face="all"``): ``photo_1.jpg``, ... unless
    another photo or crop has that name (``photo_1.jpg`` beside a three-face ``photo.jpg``),
    then ``photo_1~2.jpg``."""
    p = Path(primary)
    return [_first_free(p.parent, (f"{p.stem}_{k}", *(f"{p.stem}_{k}~{j}" for j in range(2, 10 ** 6))),
                        p.suffix, taken) for k in range(1, n)]


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path("external") / hashlib.sha1(str(path.parent).encode()).hexdigest()[:8] / path.name


def write_outputs(table: SampleTable, results: list[FileResult], out: Path, names: list[str]) -> list[list[str]]:
    """Place every crop under its output name and write the label files; returns each
    photo's output names. The workers placed first crops; one they could not is placed
    here, so that its error stops the run."""
    taken = {n.casefold() for n in names}
    outputs: list[list[str]] = []
    rows: list[tuple[int, str]] = []
    for i, r in enumerate(results):
        mine = [names[i], *_extra_names(names[i], len(r.crops), taken)] if r.crops else []
        for crop, name in zip(r.crops, mine):
            place_crop(crop, out / name)
            rows.append((i, name))
        outputs.append(mine)
    if table.source == "celeba":
        write_celeba_labels(table, rows, out)
    elif table.source == "csv":
        write_csv_labels(table, rows, out)
    return outputs
