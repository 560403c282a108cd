"""People: tell specific people apart from a few photos each, verify two faces, say "unknown".

The ``face-embed`` model is dlib's pretrained 128-d face embedding (:mod:`facelab.embed`)
on the crops of ``facelab prepare``, plus a small trained head:

* ``logreg`` (default): multinomial logistic regression on the embeddings;
* ``knn``: nearest enrolled photos (no training at all).

Open set: every query's *distance to the nearest person's mean embedding* (or, with
``unknown_score="nearest"``, to the nearest enrolled photo) is compared with a threshold
calibrated on the enrolled photos themselves, without setting any aside: each photo
left out in turn against the rest of the gallery (genuine: what a new photo of a known
person looks like) and, person by person, that person's photos against the
gallery without them (impostors: exactly what a stranger looks like to the model). A
face farther than the threshold is reported as ``unknown``. The threshold, its
false-accept / false-reject rates and the trade-off at other false-accept targets are
stored in ``bundle.json["open_set"]``; ``target_far`` (``-M target_far=0.01``) picks
the point of that trade-off.

``facelab enroll`` adds photos (of a new or a known person) to the gallery, refits the
head and recalibrates the threshold in seconds; the embedding network is never retrained.

One concern per module: :mod:`~facelab.people.config` (settings, shared names),
:mod:`~facelab.people.identities` (people as classes, the per-person split),
:mod:`~facelab.people.gallery` (embeddings per person, distances),
:mod:`~facelab.people.model` (the heads), :mod:`~facelab.people.calibration` (the open-set
threshold), :mod:`~facelab.people.training` (a face-embed run),
:mod:`~facelab.people.predictor` (:class:`EmbeddingPredictor`), :mod:`~facelab.people.verify`,
:mod:`~facelab.people.enroll` and :mod:`~facelab.people.onnx` (the head as ONNX). Every
public name is importable from ``facelab.people``.
"""
from __future__ import annotations

from facelab.people.calibration import (
    CALIBRATION_RULE,
    SCORE_TEXT,
    TRADEOFF_FARS,
    Calibration,
    calibrate_threshold,
    open_set_rule,
    open_set_scores,
    pair_scores,
    tradeoff,
)
from facelab.people.config import BACKEND, BUNDLE_DIR, HEADS, OPEN_SET_RULES, UNKNOWN, FaceEmbedConfig
from facelab.people.enroll import EnrollReport, enroll
from facelab.people.gallery import Gallery, knn_scores, nearest_distance, open_set_distance
from facelab.people.identities import identity_table, split_per_person
from facelab.people.model import IdentityModel, fit_logreg
from facelab.people.onnx import export_onnx
from facelab.people.predictor import EmbeddingPredictor, PersonPrediction, load
from facelab.people.training import train_face_embed
from facelab.people.verify import VerifyResult, verify

__all__ = ["BACKEND", "BUNDLE_DIR", "CALIBRATION_RULE", "Calibration", "EmbeddingPredictor", "EnrollReport",
           "FaceEmbedConfig", "Gallery", "HEADS", "IdentityModel", "OPEN_SET_RULES", "PersonPrediction",
           "SCORE_TEXT", "TRADEOFF_FARS", "UNKNOWN", "VerifyResult", "calibrate_threshold", "enroll",
           "export_onnx", "fit_logreg", "identity_table", "knn_scores", "load", "nearest_distance",
           "open_set_distance", "open_set_rule", "open_set_scores", "pair_scores",
           "split_per_person", "tradeoff", "train_face_embed", "verify"]
