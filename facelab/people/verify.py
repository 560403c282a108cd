"""Verify: are two photos the same person (dlib's threshold, or a run's calibrated one)?"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelab.bundle import read_bundle
from facelab.embed import DLIB_SAME_PERSON_DISTANCE, distance, embed_images
from facelab.errors import DataError
from facelab.images import read_image


@dataclass
class VerifyResult:
    """Are two photos the same person?"""

    same: bool
    distance: float
    threshold: float
    threshold_source: str
    """``dlib default`` (0.6), ``given``, or the run whose calibrated threshold was used
    (with its error rates on the run's enrolled photos)."""

    def summary(self) -> str:
        verdict = "SAME person" if self.same else "DIFFERENT people"
        return (f"{verdict}: distance {self.distance:.3f} {'<=' if self.same else '>'} "
                f"threshold {self.threshold:.3f} ({self.threshold_source})")


def verify(a: str | Path | np.ndarray, b: str | Path | np.ndarray, run: str | Path | None = None,
           threshold: float | None = None, prepare_config: Any = None) -> VerifyResult:
    """Decide whether photos ``a`` and ``b`` show the same person.

    The main face of each photo (``multi_face="main"``: the photographed person; or the
    run's face preparation) is embedded; same person when the distance is at most
    ``threshold`` (default: the pair threshold calibrated on the enrolled photos of
    ``run``, else dlib's 0.6).
    """
    source = "dlib default"
    value = DLIB_SAME_PERSON_DISTANCE
    if run is not None:
        bundle = read_bundle(run)[1]
        prepare_config = prepare_config or bundle.get("prepare")
        open_set = bundle.get("open_set", {})
        if "verify_threshold" in open_set:
            value = float(open_set["verify_threshold"])
            source = (f"calibrated on the enrolled photos of {run}: different people accepted "
                      f"{open_set.get('verify_far', float('nan')):.1%}, same person rejected "
                      f"{open_set.get('verify_frr', float('nan')):.1%}")
    if threshold is not None:
        value, source = float(threshold), "given"

    for x in (a, b):  # an unreadable photo is an error here, not a skip: ImageError says why
        if isinstance(x, (str, Path)):
            read_image(x)
    emb, found = embed_images([a, b], prepare_config)
    for img, ok in zip((a, b), found):
        if not ok:
            name = img if isinstance(img, (str, Path)) else "image"
            raise DataError(f"{name}: no face found; use a photo where the face is visible, "
                             f"roughly frontal and at least ~40 px wide")
    d = float(distance(emb[:1], emb[1:])[0, 0])
    return VerifyResult(d <= value, d, value, source)
