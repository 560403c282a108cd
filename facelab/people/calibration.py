"""Open-set calibration: the unknown threshold from the gallery alone (leave-one-out
genuine scores, leave-one-person-out impostor scores), its trade-off, the pair threshold of
verify, and the plot of both score clouds."""
from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facelab._io import write_bytes
from facelab.embed import distance
from facelab.people.gallery import Gallery, _person_sums

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """An accept/reject distance threshold and its error rates on held-out photos."""

    threshold: float
    far: float
    """False-accept rate: share of impostor faces (unknown people) at or under the threshold."""
    frr: float
    """False-reject rate: share of genuine faces (known people) over the threshold."""
    genuine: int
    impostor: int
    calibrated: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray, target_far: float | None = None,
                        default: float = 0.6, quiet: bool = False) -> Calibration:
    """The distance threshold separating genuine from impostor distances.

    ``target_far``: the largest threshold whose false-accept rate is at most this;
    None: the threshold with the fewest false accepts + false rejects (ties: lower FAR).
    Without both kinds of scores, ``default`` is returned uncalibrated (with a warning
    unless ``quiet``).
    """
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    imp = np.sort(np.asarray(impostor, dtype=np.float64))
    if not len(g) or not len(imp):
        (log.debug if quiet else log.warning)(
            "no %s distances to calibrate the threshold (needs a person with >= 2 photos and >= 2 "
            "people); using dlib's %.2f", "genuine" if not len(g) else "impostor", default)
        far = float(np.mean(imp <= default)) if len(imp) else float("nan")
        frr = float(np.mean(g > default)) if len(g) else float("nan")
        return Calibration(default, far, frr, len(g), len(imp), calibrated=False)
    values = np.unique(np.concatenate([g, imp]))
    cands = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    fars = np.searchsorted(imp, cands, side="right") / len(imp)
    frrs = 1.0 - np.searchsorted(g, cands, side="right") / len(g)
    if target_far is None:
        # Fewest errors, then fewest false accepts; within that range (often a gap between
        # the two score clouds), its middle, so neither side is shaved to the bone.
        err = fars + frrs
        tied = np.flatnonzero(np.isclose(err, err.min()))
        tied = tied[np.isclose(fars[tied], fars[tied].min())]
        best = int(tied[len(tied) // 2])
    else:
        ok = np.flatnonzero(fars <= target_far)
        best = int(ok[-1]) if len(ok) else 0
    return Calibration(float(cands[best]), float(fars[best]), float(frrs[best]), len(g), len(imp))


def open_set_scores(gallery: Gallery, rule: str = "centroid") -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores for calibration, from the gallery alone (no photo set
    aside, so the gallery keeps every enrolled photo).

    Genuine: each photo of a person with >= 2 photos, scored against the gallery without
    that photo (leave-one-out: a new photo of a known person). Impostor: each person's
    photos against the gallery without that person (leave-one-person-out: a stranger).
    """
    if rule == "nearest":
        return _nearest_scores(gallery)

    emb, labels = gallery.embeddings.astype(np.float64), gallery.labels
    sums, counts = _person_sums(gallery)
    centres = sums / np.maximum(counts, 1)[:, None]
    genuine, impostor = [], []
    step = max(1, 4_000_000 // max(len(centres), 1))
    for start in range(0, len(emb), step):
        x, own = emb[start:start + step], labels[start:start + step]
        d = distance(x, centres).astype(np.float64)
        d[:, counts == 0] = np.inf
        d[np.arange(len(x)), own] = np.inf  # the own person, scored below without this photo
        others = d.min(axis=1)
        impostor.append(others)
        several = counts[own] >= 2
        loo = (sums[own[several]] - x[several]) / (counts[own[several]] - 1)[:, None]
        genuine.append(np.minimum(others[several], np.linalg.norm(x[several] - loo, axis=1)))
    genuine_all = np.concatenate(genuine) if genuine else np.zeros(0)
    impostor_all = np.concatenate(impostor) if impostor else np.zeros(0)
    return genuine_all, impostor_all[np.isfinite(impostor_all)]


def _nearest_scores(gallery: Gallery) -> tuple[np.ndarray, np.ndarray]:
    """:func:`open_set_scores` for the ``nearest`` rule."""
    emb, labels = gallery.embeddings, gallery.labels
    nearest = np.full(len(emb), np.inf, dtype=np.float32)
    nearest_other = np.full(len(emb), np.inf, dtype=np.float32)
    step = max(1, 4_000_000 // max(len(emb), 1))  # rows per block: ~16 MB of distances at a time
    for start in range(0, len(emb), step):
        rows = np.arange(start, min(start + step, len(emb)))
        d = distance(emb[rows], emb)
        d[np.arange(len(rows)), rows] = np.inf  # not the photo itself
        nearest[rows] = d.min(axis=1)
        nearest_other[rows] = np.where(labels[rows, None] != labels[None, :], d, np.inf).min(axis=1)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    genuine = nearest[counts[labels] >= 2] if len(labels) else np.zeros(0)
    return genuine, nearest_other[np.isfinite(nearest_other)]


CALIBRATION_RULE = ("leave-one-out over every enrolled photo: each photo against the rest of the gallery "
                    "(known), each person's photos against the gallery without that person (stranger)")

SCORE_TEXT = {"centroid": "euclidean distance to the nearest person's mean embedding; above threshold -> unknown",
              "nearest": "euclidean distance to the nearest enrolled photo; above threshold -> unknown"}
#: False-accept rates at which the open-set trade-off is reported.
TRADEOFF_FARS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def tradeoff(genuine: np.ndarray, impostor: np.ndarray) -> list[dict]:
    """For each target false-accept rate in :data:`TRADEOFF_FARS`: the threshold, and the
    share of known people's photos it would call unknown (false rejects)."""
    if not len(genuine) or not len(impostor):
        return []
    return [{"target_far": t, **{k: v for k, v in calibrate_threshold(genuine, impostor, t).to_dict().items()
                                 if k in ("threshold", "far", "frr")}} for t in TRADEOFF_FARS]


def pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All same-person and different-person pair distances among ``emb`` (verification)."""
    d = distance(emb, emb)
    iu = np.triu_indices(len(emb), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    return d[iu][same], d[iu][~same]

def _calibration_fields(cal: Calibration, genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """The open-set section's calibration entries (threshold, rates, counts, how, trade-off):
    written by training and rewritten by every enrolment."""
    return {**cal.to_dict(), "calibration": CALIBRATION_RULE, "tradeoff": tradeoff(genuine, impostor)}

def open_set_rule(bundle: dict) -> str:
    """A bundle's open-set score rule (runs written before the rule was recorded: ``nearest``)."""
    return str((bundle.get("open_set") or {}).get("rule", "nearest"))

def _save_calibration_plot(path: Path, genuine: np.ndarray, impostor: np.ndarray, cal: Calibration) -> None:
    """Histogram of genuine vs impostor distances with the threshold: where a person would look."""
    if not len(genuine) and not len(impostor):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    bins = np.linspace(0, max(1.0, float(np.max(np.concatenate([genuine, impostor])))), 40).tolist()
    ax.hist(genuine, bins=bins, alpha=0.6, label=f"known people, held out ({len(genuine)})", density=True)
    ax.hist(impostor, bins=bins, alpha=0.6, label=f"people left out ({len(impostor)})", density=True)
    ax.axvline(cal.threshold, color="k", ls="--", label=f"threshold {cal.threshold:.3f}")
    ax.set_xlabel("distance to the nearest enrolled photo")
    ax.set_title(f"unknown threshold: FAR {cal.far:.1%}, FRR {cal.frr:.1%}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
