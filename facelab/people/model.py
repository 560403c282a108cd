"""The identity model: a head (logistic regression or k-NN) over the gallery, and the
open-set threshold; the head's weights file."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab._io import save_torch
from facelab.embed import EMBEDDING_DIM
from facelab.errors import DataError
from facelab.people.config import UNKNOWN, FaceEmbedConfig
from facelab.people.gallery import Gallery, knn_scores, open_set_distance

_KNN_TEMPERATURE = 0.05  # softmax temperature over per-person distances (knn head)


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, C: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression -> (weight (L, 128), bias (L,)) of a softmax layer."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise DataError(f"the logreg head needs photos of at least 2 people, got {len(np.unique(y))}")
    with warnings.catch_warnings():  # one photo per person: sklearn warns "regression problem?"
        warnings.simplefilter("ignore", UserWarning)
        clf = LogisticRegression(C=C, max_iter=2000).fit(x, y)
    w = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    b = np.zeros(n_classes, dtype=np.float32)
    if len(clf.classes_) == 2:  # sklearn's binary form: one logit z; softmax([-z/2, z/2]) = sigmoid(z)
        w[clf.classes_] = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
        b[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
    else:
        w[clf.classes_] = clf.coef_
        b[clf.classes_] = clf.intercept_
    missing = sorted(set(range(n_classes)) - set(clf.classes_.tolist()))
    if missing:  # a person without photos can never win
        b[missing] = -1e4
    return w, b


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

@dataclass
class IdentityModel:
    """Head + gallery + open-set threshold: everything the face-embed backend predicts with."""

    labels: list[str]
    gallery: Gallery
    head: str = "logreg"
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    knn_k: int = 3
    threshold: float = 0.6
    rule: str = "centroid"
    """Open-set score: see :data:`OPEN_SET_RULES`."""

    @classmethod
    def fit(cls, labels: Sequence[str], gallery: Gallery, cfg: FaceEmbedConfig,
            threshold: float = 0.6) -> "IdentityModel":
        model = cls(list(labels), gallery, cfg.head, knn_k=cfg.knn_k, threshold=threshold, rule=cfg.unknown_score)
        if cfg.head == "logreg":
            model.weight, model.bias = fit_logreg(gallery.embeddings, gallery.labels, len(labels), cfg.C)
        return model

    def probs(self, emb: np.ndarray) -> np.ndarray:
        """Probabilities over the known people, (N, L) float32."""
        if len(emb) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if self.head == "logreg":
            if self.weight is None or self.bias is None:  # a bug: fit() and from_bundle() set both
                raise RuntimeError("the logreg head has no weights")
            return _softmax(emb @ self.weight.T + self.bias)
        scores = knn_scores(emb, self.gallery, len(self.labels), self.knn_k)
        return _softmax(-np.where(np.isfinite(scores), scores, 1e3) / _KNN_TEMPERATURE)

    def identify(self, emb: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names (``unknown`` beyond the threshold), probabilities (N, L), open-set distances (N,)."""
        probs = self.probs(emb)
        dist = open_set_distance(emb, self.gallery, self.rule)
        names = [self.labels[int(i)] if d <= self.threshold else UNKNOWN
                 for i, d in zip(probs.argmax(axis=1), dist)]
        return names, probs, dist

def _photo_counts(model: IdentityModel) -> dict[str, int]:
    counts = np.bincount(model.gallery.labels, minlength=len(model.labels))
    return {name: int(n) for name, n in zip(model.labels, counts)}


def _save_head(path: Path, model: IdentityModel) -> None:
    """The head as a state_dict of ``nn.Linear(128, L)`` (zeros for the knn head)."""
    import torch

    n = len(model.labels)
    w = model.weight if model.weight is not None else np.zeros((n, EMBEDDING_DIM), np.float32)
    b = model.bias if model.bias is not None else np.zeros(n, np.float32)
    save_torch(path, {"weight": torch.from_numpy(np.asarray(w, np.float32)),
                      "bias": torch.from_numpy(np.asarray(b, np.float32))})

def _load_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["weight"].numpy(), state["bias"].numpy()
