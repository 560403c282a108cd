"""The gallery: every enrolled photo's embedding and person, and the distances the heads
and the open-set rule read off it."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab._io import write_bytes
from facelab.embed import distance


@dataclass
class Gallery:
    """Enrolled photos: descriptors (N, 128), person index (N,), source file names (N,)."""

    embeddings: np.ndarray
    labels: np.ndarray
    names: list[str]

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, embeddings=self.embeddings.astype(np.float32), labels=self.labels.astype(np.int64),
                 names=np.array(self.names, dtype=str))
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Gallery":
        with np.load(path) as z:
            return cls(z["embeddings"].astype(np.float32), z["labels"].astype(np.int64),
                       [str(n) for n in z["names"]])

    def add(self, embeddings: np.ndarray, label: int, names: Sequence[str]) -> "Gallery":
        return Gallery(np.concatenate([self.embeddings, embeddings]).astype(np.float32),
                       np.concatenate([self.labels, np.full(len(embeddings), label, dtype=np.int64)]),
                       self.names + list(names))

def knn_scores(emb: np.ndarray, gallery: Gallery, n_classes: int, k: int) -> np.ndarray:
    """Per person, the mean distance to their ``k`` nearest enrolled photos: (N, L)."""
    d = distance(emb, gallery.embeddings)
    out = np.full((len(emb), n_classes), np.inf, dtype=np.float32)
    for c in range(n_classes):
        cols = d[:, gallery.labels == c]
        if cols.shape[1]:
            out[:, c] = np.sort(cols, axis=1)[:, :k].mean(axis=1)
    return out


def nearest_distance(emb: np.ndarray, gallery: Gallery, exclude: int | None = None) -> np.ndarray:
    """Distance from each row of ``emb`` to the nearest enrolled photo (optionally of
    anyone but person ``exclude``): the ``nearest`` open-set score."""
    keep = gallery.labels != exclude if exclude is not None else slice(None)
    return distance(emb, gallery.embeddings[keep]).min(axis=1)


def _person_sums(gallery: Gallery) -> tuple[np.ndarray, np.ndarray]:
    """Per person: the sum of their embeddings (L, D) and their number of photos (L,)."""
    n = int(gallery.labels.max()) + 1 if len(gallery.labels) else 0
    sums = np.zeros((n, gallery.embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, gallery.labels, gallery.embeddings.astype(np.float64))
    return sums, np.bincount(gallery.labels, minlength=n)


def open_set_distance(emb: np.ndarray, gallery: Gallery, rule: str = "centroid") -> np.ndarray:
    """The open-set score of each row of ``emb``: the distance to the nearest person's
    mean embedding (``centroid``) or to the nearest enrolled photo (``nearest``)."""
    if not len(emb):
        return np.zeros(0, dtype=np.float32)
    if rule == "nearest":
        return nearest_distance(emb, gallery)
    sums, counts = _person_sums(gallery)
    keep = counts > 0
    return distance(emb, sums[keep] / counts[keep, None]).min(axis=1)
