"""What ``facelab predict`` found, per photo and face, as a table, CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from facelab.bundle import FacePrediction, prediction_dict
from facelab.tasks import Task

__all__ = ["FaceResult", "PhotoResult", "PredictReport", "report_json"]

FaceResult = FacePrediction  # the name predict's results have always had


@dataclass
class PhotoResult:
    """One input photo: its faces, or why there are none."""

    path: str
    status: str = "ok"
    """``ok``, ``no_face`` or ``unreadable``."""
    reason: str = ""
    faces: list[FaceResult] = field(default_factory=list)
    width: int = 0
    height: int = 0


@dataclass
class PredictReport:
    """Everything ``predict()`` found, with what is needed to read it."""

    model: str
    backend: str
    task: Task
    photos: list[PhotoResult]

    @property
    def n_faces(self) -> int:
        return sum(len(p.faces) for p in self.photos)

    def summary(self) -> str:
        from collections import Counter

        c = Counter(p.status for p in self.photos)
        return (f"{len(self.photos)} photo(s): {self.n_faces} face(s) in {c['ok']}, no face in "
                f"{c['no_face']}, unreadable {c['unreadable']} (model {self.model}, backend {self.backend})")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "task": self.task.to_dict(),
                "photos": [{"path": p.path, "status": p.status, "reason": p.reason, "width": p.width,
                            "height": p.height, "faces": [f.to_dict(self.task) for f in p.faces]}
                           for p in self.photos]}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per face (and one per photo without a face), for CSV and tables."""
        out: list[dict[str, Any]] = []
        for p in self.photos:
            if not p.faces:
                out.append({"path": p.path, "face": "", "status": p.status, "reason": p.reason})
            for i, f in enumerate(p.faces):
                pred = prediction_dict(self.task, f.probs, f.identity)
                row = {"path": p.path, "face": i, "status": p.status, "reason": "",
                       "box": " ".join(f"{v:.0f}" for v in f.face.box), "decision": _decision_text(pred)}
                row.update(pred["probs"])
                out.append(row)
        return out

    def to_csv(self) -> str:
        cols = ["path", "face", "status", "reason", "box", "decision", *self.task.labels]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def table(self, top: int = 3) -> str:
        """A readable table: photo, face, box, decision and the ``top`` most likely labels."""
        lines = [f"{'photo':40s} {'face':>4s}  {'box (x0 y0 x1 y1)':20s} {'decision':24s} top probabilities"]
        for p in self.photos:
            name = _short(_printable(p.path), 40)
            if not p.faces:
                lines.append(f"{name:40s} {'-':>4s}  {p.status}: {_printable(p.reason)}")
            for i, f in enumerate(p.faces):
                pred = prediction_dict(self.task, f.probs, f.identity)
                best = sorted(pred["probs"].items(), key=lambda kv: -kv[1])[:top]
                box = " ".join(f"{v:.0f}" for v in f.face.box)
                probs = "  ".join(f"{k} {v:.2f}" for k, v in best)
                lines.append(f"{name:40s} {i:>4d}  {box:20s} {_decision_text(pred)[:24]:24s} {probs}")
        return "\n".join(lines)


def _decision_text(pred: dict[str, Any]) -> str:
    d = pred["decision"]
    return ",".join(d) if isinstance(d, list) else str(d)


def _printable(text: str) -> str:
    """``text`` on one line: a newline or another control character in a file name is shown
    escaped (``\\n``), so that it cannot break the table."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def report_json(report: PredictReport) -> str:
    return json.dumps(report.to_json(), indent=2)
