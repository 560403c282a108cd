"""`facelab inspect`: what is wrong with a data set, before a model learns it.

Reads any source :func:`facelab.data.load_source` understands and writes ``report.html``
(self-contained: plots and thumbnails are embedded), ``report.json`` and the PNG plots to
an output folder. Checks, each producing :class:`Finding` s:

* ``unreadable``: files that do not decode;
* ``imbalance`` / ``rare-attribute`` / ``missing-class``: label counts per split;
* ``leakage-duplicate``: the same picture (exact bytes or near-identical) in two splits;
* ``leakage-identity``: the same person in two splits (when identities are known);
* ``duplicate`` / ``conflicting-labels``: repeated pictures inside a split, or with
  different labels;
* ``shortcut``: classes that differ strongly in brightness, contrast, colour, size or
  format (a model would learn the lighting or the camera instead of the face);
* ``no-face`` / ``several-faces`` (``faces=True``): face detection outcome per class,
  through facelab.prepare's pipeline and cache;
* ``label-error`` (``embed=True`` or ``run=``): photos whose face embedding (nearest
  neighbours and class centroids) or whose trained model's prediction contradicts the label.
"""
from __future__ import annotations

import io
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab import _html
from facelab._io import write_bytes, write_json
from facelab._phash import DIFF_THRESHOLD, NEAR_THRESHOLD, Fingerprint, fingerprint, groups, near_pairs
from facelab.data import SPLITS, SampleTable, load_source

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "info")
#: Image properties compared between classes by the shortcut check.
PROPERTIES = ("brightness", "contrast", "saturation", "width", "height", "greyscale")


@dataclass
class InspectConfig:
    """What `facelab inspect` looks at, and how sensitive it is."""

    samples: int = 8
    """Sample photos shown per class."""
    duplicates: bool = True
    """Look for exact and near-identical pictures (and their leakage across splits)."""
    hash_threshold: int = NEAR_THRESHOLD
    """Near-identical: at most this many of 64 perceptual-hash bits differ..."""
    diff_threshold: float = DIFF_THRESHOLD
    """...and the 32x32 thumbnails differ by at most this much (facelab._phash)."""
    imbalance_ratio: float = 3.0
    """Warn when the largest class has this many times the photos of the smallest."""
    rare_rate: float = 0.05
    """Warn about attributes whose positive rate is below this (or above 1 - this)."""
    shortcut_auc: float = 0.9
    """Warn when one image property alone separates a class from the rest this well (ROC AUC)."""
    min_group: int = 8
    """Smallest class (or attribute side) the shortcut check judges."""
    faces: bool = False
    """Run face detection (facelab.prepare's pipeline and cache) and report outcomes per class."""
    detector: str | None = None
    """Detector for ``faces`` (default: facelab.prepare's default)."""
    embed: bool = False
    """Look for suspected label errors with face embeddings (useful when classes are people)."""
    run: str | None = None
    """A trained run (or bundle) whose predictions are compared with the labels."""
    disagree: float = 0.8
    """With ``run``: flag a photo when the model puts at least this probability elsewhere."""
    workers: int = 2
    """Threads reading images."""

    def __post_init__(self) -> None:
        if self.samples < 0 or self.workers < 1 or self.min_group < 2:
            raise ValueError("samples must be >= 0, workers >= 1 and min_group >= 2")
        if not 0.5 < self.shortcut_auc <= 1.0:
            raise ValueError(f"shortcut_auc must be in (0.5, 1], got {self.shortcut_auc}")
        if not 0.0 <= self.rare_rate < 0.5:
            raise ValueError(f"rare_rate must be in [0, 0.5), got {self.rare_rate}")
        if not 0.5 <= self.disagree < 1.0:
            raise ValueError(f"disagree must be in [0.5, 1), got {self.disagree}")
        if self.imbalance_ratio < 1.0:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")


@dataclass
class Finding:
    """One problem (or note) the report raises."""

    check: str
    severity: str
    message: str
    fix: str = ""
    files: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Table rows of the photos concerned (thumbnails in the HTML report)."""


@dataclass
class ImageStats:
    """What one readable photo looks like."""

    width: int
    height: int
    format: str
    greyscale: bool
    brightness: float
    contrast: float
    saturation: float
    sha256: str
    fp: Fingerprint

    def value(self, prop: str) -> float:
        return float(getattr(self, prop))


@dataclass
class InspectReport:
    """Where the report went, and what it found."""

    out: Path
    html: Path
    json: Path
    findings: list[Finding]
    summary: dict[str, Any]

    def checks(self) -> set[str]:
        """Names of the checks that raised a warning or an error."""
        return {f.check for f in self.findings if f.severity != "info"}

    def find(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]


# --------------------------------------------------------------------------- reading

def _stats(path: Path) -> ImageStats:
    import hashlib

    from PIL import Image

    from facelab._io import os_reason
    from facelab.images import ImageError, decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:  # a symbolic link loop is not an "empty file"
        raise ImageError(path, os_reason(exc)) from None
    rgb = decode_image(data, name=str(path))
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or path.suffix.lstrip(".").upper()
    small = rgb[:: max(1, rgb.shape[0] // 128), :: max(1, rgb.shape[1] // 128)].astype(np.float32)
    luma = small @ np.array([0.299, 0.587, 0.114], np.float32)
    chroma = small.max(axis=2) - small.min(axis=2)
    return ImageStats(width=rgb.shape[1], height=rgb.shape[0], format=fmt,
                      greyscale=bool(chroma.max() <= 2.0), brightness=float(luma.mean()),
                      contrast=float(luma.std()), saturation=float(chroma.mean()),
                      sha256=hashlib.sha256(data).hexdigest(), fp=fingerprint(rgb))


def scan(paths: Sequence[Path], workers: int = 2, progress: bool = True) -> tuple[list[ImageStats | None], dict[int, str]]:
    """Statistics of every photo (None where unreadable) and the reason per unreadable index."""
    from facelab._progress import progress as progress_bar
    from facelab.images import ImageError

    def one(p: Path) -> ImageStats | str:
        try:
            return _stats(p)
        except ImageError as exc:
            return exc.reason
        except OSError as exc:
            return f"cannot be read ({exc})"

    stats: list[ImageStats | None] = []
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(workers) as pool, progress_bar(len(paths), "inspect", enabled=progress) as bar:
        for i, r in enumerate(pool.map(one, paths)):
            bar.update()
            if isinstance(r, str):
                errors[i] = r
                stats.append(None)
            else:
                stats.append(r)
    return stats, errors


# --------------------------------------------------------------------------- checks

def _groups_of_rows(table: SampleTable) -> dict[str, np.ndarray]:
    """Label group name -> boolean row mask (one per class, or positives per attribute)."""
    if table.kind == "classes":
        return {n: table.labels == i for i, n in enumerate(table.label_names)}
    return {n: table.labels[:, i].astype(bool) for i, n in enumerate(table.label_names)}


def check_counts(table: SampleTable, cfg: InspectConfig) -> tuple[list[Finding], dict]:
    """Counts per label and split; imbalance, rare attributes, classes missing from a split."""
    findings: list[Finding] = []
    splits = [s for s in SPLITS if s in table.splits] or [None]
    counts = {str(s): {n: int(m[np.array([x == s for x in table.splits])].sum())
                       for n, m in _groups_of_rows(table).items()} for s in splits}
    total = {n: int(m.sum()) for n, m in _groups_of_rows(table).items()}
    if table.kind == "classes" and len(total) < 2:
        findings.append(Finding("single-class", "error", f"only one class ({table.label_names[0]!r}): "
                                f"a classifier needs at least two", "add a folder of photos for each other class"))
    elif table.kind == "classes":
        big, small = max(total, key=total.get), min(total, key=total.get)
        ratio = total[big] / max(1, total[small])
        if ratio >= cfg.imbalance_ratio:
            findings.append(Finding(
                "imbalance", "warning",
                f"classes are imbalanced: '{big}' has {total[big]} photos, '{small}' {total[small]} ({ratio:.1f}x)",
                f"collect more photos of '{small}' (facelab collect), or train with class weights / a "
                f"balanced sampler, and judge the model by balanced accuracy and per-class recall"))
        for s in splits:
            missing = [n for n, c in counts[str(s)].items() if c == 0]
            if s is not None and missing:
                findings.append(Finding("missing-class", "warning", f"split '{s}' has no photos of {missing}",
                                        f"move some photos of {missing} into '{s}' so it is measured"))
    else:
        n = max(1, len(table))
        rare = [f"{a} ({c / n:.1%})" for a, c in total.items() if not cfg.rare_rate <= c / n <= 1 - cfg.rare_rate]
        if rare:
            findings.append(Finding(
                "rare-attribute", "warning",
                f"{len(rare)} attribute(s) are almost always on or off: {', '.join(rare)}",
                "train with pos_weight (the loss's positive weight), tune each threshold on the "
                "validation split, and report per-attribute AUC / F1 rather than accuracy"))
    return findings, {"per_split": counts, "total": total}


def check_unreadable(table: SampleTable, errors: dict[int, str]) -> list[Finding]:
    if not errors:
        return []
    files = [f"{table.paths[i]}: {r}" for i, r in sorted(errors.items())]
    return [Finding("unreadable", "error", f"{len(errors)} file(s) cannot be read as images",
                    "delete or replace them (facelab prepare skips them and lists them in its report)", files)]


def duplicate_groups(stats: Sequence[ImageStats | None], cfg: InspectConfig) -> list[tuple[list[int], str]]:
    """Groups of row indices showing the same picture, each with ``"exact"`` or ``"near"``."""
    ok = [i for i, s in enumerate(stats) if s is not None]
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_sha[stats[i].sha256].append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    # Near-identical pictures among one representative per exact group. A flat picture (one
    # colour, no detail) hashes like every other flat picture: only its exact copies count.
    reps = [g[0] for g in by_sha.values() if not _flat(stats[g[0]])]
    pairs = near_pairs([stats[i].fp for i in reps], cfg.hash_threshold, cfg.diff_threshold)
    rep_of = {g[0]: g for g in by_sha.values()}
    out: list[tuple[list[int], str]] = []
    near_members: set[int] = set()
    for grp in groups(len(reps), pairs):
        rows = sorted(r for k in grp for r in rep_of[reps[k]])
        near_members.update(rows)
        out.append((rows, "near"))
    out += [(sorted(g), "exact") for g in exact if g[0] not in near_members]
    return sorted(out)


FLAT_CONTRAST = 2.0
"""A picture whose brightness varies less than this (std of 0-255 luma) has no detail to
compare: flat single-colour images are not "near-identical" to one another."""


def _flat(s: ImageStats) -> bool:
    return s.contrast < FLAT_CONTRAST


def check_duplicates(table: SampleTable, dups: list[tuple[list[int], str]]) -> list[Finding]:
    findings: list[Finding] = []
    leaks, conflicts, plain = [], [], []
    for rows, how in dups:
        splits = {table.splits[i] for i in rows} - {None}
        labels = {table.label_text(i) for i in rows}
        item = (rows, how)
        (leaks if len(splits) > 1 else conflicts if len(labels) > 1 else plain).append(item)
        if len(splits) > 1 and len(labels) > 1:
            conflicts.append(item)

    def where(i: int) -> str:
        label = f": {table.label_text(i)}" if table.kind == "classes" else ""
        return f"{table.paths[i]} [{table.splits[i] or '-'}{label}]"

    def files(items: list) -> list[str]:
        return [" = ".join(where(i) for i in rows) + f" ({how})" for rows, how in items]

    if leaks:
        findings.append(Finding(
            "leakage-duplicate", "error",
            f"{len(leaks)} picture(s) appear in more than one split: validation/test scores are inflated",
            "keep one copy of each picture, in one split only, before training", files(leaks)))
    if conflicts:
        findings.append(Finding("conflicting-labels", "warning",
                                f"{len(conflicts)} picture(s) appear more than once with different labels",
                                "decide the right label and delete the other copies",
                                [f"{f}; labels differ in: {_label_difference(table, rows)}"
                                 for f, (rows, _) in zip(files(conflicts), conflicts)]))
    if plain:
        findings.append(Finding("duplicate", "warning",
                                f"{len(plain)} picture(s) appear more than once (same split, same label)",
                                "delete the extra copies: they weigh those photos double", files(plain)))
    return findings


def _label_difference(table: SampleTable, rows: Sequence[int]) -> str:
    labels = table.labels[list(rows)]
    if table.kind == "classes":
        return ", ".join(sorted({table.label_names[int(v)] for v in labels}))
    differ = np.flatnonzero(labels.min(axis=0) != labels.max(axis=0))
    return ", ".join(table.label_names[j] for j in differ)


def check_identity_leakage(table: SampleTable) -> tuple[list[Finding], dict]:
    if not table.has_identities:
        return [], {}
    splits_of: dict[str, set[str]] = defaultdict(set)
    count = Counter(i for i in table.identities if i is not None)
    for ident, s in zip(table.identities, table.splits):
        if ident is not None and s is not None:
            splits_of[ident].add(s)
    crossing = sorted(i for i, s in splits_of.items() if len(s) > 1)
    per = np.array(list(count.values()))
    summary = {"identities": len(count), "photos_per_identity": {
        "min": int(per.min()), "median": float(np.median(per)), "max": int(per.max())}, "crossing": crossing}
    if not crossing:
        return [], summary
    files = [f"person {i}: " + ", ".join(sorted(splits_of[i])) for i in crossing]
    return [Finding("leakage-identity", "error",
                    f"{len(crossing)} of {len(count)} people have photos in more than one split: scores "
                    f"measure recognising these people, not generalising to new ones",
                    "split by person (all photos of one person in one split), unless the task is to "
                    "recognise exactly these people", files)], summary


def _auc(values: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``values`` as a score for ``positive`` (ties count half)."""
    n1 = int(positive.sum())
    n0 = len(values) - n1
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # tied values share their mean rank
    ranks = np.empty(len(values))
    ranks[order] = mid_rank[inverse]
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def check_shortcuts(table: SampleTable, stats: Sequence[ImageStats | None], cfg: InspectConfig) -> tuple[list[Finding], dict]:
    """Image properties that alone tell a class apart (lighting, background, camera, size)."""
    ok = np.array([s is not None for s in stats])
    props = {p: np.array([s.value(p) if s is not None else np.nan for s in stats]) for p in PROPERTIES}
    formats = Counter(s.format for s in stats if s is not None)
    for fmt in formats if len(formats) > 1 else []:
        props[f"format={fmt}"] = np.array([float(s.format == fmt) if s is not None else np.nan for s in stats])
    table_aucs: dict[str, dict[str, float]] = {}
    hits: list[str] = []
    label_groups = list(_groups_of_rows(table).items())
    if table.kind == "classes" and len(label_groups) == 2:
        label_groups = label_groups[1:]  # with two classes, "B vs the rest" already says "A vs B"
    for name, mask in label_groups:
        pos, neg = mask & ok, ~mask & ok
        if min(pos.sum(), neg.sum()) < cfg.min_group:
            continue
        row = {}
        for prop, vals in props.items():
            a = _auc(vals[ok], pos[ok])
            row[prop] = round(a, 3)
            if max(a, 1 - a) >= cfg.shortcut_auc:
                side = "higher" if a > 0.5 else "lower"
                hits.append(f"'{name}' has {side} {prop} than the rest (AUC {max(a, 1 - a):.2f}; "
                            f"mean {np.nanmean(vals[pos]):.3g} vs {np.nanmean(vals[neg]):.3g})")
        table_aucs[name] = row
    if not hits:
        return [], table_aucs
    return [Finding("shortcut", "warning",
                    f"{len(hits)} image propert{'y' if len(hits) == 1 else 'ies'} alone tell labels apart: a "
                    f"model can learn the lighting, background or camera instead of the face",
                    "photograph every class under the same conditions, or reduce the cue: "
                    "facelab prepare's light balancing (CLAHE) and background suppression, colour/brightness "
                    "augmentation, the same file format and size for all", hits)], table_aucs


# --------------------------------------------------------------------------- optional checks

def check_faces(table: SampleTable, cfg: InspectConfig, progress: bool) -> tuple[list[Finding], dict]:
    """Face detection outcome per label, through facelab.prepare (its cache makes re-runs fast)."""
    from facelab.prepare import PrepareConfig, run_files

    pcfg = PrepareConfig(detector=cfg.detector) if cfg.detector else PrepareConfig()
    results = run_files(table.paths, pcfg, workers=cfg.workers, progress=progress, desc="inspect faces")
    per: dict[str, Counter] = {}
    several: dict[str, Counter] = {}
    for name, mask in _groups_of_rows(table).items():
        per[name] = Counter(results[i].status for i in np.flatnonzero(mask))
        # under the default policy (keep the largest) a photo of several people is "kept":
        # flagged all the same, since which face speaks for the label is a guess
        several[name] = Counter(no_face=per[name]["no_face"],
                                several=sum(results[i].n_faces > 1 for i in np.flatnonzero(mask)))
    fixes = {"no-face": "check these photos; facelab prepare drops them",
             "several-faces": f"check these photos; facelab prepare {_several_faces_policy(pcfg)}: crop them "
                              "to the labelled person, or remove them"}
    findings = []
    for key, check, test in (("no_face", "no-face", lambda r: r.status == "no_face"),
                             ("several", "several-faces", lambda r: r.n_faces > 1)):
        bad = [r.path for r in results if test(r)]
        if bad:
            by = ", ".join(f"{n}: {c[key]}" for n, c in several.items() if c[key])
            what = "without a face" if check == "no-face" else "with several faces"
            findings.append(Finding(check, "warning", f"{len(bad)} photo(s) {what} ({by})", fixes[check], bad))
    return findings, {n: dict(c) for n, c in per.items()}


def _several_faces_policy(pcfg: Any) -> str:
    return {"skip": "drops them", "all": "keeps every face, each with the photo's label"}.get(
        pcfg.multi_face, f"keeps one face (multi_face={pcfg.multi_face})")


def check_label_errors_embedding(table: SampleTable, stats: Sequence[ImageStats | None],
                                 k: int = 5, progress: bool = True) -> list[Finding]:
    """Photos whose face embedding sits with another class (kNN majority and nearest centroid)."""
    from facelab.embed import embed_crops
    from facelab.images import read_image

    if table.kind != "classes":
        return [Finding("label-error", "info", "the embedding check needs classes (not attributes)")]
    rows = [i for i, s in enumerate(stats) if s is not None]
    emb = embed_crops([read_image(table.paths[i]) for i in rows], progress=progress)
    labels = table.labels[rows]
    d = np.sqrt(np.maximum(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    suspects, where = [], []
    for r in range(len(rows)):
        nn = np.argsort(d[r])[:k]
        votes = Counter(labels[nn].tolist())
        other, n_other = votes.most_common(1)[0]
        if other == labels[r] or n_other < (k + 1) // 2 + 1:
            continue
        own = d[r, labels == labels[r]]
        own = own[np.isfinite(own)]
        if own.size and d[r, labels == other].mean() < own.mean():
            i = rows[r]
            suspects.append(f"{table.paths[i]}: labelled '{table.label_text(i)}', looks like "
                            f"'{table.label_names[other]}' ({n_other} of {k} nearest faces)")
            where.append(i)
    return _label_errors(suspects, where, "look like another class",
                         "look at each one and move it to the right folder (or delete it)")


def _load_run(run: str) -> Any:
    """``facelab.load(run)``; a face-embed run also loads without the CNN stage's bundle module."""
    try:
        from facelab.bundle import load

        return load(run)
    except ModuleNotFoundError as exc:
        if exc.name != "facelab.bundle":
            raise
        from facelab import people

        return people.load(run)


def _run_crops(table: SampleTable, bundle: dict, cfg: InspectConfig, progress: bool) -> dict[int, np.ndarray]:
    """Row -> the aligned crop the run would see (prepared folders are crops already;
    otherwise the run's own face preparation, through facelab.prepare's cache)."""
    from facelab.images import ImageError, read_image

    if table.prepared:
        crops = {}
        for i, p in enumerate(table.paths):
            try:
                crops[i] = read_image(p)
            except ImageError:
                continue
        return crops
    from facelab.prepare import PrepareConfig, run_files

    results = run_files(table.paths, PrepareConfig.from_dict(bundle.get("prepare")), workers=cfg.workers,
                        progress=progress, desc="inspect run")
    return {i: read_image(r.crops[0]) for i, r in enumerate(results) if r.crops}


def check_label_errors_run(table: SampleTable, cfg: InspectConfig, progress: bool = True) -> list[Finding]:
    """Photos where a trained model confidently disagrees with the label: it gives the
    labelled class at most ``1 - cfg.disagree`` (multilabel: is off by more than
    ``cfg.disagree`` on an attribute)."""
    from facelab.tasks import infer_task, targets_from_table

    predictor = _load_run(str(cfg.run))
    task = infer_task(table)
    if list(predictor.labels) != list(task.labels):
        return [Finding("label-error", "info", f"run {cfg.run} predicts {list(predictor.labels)}, "
                                               f"not this source's labels {list(task.labels)}; skipped")]
    crops = _run_crops(table, predictor.bundle, cfg, progress)
    rows = sorted(crops)
    probs = np.concatenate([predictor.predict_crops([crops[i] for i in rows[s:s + 64]])
                            for s in range(0, len(rows), 64)]) if rows else np.zeros((0, len(task.labels)))
    y = targets_from_table(table, task)
    suspects, where = [], []
    for i, p in zip(rows, probs):
        if task.kind == "multilabel":
            wrong = [task.labels[j] for j in range(len(task.labels)) if abs(float(p[j]) - y[i, j]) > cfg.disagree]
        else:
            wrong = [task.labels[int(p.argmax())]] if p[int(y[i])] <= 1 - cfg.disagree else []
        if wrong:
            suspects.append(f"{table.paths[i]}: labelled '{table.label_text(i)}', model says {wrong} "
                            f"(p={float(p.max()):.2f})")
            where.append(i)
    return _label_errors(suspects, where, "where the model confidently disagrees",
                         "look at each one: a wrong label, or a hard case worth more examples")


def _label_errors(suspects: list[str], rows: list[int], what: str, fix: str) -> list[Finding]:
    if not suspects:
        return []
    return [Finding("label-error", "warning", f"{len(suspects)} photo(s) {what}", fix, suspects, rows)]


# --------------------------------------------------------------------------- plots and report

def _bar_png(title: str, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
             horizontal: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * n)) if horizontal else (max(5, 0.35 * n + 2), 3.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(n)
    for k, (label, vals) in enumerate(series.items()):
        pos = x + (k - (len(series) - 1) / 2) * width
        (ax.barh if horizontal else ax.bar)(pos, vals, width, label=label)
    if horizontal:
        ax.set_yticks(x, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(x, names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center", fontsize=8)
        ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return _html.figure_png(fig)


def _property_png(table: SampleTable, stats: Sequence[ImageStats | None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups_ = {n: m for n, m in _groups_of_rows(table).items()}
    if len(groups_) > 12:  # too many to draw one box each: keep the largest
        groups_ = dict(sorted(groups_.items(), key=lambda kv: -kv[1].sum())[:12])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    for ax, prop in zip(axes, ("brightness", "contrast", "saturation", "height")):
        data = [[s.value(prop) for s, m in zip(stats, mask) if m and s is not None] for mask in groups_.values()]
        ax.boxplot([d or [np.nan] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(groups_) + 1), list(groups_), rotation=45, ha="right", fontsize=7)
        ax.set_title(prop)
    return _html.figure_png(fig)


def _thumb(path: Path, side: int = 96) -> np.ndarray | None:
    from facelab.images import ImageError, read_image

    try:
        rgb = read_image(path)
    except ImageError:
        return None
    step = max(1, max(rgb.shape[:2]) // (2 * side))
    return rgb[::step, ::step]


def _grid_png(table: SampleTable, rows: Sequence[int], captions: Sequence[str], cols: int = 8) -> bytes:
    return _html.png_bytes(_html.image_grid([_thumb(table.paths[i]) for i in rows], captions, cols=cols, tile=96))


def _sample_grids(table: SampleTable, cfg: InspectConfig, errors: dict[int, str]) -> list[tuple[str, bytes]]:
    if cfg.samples == 0:
        return []
    rng = np.random.default_rng(0)
    grids = []
    masks = _groups_of_rows(table) if table.kind == "classes" else {"all photos": np.ones(len(table), bool)}
    for name, mask in list(masks.items())[:40]:
        idx = [i for i in np.flatnonzero(mask) if i not in errors]
        pick = sorted(rng.choice(idx, size=min(cfg.samples, len(idx)), replace=False)) if idx else []
        caps = [f"{table.paths[i].name} {table.splits[i] or ''}" for i in pick]
        grids.append((name, _grid_png(table, pick, caps)))
    return grids


def _dup_grid(table: SampleTable, dups: list[tuple[list[int], str]], max_groups: int = 12) -> bytes | None:
    leaking_first = sorted(dups, key=lambda d: -len({table.splits[i] for i in d[0]}))[:max_groups]
    rows, caps = [], []
    for members, how in leaking_first:
        for i in members[:4]:
            rows.append(i)
            caps.append(f"{how} {table.splits[i] or '-'} {table.label_text(i)[:14]}")
    return _grid_png(table, rows, caps) if rows else None


def _identity_grid(table: SampleTable, crossing: Sequence[str], max_people: int = 6) -> bytes | None:
    rows, caps = [], []
    for ident in crossing[:max_people]:
        for s in SPLITS:
            idx = [i for i, (p, sp) in enumerate(zip(table.identities, table.splits)) if p == ident and sp == s]
            if idx:
                rows.append(idx[0])
                caps.append(f"person {ident} {s}")
    return _grid_png(table, rows, caps, cols=6) if rows else None


def _findings_html(findings: Sequence[Finding]) -> str:
    if not any(f.severity != "info" for f in findings):
        return "<div class='ok'>No problems found.</div>"
    parts = []
    for f in sorted(findings, key=lambda f: SEVERITIES.index(f.severity)):
        files = "".join(f"<li>{_html.escape(x)}</li>" for x in f.files[:30])
        more = f"<li>... and {len(f.files) - 30} more (report.json)</li>" if len(f.files) > 30 else ""
        parts.append(f"<div class='warn'><b>{_html.escape(f.severity.upper())} [{_html.escape(f.check)}]</b> "
                     f"{_html.escape(f.message)}<br><i>Fix:</i> {_html.escape(f.fix)}"
                     f"{'<ul>' + files + more + '</ul>' if files else ''}</div>")
    return "".join(parts)


# --------------------------------------------------------------------------- entry point

def inspect(data: str | Path | SampleTable, out: str | Path, config: InspectConfig | None = None,
            attrs: Sequence[str] | None = None, progress: bool = True, **overrides: Any) -> InspectReport:
    """Inspect a data source and write ``report.html``, ``report.json`` and plots to ``out``.

    Args:
        data: anything :func:`facelab.data.load_source` reads (or a loaded SampleTable).
        out: report folder (created).
        config: checks and thresholds; ``**overrides`` replace single fields.
        attrs: keep only these attributes (CelebA / attribute CSV).
        progress: show progress bars.
    """
    cfg = config or InspectConfig()
    if overrides:
        cfg = InspectConfig(**{**asdict(cfg), **overrides})
    table = data if isinstance(data, SampleTable) else load_source(data, attrs=attrs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats, errors = scan(table.paths, cfg.workers, progress)

    findings = check_unreadable(table, errors)
    f, counts = check_counts(table, cfg)
    findings += f
    dups = duplicate_groups(stats, cfg) if cfg.duplicates else []
    findings += check_duplicates(table, dups)
    f, identity = check_identity_leakage(table)
    findings += f
    f, shortcut_aucs = check_shortcuts(table, stats, cfg)
    findings += f
    faces: dict = {}
    if cfg.faces:
        f, faces = check_faces(table, cfg, progress)
        findings += f
    if cfg.embed:
        findings += check_label_errors_embedding(table, stats, progress=progress)
    if cfg.run:
        findings += check_label_errors_run(table, cfg, progress)
    for x in findings:
        (log.warning if x.severity != "info" else log.info)("[%s] %s", x.check, x.message)

    summary = _summary(table, stats, errors, counts, identity, shortcut_aucs, faces, dups)
    plots = _plots(table, stats, counts, out)
    html_path = _write_html(out, table, cfg, findings, summary, plots, dups, errors, identity)
    json_path = write_json(out / "report.json", {
        "source": str(table.root), "kind": table.kind, "labels": table.label_names,
        "config": asdict(cfg), "findings": [asdict(x) for x in findings], "summary": summary,
        "plots": sorted(plots)})
    log.info("inspect report: %s", html_path)
    return InspectReport(out=out, html=html_path, json=json_path, findings=findings, summary=summary)


def _summary(table: SampleTable, stats: Sequence[ImageStats | None], errors: dict[int, str], counts: dict,
             identity: dict, shortcut_aucs: dict, faces: dict, dups: list) -> dict[str, Any]:
    good = [s for s in stats if s is not None]
    per_label = {}
    for name, mask in _groups_of_rows(table).items():
        sel = [s for s, m in zip(stats, mask) if m and s is not None]
        if sel:
            per_label[name] = {p: round(float(np.mean([s.value(p) for s in sel])), 3) for p in PROPERTIES}
            per_label[name]["formats"] = dict(Counter(s.format for s in sel))
    return {
        "photos": len(table), "readable": len(good), "unreadable": len(errors),
        "source": table.source, "skipped_while_listing": table.skipped,
        "counts": counts, "identity": identity, "image_properties": per_label,
        "formats": dict(Counter(s.format for s in good)),
        "sizes": dict(Counter(f"{s.width}x{s.height}" for s in good).most_common(10)),
        "greyscale": sum(s.greyscale for s in good),
        "shortcut_auc": shortcut_aucs, "faces": faces,
        "duplicate_groups": [{"rows": [str(table.paths[i]) for i in g], "kind": how} for g, how in dups],
    }


def _plots(table: SampleTable, stats: Sequence[ImageStats | None], counts: dict, out: Path) -> dict[str, bytes]:
    plots: dict[str, bytes] = {}
    names = list(table.label_names)
    per_split = counts["per_split"]
    if table.kind == "classes":
        plots["counts.png"] = _bar_png("photos per class", names,
                                       {s: [per_split[s][n] for n in names] for s in per_split}, "photos")
    else:
        n = {s: max(1, sum(1 for x in table.splits if str(x) == s)) for s in per_split}
        plots["attributes.png"] = _bar_png("positive rate per attribute", names,
                                           {s: [per_split[s][a] / n[s] for a in names] for s in per_split},
                                           "positive rate", horizontal=True)
    if any(s is not None for s in stats):
        plots["properties.png"] = _property_png(table, stats)
    if table.has_identities:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(list(Counter(i for i in table.identities if i).values()), bins=20)
        ax.set_xlabel("photos per person")
        ax.set_ylabel("people")
        plots["identities.png"] = _html.figure_png(fig)
    for name, png in plots.items():
        write_bytes(out / name, png)
    return plots


def _write_html(out: Path, table: SampleTable, cfg: InspectConfig, findings: list[Finding], summary: dict,
                plots: dict[str, bytes], dups: list, errors: dict[int, str], identity: dict) -> Path:
    sections = [("Findings", _findings_html(findings))]
    count_rows = [(n, *[summary["counts"]["per_split"][s][n] for s in summary["counts"]["per_split"]],
                   summary["counts"]["total"][n]) for n in table.label_names]
    sections.append(("Counts", _html.table(count_rows, ["label", *summary["counts"]["per_split"], "total"])
                     + "".join(_html.img_tag(plots[p], p) for p in ("counts.png", "attributes.png") if p in plots)))
    if "identities.png" in plots:
        sections.append(("People", f"<p>{identity['identities']} people; photos per person: "
                                   f"{_html.escape(identity['photos_per_identity'])}</p>"
                         + _html.img_tag(plots["identities.png"], "photos per person")))
        grid = _identity_grid(table, identity["crossing"])
        if grid:
            sections.append(("Same person in several splits", _html.img_tag(grid, "identity leakage")))
    if dups:
        sections.append(("Duplicates (leaks across splits first)", _html.img_tag(_dup_grid(table, dups), "duplicates")))
    props = summary["image_properties"]
    prop_rows = [(n, *[v[p] for p in PROPERTIES], ", ".join(f"{k}: {c}" for k, c in v["formats"].items()))
                 for n, v in props.items()]
    sections.append(("Image properties per label", _html.table(prop_rows, ["label", *PROPERTIES, "formats"])
                     + (_html.img_tag(plots["properties.png"], "properties") if "properties.png" in plots else "")))
    suspects = [i for f in findings if f.check == "label-error" for i in f.rows][:32]
    if suspects:
        sections.append(("Suspected label errors", _html.img_tag(
            _grid_png(table, suspects, [f"labelled {table.label_text(i)}" for i in suspects]), "label errors")))
    if errors:
        sections.append(("Unreadable files", _html.table([(str(table.paths[i]), r) for i, r in errors.items()],
                                                         ["file", "reason"])))
    if summary["faces"]:
        statuses = sorted({s for c in summary["faces"].values() for s in c})
        sections.append(("Face detection per label", _html.table(
            [(n, *[c.get(s, 0) for s in statuses]) for n, c in summary["faces"].items()], ["label", *statuses])))
    for name, png in _sample_grids(table, cfg, errors):
        sections.append((f"Samples: {name}", _html.img_tag(png, name)))
    intro = (f"<p class='muted'>{_html.escape(table.root)} ({table.source}, {len(table)} photos, "
             f"{len(table.label_names)} {table.kind})</p>")
    return _html.write_page(out / "report.html", "facelab inspect", sections, intro)
