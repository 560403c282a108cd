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
"""
from __future__ import annotations

import csv
import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._io import read_json, write_bytes, write_json, write_text
from facelab.data import DataError, SampleTable
from facelab.tasks import Task

log = logging.getLogger(__name__)

BACKEND = "face-embed"
UNKNOWN = "unknown"
HEADS = ("logreg", "knn")
BUNDLE_DIR = "bundle"
_KNN_TEMPERATURE = 0.05  # softmax temperature over per-person distances (knn head)


# --------------------------------------------------------------------------- config

@dataclass
class FaceEmbedConfig:
    """Settings of the face-embed identity model (read from the TrainConfig where it has them)."""

    head: str = "logreg"
    """Classifier on the embeddings: ``logreg`` (logistic regression) or ``knn``."""
    knn_k: int = 3
    """knn head: the distance to a person is the mean of their ``knn_k`` nearest photos."""
    C: float = 10.0
    """logreg head: inverse regularisation strength."""
    valid_fraction: float = 0.2
    """Share of each person's photos held out to MEASURE top-name accuracy (people with
    one photo keep it); the final gallery and head then use every photo, and the unknown
    threshold is calibrated leave-one-out over all of them. 0 = no accuracy measure."""
    target_far: float | None = None
    """Calibrate the unknown threshold for this false-accept rate (share of strangers let
    in, e.g. 0.01); None picks the threshold with the fewest errors (false-accept rate +
    false-reject rate). The trade-off at other targets is in ``bundle.json["open_set"]``."""
    unknown_score: str = "centroid"
    """Open-set score compared with the threshold: ``centroid`` (distance to the nearest
    person's mean embedding) or ``nearest`` (to the nearest enrolled photo)."""
    seed: int = 0
    """Random seed of the train/valid split."""
    overwrite: bool = False
    """Replace an existing run in the run folder (otherwise that is an error)."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown face-embed head {self.head!r}; valid: {', '.join(HEADS)}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.C <= 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.unknown_score not in OPEN_SET_RULES:
            raise ValueError(f"unknown unknown_score {self.unknown_score!r}; valid: {', '.join(OPEN_SET_RULES)}")
        if self.target_far is not None and not 0.0 <= self.target_far <= 1.0:
            raise ValueError(f"target_far must be in [0, 1] or None, got {self.target_far}")

    @classmethod
    def from_train_config(cls, config: Any) -> "FaceEmbedConfig":
        """Pick the matching fields (same names, or ``face_embed``/``model_kwargs`` dicts)
        out of the train stage's TrainConfig (or a plain dict)."""
        if config is None:
            return cls()
        if isinstance(config, FaceEmbedConfig):
            return config
        src = config if isinstance(config, dict) else vars(config)
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in src.items() if k in names and v is not None}
        for nested in ("model_kwargs", "face_embed"):
            extra = dict(src.get(nested) or {})
            unknown = sorted(set(extra) - names)
            if unknown:
                raise ValueError(f"unknown face-embed option(s) {unknown}; valid: {sorted(names)}")
            kw.update(extra)
        for alias in ("val_fraction", "valid_split"):
            if isinstance(src.get(alias), float):
                kw.setdefault("valid_fraction", src[alias])
        return cls(**kw)


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if is_dataclass(config):
        return asdict(config)
    return dict(config)


# --------------------------------------------------------------------------- identities

def identity_table(table: SampleTable) -> SampleTable:
    """The table with one class per person: folder classes as they are, or CelebA-style
    identities turned into classes (rows without an identity dropped)."""
    from dataclasses import replace

    if table.kind == "classes":
        return table
    if not table.has_identities:
        raise DataError(f"{table.root}: face-embed needs people as classes (a folder per person) "
                        f"or an identity column (CelebA identity_CelebA.txt, CSV 'identity')")
    rows = [i for i, p in enumerate(table.identities) if p is not None]
    if len(rows) < len(table):
        log.warning("%s: %d photo(s) without an identity skipped", table.root, len(table) - len(rows))
    sub = table.subset(rows)
    names = sorted({str(p) for p in sub.identities})
    index = {n: i for i, n in enumerate(names)}
    return replace(sub, kind="classes", label_names=names,
                   labels=np.array([index[str(p)] for p in sub.identities], dtype=np.int64))


def split_per_person(labels: np.ndarray, valid_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out photos: ``valid_fraction`` of each person's photos
    (rounded, at least one photo of every person stays in training)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n = min(int(round(valid_fraction * len(rows))), len(rows) - 1)
        held[rows[:n]] = True
    return held


def _held_out_mask(table: SampleTable, cfg: FaceEmbedConfig) -> np.ndarray:
    """Use the source's own split when the same people appear in train and valid/test;
    a person-disjoint split (CelebA's official one) cannot test recognising known people,
    so then each person's photos are split instead."""
    if table.has_splits:
        split = np.array([s or "train" for s in table.splits])
        train_people = set(table.labels[split == "train"].tolist())
        other = table.labels[split != "train"]
        if len(other) and set(other.tolist()) <= train_people:
            return split != "train"
        log.info("%s: the source's split keeps people apart; splitting each person's photos "
                 "%.0f/%.0f instead", table.root, 100 * (1 - cfg.valid_fraction), 100 * cfg.valid_fraction)
    return split_per_person(table.labels, cfg.valid_fraction, cfg.seed)


# --------------------------------------------------------------------------- heads

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


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, C: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression -> (weight (L, 128), bias (L,)) of a softmax layer."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise ValueError(f"the logreg head needs photos of at least 2 people, got {len(np.unique(y))}")
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


def knn_scores(emb: np.ndarray, gallery: Gallery, n_classes: int, k: int) -> np.ndarray:
    """Per person, the mean distance to their ``k`` nearest enrolled photos: (N, L)."""
    from facelab.embed import distance

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
    from facelab.embed import distance

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
    from facelab.embed import distance

    if not len(emb):
        return np.zeros(0, dtype=np.float32)
    if rule == "nearest":
        return nearest_distance(emb, gallery)
    sums, counts = _person_sums(gallery)
    keep = counts > 0
    return distance(emb, sums[keep] / counts[keep, None]).min(axis=1)


# --------------------------------------------------------------------------- open set

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
    far = np.searchsorted(imp, cands, side="right") / len(imp)
    frr = 1.0 - np.searchsorted(g, cands, side="right") / len(g)
    if target_far is None:
        # Fewest errors, then fewest false accepts; within that range (often a gap between
        # the two score clouds), its middle, so neither side is shaved to the bone.
        err = far + frr
        tied = np.flatnonzero(np.isclose(err, err.min()))
        tied = tied[np.isclose(far[tied], far[tied].min())]
        best = int(tied[len(tied) // 2])
    else:
        ok = np.flatnonzero(far <= target_far)
        best = int(ok[-1]) if len(ok) else 0
    return Calibration(float(cands[best]), float(far[best]), float(frr[best]), len(g), len(imp))


def open_set_scores(gallery: Gallery, rule: str = "centroid") -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores for calibration, from the gallery alone (no photo set
    aside, so the gallery keeps every enrolled photo).

    Genuine: each photo of a person with >= 2 photos, scored against the gallery without
    that photo (leave-one-out: a new photo of a known person). Impostor: each person's
    photos against the gallery without that person (leave-one-person-out: a stranger).
    """
    if rule == "nearest":
        return _nearest_scores(gallery)
    from facelab.embed import distance

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
    from facelab.embed import distance

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
#: Open-set scores (see :func:`open_set_distance`). ``centroid`` is the default: on
#: celeba-mini it turned away fewer known photos at the same share of strangers let in
#: (docs/people.md); runs whose bundle names no rule were calibrated with ``nearest``.
OPEN_SET_RULES = ("centroid", "nearest")
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
    from facelab.embed import distance

    d = distance(emb, emb)
    iu = np.triu_indices(len(emb), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    return d[iu][same], d[iu][~same]


# --------------------------------------------------------------------------- the model

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


def _embed_table(table: SampleTable, prepare_config: Any, progress: bool,
                 cache_dir: str | Path | None = None) -> tuple[SampleTable, np.ndarray, dict]:
    """Prepare (cached) and embed every photo of ``table``: (table of crops, (N, 128), prepare dict)."""
    from facelab.embed import embed_paths, identity_prepare, template_landmarks
    from facelab.prepare import as_config, prepare_table

    if table.prepared is not None:
        prep = as_config(table.prepared.get("config"))
        crops = table
        if prep.format != "png":
            log.warning("%s: crops prepared as %s: predict embeds crops cut in memory, so a photo's "
                        "embedding differs slightly between training and prediction; train on the raw "
                        "photos (or prepare with --format png) for identical crops", table.root, prep.format)
    else:
        prep = identity_prepare(prepare_config)
        crops = prepare_table(table, prep, cache_dir, progress=progress)
    if len(crops) == 0:
        raise DataError(f"{table.root}: no face found in any photo; check the photos or try "
                        f"another detector (facelab prepare --detector ...)")
    emb = embed_paths(crops.paths, template_landmarks(prep), progress=progress)
    return crops, emb, prep.to_dict()


def train_face_embed(table: SampleTable, config: Any = None, run_dir: str | Path = "runs/face-embed",
                     progress: bool = True) -> Path:
    """Train the face-embed identity model on ``table`` (a folder per person, or a source
    with identities) and write a run folder (config.json, metrics.csv, bundle/).

    Args:
        table: the photos (raw or prepared); people = classes (or identities).
        config: the train stage's TrainConfig (seed, prepare config, head options are
            read from it, see :meth:`FaceEmbedConfig.from_train_config`), a
            FaceEmbedConfig, or None for the defaults.
        run_dir: the run folder to write.
    Returns:
        ``run_dir``.
    """
    t0 = time.perf_counter()
    cfg = FaceEmbedConfig.from_train_config(config)
    run_dir = Path(run_dir)
    progress = bool(getattr(config, "progress", progress))
    if (run_dir / "config.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{run_dir} already holds a run; pass --overwrite to replace it, "
                              f"or choose another --name")
    people = identity_table(table)
    if len(people.label_names) < 2:
        raise DataError(f"{table.root}: face-embed needs at least 2 people (found "
                        f"{people.label_names}); to compare two photos use `facelab verify`")
    crops, emb, prep = _embed_table(people, getattr(config, "prepare", None), progress,
                                    getattr(config, "cache_dir", None))
    labels = crops.labels
    held = _held_out_mask(crops, cfg)
    names = [str(crops.source_of(i)) for i in range(len(crops))]  # the enrolled photos
    gallery = Gallery(emb, labels, names)
    metrics = _held_out_metrics(people.label_names, gallery, held, cfg)
    # The model itself: every photo in the gallery, the threshold calibrated leave-one-out.
    genuine, impostor = open_set_scores(gallery, cfg.unknown_score)
    cal = calibrate_threshold(genuine, impostor, cfg.target_far)
    same, diff = pair_scores(emb, labels)
    pair = calibrate_threshold(same, diff, None)
    model = IdentityModel.fit(people.label_names, gallery, cfg, cal.threshold)
    metrics.update(far=cal.far, frr=cal.frr, threshold=cal.threshold)
    seconds = time.perf_counter() - t0
    metrics.update(images_per_second=len(crops) / max(seconds, 1e-9), time=seconds)
    bundle = _bundle_dict(model, prep, _calibration_fields(cal, genuine, impostor), pair, cfg, run_dir,
                          len(crops) / max(seconds, 1e-9))
    bundle["train"]["metrics"] = metrics
    _write_run(run_dir, config, cfg, model, bundle, metrics)
    _save_calibration_plot(run_dir / "open_set.png", genuine, impostor, cal)
    log.info("face-embed: %d people, %d photos, all in the gallery; held-out accuracy %s; unknown "
             "threshold %.3f (leave-one-out: strangers let in %.1f%%, known photos turned away %.1f%%); %s",
             len(model.labels), len(crops), _fmt(metrics["accuracy"]), cal.threshold, 100 * cal.far,
             100 * cal.frr, run_dir)
    if bundle["open_set"]["tradeoff"]:
        log.info("trade-off (-M target_far=...): %s", _tradeoff_text(bundle["open_set"]["tradeoff"]))
    return run_dir


def _tradeoff_text(rows: list[dict]) -> str:
    return "; ".join(f"strangers <= {100 * r['target_far']:g}%: threshold {r['threshold']:.3f}, "
                     f"known turned away {100 * r['frr']:.1f}%" for r in rows)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN: nothing was held out


def _held_out_metrics(labels: Sequence[str], everything: Gallery, held: np.ndarray,
                      cfg: FaceEmbedConfig) -> dict:
    """Accuracy of a model fitted WITHOUT the held-out photos, on them: top name, and the
    open-set decision (its threshold calibrated leave-one-out on its own gallery) - the
    share of known people's new photos called unknown. Only measured; the final model then
    uses every photo."""
    keep = ~held
    part = Gallery(everything.embeddings[keep], everything.labels[keep],
                   [n for n, k in zip(everything.names, keep) if k])
    measured = IdentityModel.fit(labels, part, cfg)
    out = _metrics(measured, everything.embeddings, everything.labels, held)
    out["valid_unknown_rate"] = out["open_set_accuracy"] = float("nan")
    if held.any():
        measured.threshold = calibrate_threshold(*open_set_scores(part, cfg.unknown_score), cfg.target_far,
                                                 quiet=True).threshold
        names = measured.identify(everything.embeddings[held])[0]
        truth = [labels[i] for i in everything.labels[held]]
        out["valid_unknown_rate"] = float(np.mean([n == UNKNOWN for n in names]))
        out["open_set_accuracy"] = float(np.mean([n == t for n, t in zip(names, truth)]))
    return out


def _metrics(model: IdentityModel, emb: np.ndarray, labels: np.ndarray, held: np.ndarray) -> dict:
    out: dict[str, float] = {}
    for name, acc, mask in (("train", "train_accuracy", ~held), ("valid", "accuracy", held)):
        if mask.any():
            probs = np.clip(model.probs(emb[mask]), 1e-7, 1.0)
            y = labels[mask]
            out[f"{name}_loss"] = float(-np.log(probs[np.arange(len(y)), y]).mean())
            out[acc] = float((probs.argmax(1) == y).mean())
        else:
            out[f"{name}_loss"] = out[acc] = float("nan")
    return out


def _calibration_fields(cal: Calibration, genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """The open-set section's calibration entries (threshold, rates, counts, how, trade-off):
    written by training and rewritten by every enrolment."""
    return {**cal.to_dict(), "calibration": CALIBRATION_RULE, "tradeoff": tradeoff(genuine, impostor)}


def _bundle_dict(model: IdentityModel, prep: dict, calibration: dict, pair: Calibration,
                 cfg: FaceEmbedConfig, run_dir: Path, images_per_second: float) -> dict:
    from facelab.embed import EMBEDDING_DIM, EMBEDDING_ID

    return {
        "format": 1,
        "model": {"backend": BACKEND, "name": EMBEDDING_ID, "head": model.head,
                  "kwargs": {"knn_k": cfg.knn_k, "C": cfg.C}, "embedding_dim": EMBEDDING_DIM,
                  "files": {"head": "weights.pt", "gallery": "gallery.npz"}, "weights": "weights.pt"},
        "task": Task("multiclass", tuple(model.labels)).to_dict(),
        "input": {"size": prep["size"], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                  "note": "crops go to dlib's embedding, which normalises itself"},
        "prepare": prep,
        "open_set": {"unknown_label": UNKNOWN, "rule": cfg.unknown_score, "score": SCORE_TEXT[cfg.unknown_score],
                     **calibration, "target_far": cfg.target_far,
                     "verify_threshold": pair.threshold, "verify_far": pair.far, "verify_frr": pair.frr},
        "people": {"photos": _photo_counts(model)},
        "train": {"run": str(run_dir), "epochs": 0, "images_per_second": round(images_per_second, 2)},
    }


def _photo_counts(model: IdentityModel) -> dict[str, int]:
    counts = np.bincount(model.gallery.labels, minlength=len(model.labels))
    return {name: int(n) for name, n in zip(model.labels, counts)}


def _save_head(path: Path, model: IdentityModel) -> None:
    """The head as a state_dict of ``nn.Linear(128, L)`` (zeros for the knn head)."""
    import torch

    from facelab._io import save_torch
    from facelab.embed import EMBEDDING_DIM

    n = len(model.labels)
    w = model.weight if model.weight is not None else np.zeros((n, EMBEDDING_DIM), np.float32)
    b = model.bias if model.bias is not None else np.zeros(n, np.float32)
    save_torch(path, {"weight": torch.from_numpy(np.asarray(w, np.float32)),
                      "bias": torch.from_numpy(np.asarray(b, np.float32))})


def _write_run(run_dir: Path, config: Any, cfg: FaceEmbedConfig, model: IdentityModel,
               bundle: dict, metrics: dict) -> None:
    bdir = run_dir / BUNDLE_DIR
    bdir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**_config_dict(config), "model": BACKEND,
                                         "resolved": {"face_embed": asdict(cfg)}})
    # the train stage's columns (epoch .. time), then face-embed's own
    row = {"epoch": 1, "phase": "fit", "train_loss": metrics["train_loss"], "valid_loss": metrics["valid_loss"],
           "accuracy": metrics["accuracy"], "lr": "", "images_per_second": metrics["images_per_second"],
           "time": metrics["time"], **metrics}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    _save_head(bdir / bundle["model"]["files"]["head"], model)
    model.gallery.save(bdir / bundle["model"]["files"]["gallery"])
    write_json(bdir / "bundle.json", bundle)  # last: the bundle is complete when this exists


def _save_calibration_plot(path: Path, genuine: np.ndarray, impostor: np.ndarray, cal: Calibration) -> None:
    """Histogram of genuine vs impostor distances with the threshold: where a person would look."""
    if not len(genuine) and not len(impostor):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    bins = np.linspace(0, max(1.0, float(np.max(np.concatenate([genuine, impostor])))), 40)
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


# --------------------------------------------------------------------------- predictor

def resolve_bundle_dir(run: str | Path) -> Path:
    """A run folder or its bundle folder -> the bundle folder (with a clear error)."""
    run = Path(run)
    for cand in (run, run / BUNDLE_DIR):
        if (cand / "bundle.json").is_file():
            return cand
    raise FileNotFoundError(f"{run}: no bundle.json here or in {run / BUNDLE_DIR}; pass a run folder "
                            f"written by `facelab train ... --model face-embed`")


@dataclass
class PersonPrediction:
    """One face in a photo: the detection, the probabilities over known people, the crop,
    the decided name (``unknown`` beyond the threshold) and its nearest-photo distance."""

    face: Any
    probs: np.ndarray
    crop: np.ndarray
    name: str = UNKNOWN
    distance: float = float("nan")

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN


class EmbeddingPredictor:
    """The ``face-embed`` backend of ``facelab.load``: same interface as the CNN predictor,
    plus :meth:`identify_crops` for open-set names."""

    backend = BACKEND

    def __init__(self, bundle_dir: Path, bundle: dict, model: IdentityModel) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.bundle = bundle
        self.model = model
        self.task = Task.from_dict(bundle["task"])
        self.labels = list(self.task.labels)
        self.open_set = dict(bundle.get("open_set") or {})
        self.unknown_label = self.open_set.get("unknown_label", UNKNOWN)
        self._pipeline = None

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None) -> "EmbeddingPredictor":
        bundle_dir = Path(bundle_dir)
        bundle = bundle_dict if bundle_dict is not None else read_json(bundle_dir / "bundle.json")
        m = bundle["model"]
        if m.get("backend") != BACKEND:
            raise ValueError(f"{bundle_dir}: backend is {m.get('backend')!r}, not {BACKEND!r}")
        gallery = Gallery.load(bundle_dir / m["files"]["gallery"])
        weight, bias = _load_head(bundle_dir / m["files"]["head"]) if m["head"] == "logreg" else (None, None)
        model = IdentityModel(list(bundle["task"]["labels"]), gallery, m["head"], weight, bias,
                              int(m.get("kwargs", {}).get("knn_k", 3)),
                              float(bundle.get("open_set", {}).get("threshold", 0.6)),
                              open_set_rule(bundle))
        return cls(bundle_dir, bundle, model)

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        from facelab.embed import embed_crops, template_landmarks

        return embed_crops(crops, template_landmarks(self.bundle.get("prepare")))

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned crops -> probabilities over the known people, float32 (N, L)."""
        return self.model.probs(self.embed_crops(crops))

    def decide_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """Aligned crops -> (probabilities (N, L), names) from ONE embedding pass; a name
        is ``unknown`` when the nearest enrolled photo is beyond the calibrated threshold.
        predict and serve use this (when a predictor has it) for the open-set decision."""
        names, probs, _ = self.model.identify(self.embed_crops(crops))
        return probs, names

    def identify_crops(self, crops: Sequence[np.ndarray]) -> list[str]:
        """Aligned crops -> names; ``unknown`` when the nearest enrolled photo is farther
        than the calibrated threshold."""
        return self.model.identify(self.embed_crops(crops))[0]

    def predict_image(self, image: np.ndarray | str | Path) -> list[PersonPrediction]:
        """A photo (RGB array or path) -> one prediction per face, through the bundle's
        face preparation."""
        from facelab.prepare import FacePipeline

        if self._pipeline is None:
            self._pipeline = FacePipeline(self.bundle.get("prepare"))
        faces = self._pipeline.process_image(image)
        if not faces:
            return []
        names, probs, dist = self.model.identify(self.embed_crops([f.crop for f in faces]))
        return [PersonPrediction(f.face, p, f.crop, n, float(d))
                for f, p, n, d in zip(faces, probs, names, dist)]


def _load_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["weight"].numpy(), state["bias"].numpy()


def load(run: str | Path) -> EmbeddingPredictor:
    """The face-embed predictor of a run (or bundle) folder."""
    return EmbeddingPredictor.from_bundle(resolve_bundle_dir(run))


# --------------------------------------------------------------------------- verify

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
    from facelab.embed import DLIB_SAME_PERSON_DISTANCE, distance, embed_images

    source = "dlib default"
    value = DLIB_SAME_PERSON_DISTANCE
    if run is not None:
        bundle = read_json(resolve_bundle_dir(run) / "bundle.json")
        prepare_config = prepare_config or bundle.get("prepare")
        open_set = bundle.get("open_set", {})
        if "verify_threshold" in open_set:
            value = float(open_set["verify_threshold"])
            source = (f"calibrated on the enrolled photos of {run}: different people accepted "
                      f"{open_set.get('verify_far', float('nan')):.1%}, same person rejected "
                      f"{open_set.get('verify_frr', float('nan')):.1%}")
    if threshold is not None:
        value, source = float(threshold), "given"
    from facelab.images import read_image

    for x in (a, b):  # an unreadable photo is an error here, not a skip: ImageError says why
        if isinstance(x, (str, Path)):
            read_image(x)
    emb, found = embed_images([a, b], prepare_config)
    for img, ok in zip((a, b), found):
        if not ok:
            name = img if isinstance(img, (str, Path)) else "image"
            raise ValueError(f"{name}: no face found; use a photo where the face is visible, "
                             f"roughly frontal and at least ~40 px wide")
    d = float(distance(emb[:1], emb[1:])[0, 0])
    return VerifyResult(d <= value, d, value, source)


# --------------------------------------------------------------------------- enroll

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
    from facelab.embed import embed_images

    t0 = time.perf_counter()
    person = person.strip()
    if not person or person == UNKNOWN:
        raise ValueError(f"invalid person name {person!r}: must be non-empty and not {UNKNOWN!r}")
    bdir = resolve_bundle_dir(run)
    predictor = EmbeddingPredictor.from_bundle(bdir)
    photos = [Path(p) for p in photos]
    if not photos:
        raise ValueError("no photos given: pass one or more photo files of the person")
    emb, found = embed_images(photos, predictor.bundle.get("prepare"), progress=progress)
    skipped = [str(p) for p, ok in zip(photos, found) if not ok]
    if not found.any():
        raise ValueError(f"no face found in any of the {len(photos)} photo(s) of {person!r}; "
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


def open_set_rule(bundle: dict) -> str:
    """A bundle's open-set score rule (runs written before the rule was recorded: ``nearest``)."""
    return str((bundle.get("open_set") or {}).get("rule", "nearest"))


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


# --------------------------------------------------------------------------- export

def export_onnx(bundle_dir: str | Path, out_path: str | Path) -> Path:
    """Export the logreg head as ONNX: input ``embedding`` float32 (N, 128) -> output
    ``probs`` float32 (N, L).

    The embedding itself stays dlib (not ONNX-exportable): an ONNX runtime must compute
    dlib descriptors first (``facelab.embed.embed_crops``). The knn head and the open-set
    rule (``bundle.json["open_set"]``) need the gallery and are not in the graph.
    """
    import torch

    from facelab._io import atomic_path

    bdir = resolve_bundle_dir(bundle_dir)
    bundle = read_json(bdir / "bundle.json")
    m = bundle["model"]
    if m.get("head") != "logreg":
        raise ValueError(f"{bdir}: ONNX export supports the logreg head only (this run uses "
                         f"{m.get('head')!r}); retrain with head=logreg or predict with `facelab predict`")
    weight, bias = _load_head(bdir / m["files"]["head"])
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    net = torch.nn.Sequential(layer, torch.nn.Softmax(dim=1)).eval()
    with atomic_path(out_path) as tmp:
        torch.onnx.export(net, torch.zeros(1, weight.shape[1]), str(tmp), input_names=["embedding"],
                          output_names=["probs"], dynamic_axes={"embedding": {0: "n"}, "probs": {0: "n"}},
                          opset_version=17, dynamo=False)
    return Path(out_path)
