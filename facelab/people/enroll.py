"""Enroll: add photos of a new or known person to a face-embed run in seconds (head refitted,
threshold recalibrated, bundle rewritten atomically; the embedding is never retrained)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from facelab._io import write_json
from facelab.bundle import bundle_dir_of
from facelab.embed import embed_images
from facelab.errors import ConfigError, DataError
from facelab.people.calibration import _calibration_fields, calibrate_threshold, open_set_scores
from facelab.people.config import UNKNOWN, FaceEmbedConfig
from facelab.people.gallery import Gallery
from facelab.people.model import IdentityModel, _photo_counts, _save_head
from facelab.people.predictor import EmbeddingPredictor
from facelab.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class EnrollReport:
    """What ``enroll`` did."""

    person: str
    added: int
    skipped: list[str] = field(default_factory=list)
    new_person: bool = False
    people: int = 0
    seconds: float = 0.0
    threshold: tuple[float, float] = (float("nan"), float("nan"))
    """The unknown threshold before and after (recalibrated on the grown gallery)."""

    def summary(self) -> str:
        what = "new person" if self.new_person else "known person"
        skipped = f"; skipped {len(self.skipped)} photo(s) without a face" if self.skipped else ""
        return (f"enrolled {self.added} photo(s) of {self.person!r} ({what}); the run now knows "
                f"{self.people} people{skipped}; unknown threshold {self.threshold[0]:.3f} -> "
                f"{self.threshold[1]:.3f} ({self.seconds:.1f} s)")


def enroll(run: str | Path, person: str, photos: Sequence[str | Path], progress: bool = False) -> EnrollReport:
    """Add ``photos`` of ``person`` (new or already known) to a face-embed run.

    The photos are embedded, added to the gallery, the head is refitted on the whole
    gallery and the unknown threshold recalibrated leave-one-out on it (seconds). The bundle
    is updated atomically: new head/gallery files first, bundle.json last, old files then
    removed; a stale ``model.onnx`` is removed (re-run ``facelab export``).
    """
    t0 = time.perf_counter()
    person = person.strip()
    if not person or person == UNKNOWN:
        raise ConfigError(f"invalid person name {person!r}: must be non-empty and not {UNKNOWN!r}")
    bdir = bundle_dir_of(run)
    predictor = EmbeddingPredictor.from_bundle(bdir)
    photos = [Path(p) for p in photos]
    if not photos:
        raise ConfigError("no photos given: pass one or more photo files of the person")
    emb, found = embed_images(photos, predictor.info.prepare, progress=progress)
    skipped = [str(p) for p, ok in zip(photos, found) if not ok]
    if not found.any():
        raise DataError(f"no face found in any of the {len(photos)} photo(s) of {person!r}; "
                         f"nothing enrolled")
    model = predictor.model
    new_person = person not in model.labels
    labels = model.labels + [person] if new_person else list(model.labels)
    gallery = model.gallery.add(emb[found], labels.index(person), [str(p) for p, ok in zip(photos, found) if ok])
    m = predictor.bundle["model"]
    cfg = FaceEmbedConfig(head=m["head"], knn_k=int(m["kwargs"].get("knn_k", 3)), C=float(m["kwargs"].get("C", 10.0)),
                          unknown_score=model.rule)
    new_model = IdentityModel.fit(labels, gallery, cfg, model.threshold)
    open_set = _recalibrated(predictor.bundle.get("open_set") or {}, gallery, new_model)
    _write_enrolled(bdir, {**predictor.bundle, "open_set": open_set}, new_model)
    return EnrollReport(person, int(found.sum()), skipped, new_person, len(labels), time.perf_counter() - t0,
                        (model.threshold, new_model.threshold))

def _recalibrated(open_set: dict, gallery: Gallery, model: IdentityModel) -> dict:
    """The open-set section after an enrolment: the threshold recalibrated leave-one-out
    over the grown gallery (same target), or kept when the gallery cannot calibrate."""
    genuine, impostor = open_set_scores(gallery, model.rule)
    cal = calibrate_threshold(genuine, impostor, open_set.get("target_far"), quiet=True)
    if not cal.calibrated:
        return open_set
    model.threshold = cal.threshold
    return {**open_set, **_calibration_fields(cal, genuine, impostor)}


def _write_enrolled(bdir: Path, bundle: dict, model: IdentityModel) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.perf_counter_ns() % 100000:05d}"
    old = dict(bundle["model"]["files"])
    files = {"head": f"weights-{stamp}.pt", "gallery": f"gallery-{stamp}.npz"}
    _save_head(bdir / files["head"], model)
    model.gallery.save(bdir / files["gallery"])
    new = dict(bundle)
    new["model"] = {**bundle["model"], "files": files, "weights": files["head"]}
    new["task"] = Task("multiclass", tuple(model.labels)).to_dict()
    new["people"] = {**bundle.get("people", {}), "photos": _photo_counts(model)}
    write_json(bdir / "bundle.json", new)
    for name in old.values():
        if name not in files.values():
            (bdir / name).unlink(missing_ok=True)
    onnx = bdir / "model.onnx"
    if onnx.exists():
        onnx.unlink()
        log.warning("%s removed: it predates the enrolment; run `facelab export` again", onnx)
