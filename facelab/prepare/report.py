"""The prepare report in ``OUT/.facelab_report/``: a CSV row per crop or rejected photo, a grid
of originals next to their crops, and an HTML page."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab import templates
from facelab._html import image_grid
from facelab._io import write_bytes, write_text
from facelab.data import SampleTable
from facelab.images import ImageError, decode_image, read_image
from facelab.prepare.cache import STATUSES, FileResult
from facelab.prepare.config import PrepareConfig

REPORT_DIR = ".facelab_report"
REPORT_COLUMNS = ("file", "status", "reason", "faces", "crops", "from_cache", "output", "box_width",
                  "box_height", "score")


@dataclass
class PrepareReport:
    """The outcome of :func:`prepare`."""

    out: Path
    counts: dict[str, int]
    results: list[FileResult]
    csv_path: Path
    grid_path: Path | None
    html_path: Path | None
    seconds: float
    table: SampleTable | None = None

    @property
    def images_per_second(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        c = self.counts
        return (f"{len(self.results)} photos in {self.seconds:.1f}s: kept {c.get('kept', 0)}, "
                f"no face {c.get('no_face', 0)}, several faces {c.get('several_faces', 0)} skipped / "
                f"{c.get('kept_from_several', 0)} kept, "
                f"unreadable {c.get('unreadable', 0)} (from cache: {c.get('cached', 0)})")


def write_csv(path: Path, results: list[FileResult], outputs: list[list[str]]) -> Path:
    """One row per crop (a rejected photo: one row without one), with the detection's box
    size in the original photo's pixels and the detector's score: sort by ``box_width`` to
    review the smallest detections first (where a shoulder or a poster passes for a face)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(REPORT_COLUMNS)
    for r, names in zip(results, outputs):
        head = [r.path, r.status, r.reason, r.n_faces, len(r.crops), int(r.cached)]
        if not names:
            w.writerow([*head, "", "", "", ""])
        faces: list[dict | None] = [*r.faces] or [None] * len(names)
        for name, face in zip(names, faces):
            box = face["box"] if face else None
            w.writerow([*head, name, round(box[2] - box[0], 1) if box else "", round(box[3] - box[1], 1) if box else "",
                        face.get("score", "") if face else ""])
    return write_text(path, buf.getvalue())


def _thumb(path: str, side: int) -> np.ndarray | None:
    """A small RGB thumbnail of an original photo, None when it cannot be read."""
    import cv2

    try:
        rgb = decode_image(Path(path).read_bytes(), path, min_side=side)
    except (ImageError, OSError):
        return None
    s = side / max(rgb.shape[:2])
    return cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                      interpolation=cv2.INTER_AREA) if s < 1 else rgb


def write_grid(path: Path, results: list[FileResult], per_status: int) -> Path | None:
    """Originals next to their crops: the rejects (up to ``per_status`` per kind) first,
    then a sample of kept photos."""
    from PIL import Image

    picked: list[FileResult] = []
    for status in (*STATUSES[1:], STATUSES[0]):
        picked += [r for r in results if r.status == status][:per_status if status != "kept" else 16]
    if not picked:
        return None
    images, captions = [], []
    for r in picked:
        images.append(_thumb(r.path, 256))
        captions.append(f"{Path(r.path).name}: {r.status}")
        images.append(read_image(r.crops[0]) if r.crops else None)
        captions.append("crop" if r.crops else (r.reason or r.status))
    buf = io.BytesIO()  # fast PNG settings: the grid is a preview, not an archive
    Image.fromarray(image_grid(images, captions, cols=8, tile=112)).save(buf, format="PNG", compress_level=1)
    return write_bytes(path, buf.getvalue())


def _smallest_detections(results: list[FileResult], n: int = 12) -> list[tuple[str, float, float, float]]:
    """(photo, box width, box height, score) of the ``n`` narrowest kept faces."""
    rows = [(r.path, round(f["box"][2] - f["box"][0], 1), round(f["box"][3] - f["box"][1], 1), f.get("score", 0.0))
            for r in results if r.status == "kept" for f in r.faces]
    return sorted(rows, key=lambda row: row[1])[:n]


def write_html(path: Path, report: PrepareReport, config: PrepareConfig, table: SampleTable) -> Path:
    """report.html (``facelab/templates/prepare_report.html``, autoescaped): counts, config,
    the grid, every rejected photo and the smallest detections."""
    return templates.write(
        path, "prepare_report.html", title="facelab prepare report", source=table.root, source_kind=table.source,
        out=report.out, summary=report.summary(),
        counts=[(k, report.counts.get(k, 0)) for k in (*STATUSES, "kept_from_several", "cached")],
        config=sorted(config.to_dict().items()),
        grid=report.grid_path.read_bytes() if report.grid_path else None,
        rejects=[(r.path, r.status, r.reason) for r in report.results if r.status != "kept"],
        smallest=_smallest_detections(report.results))
