"""Who is who when nobody said: photos grouped into people by face embedding.

A folder of glasses / no-glasses photos rarely comes with an identity file, yet 30 photos
of one person in a class make a random validation split flatter the model: it is checked
on the faces it trained on. Here every crop gets dlib's 128-d descriptor (cached on disk,
see :mod:`facelab.embed`) and average-linkage clustering cuts the tree at dlib's same-person
distance (0.6), so each group is (mostly) one person. Training then
splits by group, and reports how many people each class really has.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab.embed import embed_paths, template_landmarks

log = logging.getLogger(__name__)

#: Average-linkage cut at dlib's same-person distance. On celeba-mini without its identity
#: file (900 photos, 30 people) it gives 43 groups: 99.6% of photos share a group only with
#: the same person, 97.1% sit in their person's largest group (0.5: 133 groups, 77.9%;
#: 0.65: 32 groups but 92.6% pure).
GROUP_DISTANCE = 0.6
#: Groups this small are strays; they join the nearest larger group's centre within
#: STRAY_DISTANCE (celeba-mini: 34 groups instead of 43; 99.0% pure, 97.7% of photos in their
#: person's largest group instead of 97.1%).
STRAY_SIZE = 2
STRAY_DISTANCE = 0.7
#: A class whose largest group holds more than this share of its photos is "dominated".
DOMINANT_SHARE = 0.5
#: Fewer people than this in a class: validation on new people says little.
MIN_PEOPLE = 3


def cluster_embeddings(emb: np.ndarray, distance: float = GROUP_DISTANCE) -> np.ndarray:
    """Group ids (N,) from descriptors (N, 128): average linkage cut at ``distance``."""
    if len(emb) < 2:
        return np.zeros(len(emb), np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage

    emb = np.asarray(emb, np.float64)
    tree = linkage(emb, method="average", metric="euclidean")
    groups = fcluster(tree, t=distance, criterion="distance").astype(np.int64) - 1
    return _absorb_strays(emb, groups)


def _absorb_strays(emb: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Photos left in groups of one or two (a profile, a bad crop) join the nearest large
    group when its centre is within :data:`STRAY_DISTANCE`: a stray photo of a held-out
    person would otherwise land in training on its own."""
    sizes = np.bincount(groups)
    big = np.flatnonzero(sizes > STRAY_SIZE)
    if not len(big):
        return groups
    centres = np.stack([emb[groups == g].mean(0) for g in big])
    out = groups.copy()
    for i in np.flatnonzero(sizes[groups] <= STRAY_SIZE):
        d = np.linalg.norm(centres - emb[i], axis=1)
        if d.min() < STRAY_DISTANCE:
            out[i] = big[int(d.argmin())]
    return np.unique(out, return_inverse=True)[1].astype(np.int64)


def embedding_groups(paths: Sequence[Path], prepare: dict | None, progress: bool = False) -> np.ndarray:
    """Group ids for face crops written by the preparation ``prepare`` (a PrepareConfig dict)."""
    emb = embed_paths(paths, template_landmarks(prepare), progress=progress)
    return cluster_embeddings(emb)


@dataclass
class GroupReport:
    """How many people (groups) each class holds, and what that means for validation."""

    people_per_class: dict[str, int]
    largest_share: dict[str, float]
    classes_are_people: bool
    """True when each class is (mostly) one person of its own: a folder per person."""
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"people_per_class": self.people_per_class, "largest_share": self.largest_share,
                "classes_are_people": self.classes_are_people, "warnings": self.warnings}


def describe_groups(groups: np.ndarray, y: np.ndarray, names: Sequence[str]) -> GroupReport:
    """Per class (or per attribute value "X" / "not X"): people, the largest person's share."""
    columns = _class_columns(y, names)
    people, share = {}, {}
    for name, mask in columns.items():
        counts = Counter(groups[mask].tolist())
        if not counts:
            continue
        _, n_top = counts.most_common(1)[0]
        people[name], share[name] = len(counts), n_top / int(mask.sum())
    # A folder per person: (nearly) every class is one group. Two look-alike people may
    # share a group (ORL's greyscale faces: 35 groups for 40 people), so groups need not be
    # distinct; 80% of the classes is the bar.
    single = y.ndim == 1
    are_people = single and len(people) >= 2 and np.mean([s >= 0.7 for s in share.values()]) >= 0.8
    warnings = [] if are_people else _warnings(people, share, columns)
    return GroupReport(people, {k: round(v, 3) for k, v in share.items()}, bool(are_people), warnings)


def _class_columns(y: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    if y.ndim == 1:
        return {str(n): y == i for i, n in enumerate(names)}
    out = {}
    for j, n in enumerate(names):
        out[str(n)], out[f"not {n}"] = y[:, j] > 0, y[:, j] == 0
    return out


def _warnings(people: dict[str, int], share: dict[str, float], columns: dict[str, np.ndarray]) -> list[str]:
    out = []
    for name, k in people.items():
        n = int(columns[name].sum())
        if k < MIN_PEOPLE:
            out.append(f"class {name!r}: its {n} photos look like only {k} person(s); validation cannot "
                       f"show how the model does on new people. Add photos of more people.")
        elif share[name] > DOMINANT_SHARE:
            out.append(f"class {name!r}: one person holds {share[name]:.0%} of its {n} photos; the model "
                       f"may learn that person instead of the class. Add photos of other people.")
    return out
