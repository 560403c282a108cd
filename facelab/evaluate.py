"""Evaluate trained runs on a data source: honest metrics, pictures of the errors, a model card.

``evaluate(run, data)`` loads the run's bundle (``facelab.load``), puts the photos through
the SAME face preparation the model was trained with (the bundle's ``prepare`` config), and
writes into the run folder (or ``out``):

* ``metrics.json``: every number (see :func:`facelab.metrics.evaluate_predictions`), plus
  subgroups, tuned thresholds and ensemble disagreement;
* ``report.html``: one self-contained page with every plot (no network needed);
* ``plots/*.png``: confusion matrix, ROC, per-attribute bars, reliability diagram,
  subgroup bars, top-loss grids, ensemble disagreement grid;
* ``predictions.csv``: one row per photo;
* ``MODEL_CARD.md``: data, task, metrics beside baselines, subgroup gaps, calibration, limits.

Several runs (or a ``runs/NAME`` folder with ``ensemble.json`` = ``{"members": [...]}``)
are evaluated as an ensemble: mean probability, and its standard deviation per photo.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab import metrics as M
from facelab._io import read_json, write_bytes, write_json, write_text
from facelab.data import SPLITS, DataError, SampleTable
from facelab.ensemble import ENSEMBLE_FILE, is_ensemble, read_members
from facelab.tasks import Task

log = logging.getLogger(__name__)

DEFAULT_SUBGROUPS = ("Male", "Young")
#: CelebA attributes whose labels are opinions of the annotators, not facts about the photo.
SUBJECTIVE_ATTRIBUTES = ("Attractive", "Young", "Chubby", "Big_Nose", "Big_Lips", "Pointy_Nose",
                         "Oval_Face", "Narrow_Eyes", "Pale_Skin", "Heavy_Makeup", "Bags_Under_Eyes",
                         "Arched_Eyebrows", "Bushy_Eyebrows", "High_Cheekbones")


@dataclass
class EvaluateConfig:
    """What to evaluate and how."""

    split: str | None = "test"
    """Split to report on when the source has splits; None = every photo."""
    tune_split: str | None = "auto"
    """Split on which decision thresholds are tuned (binary / multilabel); None = no tuning;
    ``auto`` = the valid split when it holds at least :data:`MIN_TUNE_PEOPLE` people (or, with
    no identities, :data:`MIN_TUNE_PHOTOS` photos). Thresholds tuned on celeba-mini's 4 valid
    people went to 0.03 and 0.95 and cost balanced accuracy on the test people (0.788 -> 0.777)."""
    tune_metric: str = "balanced_accuracy"
    """What the tuned thresholds maximise: balanced_accuracy (the default: tuning for accuracy
    on a small, imbalanced validation set pushes a threshold towards the majority answer),
    accuracy or f1."""
    save_thresholds: bool = True
    """Write the tuned thresholds into the run's bundle.json (task.thresholds)."""
    subgroups: tuple[str, ...] | None = None
    """Attribute columns (or ``identity``) to split accuracy by; None = Male, Young where present."""
    top_k: int = 16
    """Faces per top-loss grid."""
    batch_size: int = 64
    """Crops per forward pass."""
    bins: int = 10
    """Reliability-diagram bins."""
    min_group: int = 5
    """Subgroups with fewer photos are listed but left out of the worst-minus-best gap."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("split", "tune_split"):
            value = getattr(self, name)
            if value is not None and value not in SPLITS and not (name == "tune_split" and value == "auto"):
                raise ValueError(f"{name} must be one of {SPLITS} or None, got {value!r}")
        if self.tune_metric not in M.THRESHOLD_METRICS:
            raise ValueError(f"tune_metric must be one of {M.THRESHOLD_METRICS}, got {self.tune_metric!r}")
        if self.top_k < 0 or self.batch_size < 1 or self.bins < 2 or self.min_group < 1:
            raise ValueError("top_k >= 0, batch_size >= 1, bins >= 2 and min_group >= 1 are required")
        if self.subgroups is not None:
            self.subgroups = tuple(self.subgroups)


@dataclass
class EvalResult:
    """What :func:`evaluate` produced."""

    out: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        base = m.get("baseline", {})
        lines = [f"{m['n']} photos: balanced accuracy {m['balanced_accuracy']:.3f} (a constant answer: "
                 f"{base.get('balanced_accuracy', float('nan')):.3f}), ROC-AUC {_fmt(m['auc'])}, accuracy "
                 f"{m['accuracy']:.3f} (best constant answer {base.get('accuracy', float('nan')):.3f}), "
                 f"ECE {m['ece']:.3f}"]
        lines += [f"  WEAK {name}: {why}" for name, why in m.get("weak_labels", {}).items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- runs

def resolve_members(runs: str | Path | Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Run folders to evaluate, and the ensemble folder when one was given.

    A folder with ``ensemble.json`` expands to its members (paths relative to it or absolute).
    """
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not items:
        raise ValueError("no run given: pass a run folder (runs/NAME) from `facelab train`")
    members: list[Path] = []
    ensemble_dir = None
    for item in items:
        p = Path(item).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run folder; pass a folder written by `facelab train` "
                                    f"(it holds config.json and bundle/bundle.json)")
        if is_ensemble(p):
            members += read_members(p)[0]
            ensemble_dir = ensemble_dir or p
        else:
            members.append(p)
    for m in members:
        if not (m / "bundle" / "bundle.json").is_file() and not (m / "bundle.json").is_file():
            raise FileNotFoundError(f"{m}: not a trained run (no bundle/bundle.json); train it with "
                                    f"`facelab train` or pass the run folder it wrote")
    return members, ensemble_dir


def bundle_json_path(run: Path) -> Path:
    return run / "bundle" / "bundle.json" if (run / "bundle" / "bundle.json").is_file() else run / "bundle.json"


def _load_predictors(members: Sequence[Path]) -> list[Any]:
    from facelab.bundle import load

    predictors = [load(m) for m in members]
    first = predictors[0]
    for m, p in zip(members[1:], predictors[1:]):
        if p.task.kind != first.task.kind or list(p.labels) != list(first.labels):
            raise ValueError(f"ensemble members disagree on the task: {members[0]} predicts "
                             f"{first.task.kind} {list(first.labels)}, {m} predicts {p.task.kind} {list(p.labels)}")
        if (p.bundle.get("prepare") or None) != (first.bundle.get("prepare") or None):
            raise ValueError(f"ensemble members {members[0]} and {m} use different face preparation; "
                             f"an ensemble needs identical crops")
    return predictors


# --------------------------------------------------------------------------- data

def task_targets(table: SampleTable, task: Task) -> np.ndarray:
    """The table's labels in ``task``'s layout, matched BY NAME (not by column position).

    Raises :class:`DataError` when the data lacks a label the model predicts.
    """
    names = list(table.label_names)
    if table.kind == "classes":
        if task.kind == "multilabel":
            raise DataError(f"{table.root}: the model predicts attributes {list(task.labels)} but this data "
                            f"has one class per photo; evaluate on an attribute source (CelebA or CSV)")
        unknown = sorted(set(names) - set(task.labels))
        if unknown:
            raise DataError(f"{table.root}: classes {unknown[:10]} are not among the model's labels "
                            f"{list(task.labels)[:10]}; evaluate on data with the same classes")
        index = np.array([task.labels.index(n) for n in names], np.int64)
        return index[table.labels.astype(np.int64)]
    wanted = [task.labels[1]] if task.kind == "binary" else list(task.labels)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise DataError(f"{table.root}: the model predicts {missing} but the data has no such "
                        f"attribute(s); its attributes are {names[:12]}{'...' if len(names) > 12 else ''}")
    cols = [names.index(n) for n in wanted]
    y = table.labels[:, cols]
    return y[:, 0].astype(np.int64) if task.kind == "binary" else y.astype(np.uint8)


def _prepared(table: SampleTable, prepare: dict | None, progress: bool) -> SampleTable:
    """The table's photos as the model's crops (same pipeline as training)."""
    if table.prepared is not None:
        used = (table.prepared or {}).get("config")
        if prepare and used and any(used.get(k) != prepare.get(k) for k in ("size", "template", "margin",
                                                                             "light", "background")):
            log.warning("%s was prepared with a different face preparation than the model was trained "
                        "with (%s vs %s); metrics may suffer. Evaluate on the raw photos instead, which "
                        "go through the model's own preparation", table.root,
                        {k: used.get(k) for k in ("size", "template", "margin")},
                        {k: prepare.get(k) for k in ("size", "template", "margin")})
        return table
    if not prepare:
        return table
    from facelab.prepare import prepare_table

    return prepare_table(table, prepare, progress=progress)


def predict_table(predictors: Sequence[Any], table: SampleTable, batch_size: int = 64,
                  progress: bool = True) -> np.ndarray:
    """Probabilities of every member for every (crop) photo: float32 (members, N, L)."""
    from facelab._progress import progress as progress_bar
    from facelab.images import read_image

    out = np.zeros((len(predictors), len(table), len(predictors[0].labels)), np.float32)
    bar = progress_bar(len(table), "evaluate", enabled=progress)
    for start in range(0, len(table), batch_size):
        crops = [read_image(p) for p in table.paths[start:start + batch_size]]
        for k, pred in enumerate(predictors):
            out[k, start:start + len(crops)] = pred.predict_crops(crops)
        bar.update(len(crops))
    bar.close()
    return out


# --------------------------------------------------------------------------- evaluate

def evaluate(run: str | Path | Sequence[str | Path], data: str | Path, out: str | Path | None = None,
             config: EvaluateConfig | None = None, **overrides: Any) -> EvalResult:
    """Evaluate ``run`` (a run folder, an ensemble folder, or several runs) on ``data``.

    Returns an :class:`EvalResult`; writes metrics.json, report.html, plots/,
    predictions.csv and MODEL_CARD.md into ``out`` (default: the run / ensemble folder).
    """
    from facelab.data import load_source

    config = config or EvaluateConfig(**overrides)
    members, ensemble_dir = resolve_members(run)
    predictors = _load_predictors(members)
    task = predictors[0].task
    out = Path(out) if out else _default_out(members, ensemble_dir)
    table = load_source(data)
    if len(table) == 0:
        raise DataError(f"{data}: no photos to evaluate")
    task_targets(table, task)  # mismatched labels fail here, before any slow work
    n_source = len(table)
    table = _prepared(table, predictors[0].bundle.get("prepare"), config.progress)
    if len(table) == 0:
        raise DataError(f"{data}: no usable face in any photo (face preparation dropped all {n_source})")
    targets = task_targets(table, task)
    tune_split = _tune_split(table, config)
    eval_rows, tune_rows, train_rows = _split_rows(table, task, config, tune_split,
                                                   _held_out_rows(table, task, members[0], data))
    probs_all = predict_table(predictors, table.subset(np.concatenate([eval_rows, tune_rows])),
                              config.batch_size, config.progress)
    member_probs = probs_all[:, :len(eval_rows)]
    probs, y = member_probs.mean(0), targets[eval_rows]
    tuned_task, thresholds = _tune(task, probs_all[:, len(eval_rows):].mean(0), targets[tune_rows], config,
                                   tune_split)
    train_y = targets[train_rows] if len(train_rows) else None
    metrics = M.evaluate_predictions(tuned_task, probs, y, train_y, config.bins)
    if thresholds.get("tuned"):
        before = M.evaluate_predictions(task, probs, y, train_y, config.bins)
        thresholds["before_metrics"] = {k: before[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
        if config.save_thresholds:
            thresholds["saved_to"] = [str(p) for p in save_thresholds(members, ensemble_dir, tuned_task.thresholds)]
    eval_table = table.subset(eval_rows)
    metrics["thresholds"] = thresholds
    metrics["source"] = _context(members, predictors[0].bundle, data, n_source, table, eval_table, config)
    metrics["subgroups"] = _subgroups(eval_table, tuned_task, probs, y, config)
    metrics["weak_labels"] = M.weak_labels(metrics)  # named in summary(), the report and the card
    if len(members) > 1:
        metrics["ensemble"] = _ensemble_stats(tuned_task, member_probs, y, members)
    files = write_outputs(out, tuned_task, metrics, eval_table, member_probs, y, config)
    # the summary (several lines once weak labels are named) is the caller's to show:
    # `facelab evaluate` and `make demo` print it, the API returns it; logging it here too
    # printed every line twice
    return EvalResult(out, metrics, files)


def _default_out(members: Sequence[Path], ensemble_dir: Path | None) -> Path:
    if ensemble_dir is not None:
        return ensemble_dir
    if len(members) == 1:
        return members[0]
    return members[0].parent / ("ensemble-" + "+".join(m.name for m in members))[:96]


def _held_out_rows(table: SampleTable, task: Task, run: Path, data: str | Path) -> np.ndarray | None:
    """When ``data`` is the run's own training source and has no split: the rows training held
    out for validation (recomputed with its seed), so the report never scores training photos."""
    cfg_path = run / "config.json"
    if table.has_splits or not cfg_path.is_file():
        return None
    cfg = read_json(cfg_path)
    if not cfg.get("data") or Path(cfg["data"]).expanduser().resolve() != Path(data).expanduser().resolve():
        return None
    if (run / "split.json").is_file():  # written by training: the exact photos it held out
        saved = read_json(run / "split.json")
        held = set(saved["valid"])
        valid = np.array([i for i, p in enumerate(table.paths) if str(p) in held], np.int64)
        log.info("%s is the run's training data without a test split: evaluating the %d photos training "
                 "held out for validation (%s)", data, len(valid), saved.get("how"))
        return valid
    from facelab.train import split_indices

    same = table.select_attributes(cfg["attrs"]) if table.kind == "attributes" and cfg.get("attrs") else table
    fraction = cfg.get("valid_fraction")
    _, valid, how = split_indices(same, task, float(fraction) if fraction is not None else None,
                                  int(cfg.get("seed", 0)))
    log.info("%s is the run's training data without a test split: evaluating the %d photos training held "
             "out for validation (%s)", data, len(valid), how)
    return valid


def _split_rows(table: SampleTable, task: Task, config: EvaluateConfig, tune_split: str | None,
                held_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices to report on, to tune thresholds on, and of the training split."""
    splits = np.array([s or "" for s in table.splits])
    if held_out is not None and config.split is not None:
        return held_out, np.zeros(0, np.int64), np.setdiff1d(np.arange(len(table)), held_out)
    if not table.has_splits or config.split is None:
        if config.split is not None:
            log.info("%s has no train/valid/test split: evaluating all %d photos", table.root, len(table))
        return np.arange(len(table)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    eval_rows = np.flatnonzero(splits == config.split)
    if not len(eval_rows):
        raise DataError(f"{table.root}: no photos in the {config.split!r} split; choose another with "
                        f"--split ({', '.join(sorted(set(splits) - {''}))}) or --split all")
    tune = tune_split is not None and task.kind != "multiclass" and tune_split != config.split
    tune_rows = np.flatnonzero(splits == tune_split) if tune else np.zeros(0, np.int64)
    return eval_rows, tune_rows, np.flatnonzero(splits == "train")


#: ``tune_split="auto"`` tunes on the valid split only when it is this broad.
MIN_TUNE_PEOPLE = 10
MIN_TUNE_PHOTOS = 200


def _tune_split(table: SampleTable, config: EvaluateConfig) -> str | None:
    """The split to tune thresholds on: as asked, or for ``auto`` the valid split when it is
    broad enough that thresholds fitted on it carry over to new people."""
    if config.tune_split != "auto":
        return config.tune_split
    rows = [i for i, s in enumerate(table.splits) if s == "valid"]
    people = {table.identities[i] for i in rows} - {None}
    broad = len(people) >= MIN_TUNE_PEOPLE if people else len(rows) >= MIN_TUNE_PHOTOS
    if len(rows) and not broad:
        log.info("thresholds not tuned: the valid split has %s, too few for thresholds that carry over to new "
                 "people; the bundle's own thresholds are used (--tune-split valid tunes anyway)",
                 f"{len(people)} people" if people else f"{len(rows)} photos")
    return "valid" if len(rows) and broad else None


def _tune(task: Task, probs: np.ndarray, targets: np.ndarray, config: EvaluateConfig,
          split: str | None) -> tuple[Task, dict]:
    """Thresholds tuned on ``split`` (``config.tune_split`` resolved by :func:`_tune_split`)."""
    if task.kind == "multiclass":
        return task, {"tuned": False, "why": "multiclass decisions are argmax (no threshold)"}
    if not len(probs):
        return task, {"tuned": False, "thresholds": list(task.thresholds),
                      "why": f"no valid split broad enough to tune on ({MIN_TUNE_PEOPLE}+ people); --tune-split "
                             f"valid tunes anyway"
                      if config.tune_split == "auto"
                      else f"no {config.tune_split!r} split in the data to tune on"}
    new = M.tune_thresholds(task, probs, targets, config.tune_metric)
    return task.with_thresholds(new), {
        "tuned": True, "split": split, "metric": config.tune_metric, "n": int(len(probs)),
        "before": list(task.thresholds), "thresholds": list(new)}


def save_thresholds(members: Sequence[Path], ensemble_dir: Path | None, thresholds: Sequence[float]) -> list[Path]:
    """Store tuned thresholds atomically: in the run's bundle.json (task.thresholds), or in
    ensemble.json for an ensemble (a member keeps its own)."""
    if ensemble_dir is not None:
        path = ensemble_dir / ENSEMBLE_FILE
        spec = read_json(path)
        spec["thresholds"] = list(thresholds)
        return [write_json(path, spec)]
    if len(members) != 1:
        log.info("several runs without an ensemble folder: tuned thresholds reported, not saved")
        return []
    path = bundle_json_path(members[0])
    bundle = read_json(path)
    bundle["task"]["thresholds"] = [float(t) for t in thresholds]
    return [write_json(path, bundle)]


def _context(members: Sequence[Path], bundle: dict, data: str | Path, n_source: int, table: SampleTable,
             eval_table: SampleTable, config: EvaluateConfig) -> dict[str, Any]:
    train_cfg = {}
    cfg_path = members[0] / "config.json"
    if cfg_path.is_file():
        train_cfg = read_json(cfg_path)
    held_out = eval_table is not table and not table.has_splits and len(eval_table) < len(table)
    split = config.split if table.has_splits else ("valid rows held out by training" if held_out else None)
    return {"runs": [str(m) for m in members], "data": str(data), "split": split,
            "photos_in_source": n_source, "dropped_by_face_preparation": n_source - len(table),
            "evaluated": len(eval_table), "model": bundle.get("model", {}), "input": bundle.get("input", {}),
            "train": bundle.get("train", {}),
            "train_data": train_cfg.get("data") or bundle.get("train", {}).get("data"),
            "prepare": bundle.get("prepare")}


def _subgroups(table: SampleTable, task: Task, probs: np.ndarray, y: np.ndarray,
               config: EvaluateConfig) -> dict[str, Any]:
    """Accuracy per value of each subgroup column, with the worst-minus-best gap."""
    columns = config.subgroups
    if columns is None:
        columns = tuple(c for c in DEFAULT_SUBGROUPS if table.kind == "attributes" and c in table.label_names)
    correct = task.decide(probs) == y
    out = {}
    for col in columns:
        out[col] = M.subgroup_accuracy(correct, subgroup_values(table, col), config.min_group)
    return out


def subgroup_values(table: SampleTable, column: str) -> list[str]:
    """The group of each row for ``column``: an attribute (``X`` / ``not_X``) or ``identity``."""
    if column == "identity":
        if not table.has_identities:
            raise DataError(f"{table.root}: no identities to group by")
        return [str(i) for i in table.identities]
    if table.kind != "attributes" or column not in table.label_names:
        valid = ["identity"] + (list(table.label_names) if table.kind == "attributes" else [])
        raise DataError(f"{table.root}: unknown subgroup column {column!r}; valid: {', '.join(valid)}")
    col = table.labels[:, table.label_names.index(column)]
    return [column if v else f"not_{column}" for v in col]


def _ensemble_stats(task: Task, member_probs: np.ndarray, y: np.ndarray, members: Sequence[Path]) -> dict[str, Any]:
    std, disagree = ensemble_spread(task, member_probs)
    return {"members": [{"run": str(m), "accuracy": float(np.mean(task.decide(p) == y))}
                        for m, p in zip(members, member_probs)],
            "mean_std": float(std.mean()), "photos_with_disagreement": int((disagree > 0).sum()),
            "mean_disagreement": float(disagree.mean())}


def ensemble_spread(task: Task, member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: the members' standard deviation of the probability of the ensemble's decision,
    and the fraction of members whose decision differs from the ensemble's (multilabel: mean
    over attributes)."""
    mean = member_probs.mean(0)
    decision = task.decide(mean)
    votes = np.stack([task.decide(p) for p in member_probs])
    disagree = (votes != decision[None]).mean(0)
    std = member_probs.std(0)
    if task.kind == "multiclass":
        std = std[np.arange(len(std)), decision]
    elif task.kind == "binary":
        std = std[:, 1]
    else:
        std, disagree = std.mean(1), disagree.mean(1)
    return std, disagree


# --------------------------------------------------------------------------- outputs

def write_outputs(out: Path, task: Task, metrics: dict, table: SampleTable, member_probs: np.ndarray,
                  y: np.ndarray, config: EvaluateConfig) -> dict[str, Path]:
    """metrics.json, predictions.csv, plots/, report.html and MODEL_CARD.md."""
    out.mkdir(parents=True, exist_ok=True)
    probs = member_probs.mean(0)
    plots = make_plots(task, metrics, table, member_probs, y, config.top_k)
    files = {name: write_bytes(out / "plots" / f"{name}.png", png) for name, png in plots.items()}
    files["metrics"] = write_json(out / "metrics.json", _json_safe(metrics))
    files["predictions"] = write_predictions(out / "predictions.csv", task, table, probs, y, member_probs)
    files["report"] = write_report(out / "report.html", task, metrics, plots)
    files["model_card"] = write_text(out / "MODEL_CARD.md", model_card(task, metrics))
    return files


def write_predictions(path: Path, task: Task, table: SampleTable, probs: np.ndarray, y: np.ndarray,
                      member_probs: np.ndarray) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    std, _ = ensemble_spread(task, member_probs)
    loss = M.per_sample_loss(task, probs, y)
    loss = loss.mean(1) if loss.ndim == 2 else loss
    w.writerow(["photo", "crop", "identity", "target", *[f"p_{n}" for n in task.labels], "loss", "ensemble_std"])
    for i, p in enumerate(table.paths):
        target = task.labels[int(y[i])] if task.kind != "multilabel" else ",".join(
            n for n, v in zip(task.labels, y[i]) if v)
        w.writerow([str(table.source_of(i)), str(p), table.identities[i] or "", target, *[f"{v:.5f}" for v in probs[i]],
                    f"{loss[i]:.5f}", f"{std[i]:.5f}"])
    return write_text(path, buf.getvalue())


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


# --------------------------------------------------------------------------- plots

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_plots(task: Task, metrics: dict, table: SampleTable, member_probs: np.ndarray, y: np.ndarray,
               top_k: int) -> dict[str, bytes]:
    """Every evaluation picture as PNG bytes, keyed by file stem."""
    probs = member_probs.mean(0)
    plots: dict[str, bytes] = {"reliability": plot_reliability(metrics["calibration"])}
    if task.kind == "multilabel":
        plots["attributes"] = plot_attributes(metrics["per_attribute"])
    else:
        plots["confusion"] = plot_confusion(np.asarray(metrics["confusion_matrix"]), task.labels)
    if task.kind == "binary":
        plots["roc"] = plot_roc(y, probs[:, 1], metrics["auc"])
    if metrics.get("subgroups"):
        plots["subgroups"] = plot_subgroups(metrics["subgroups"])
    if top_k:
        plots.update(top_loss_grids(task, table, probs, y, top_k))
    if len(member_probs) > 1 and top_k:
        plots["disagreement"] = disagreement_grid(task, table, member_probs, y, top_k)
    return plots


def plot_confusion(cm: np.ndarray, labels: Sequence[str]) -> bytes:
    from facelab._html import figure_png

    plt = _plt()
    k = len(labels)
    side = min(12.0, 2.5 + 0.3 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if np.nan_to_num(norm[i, j]) > 0.5 else "black", fontsize=8)
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(n)[:14] for n in labels], rotation=90, fontsize=7 if k > 15 else 9)
    ax.set_yticks(ticks, [str(n)[:14] for n in labels], fontsize=7 if k > 15 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (colour: share of the true class)")
    return figure_png(fig)


def plot_roc(y: np.ndarray, score: np.ndarray, auc: float) -> bytes:
    from facelab._html import figure_png

    plt = _plt()
    fpr, tpr = M.roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC {_fmt(auc)})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right")
    ax.set_title("ROC curve")
    return figure_png(fig)


def plot_attributes(per_attr: dict[str, dict]) -> bytes:
    """Accuracy per attribute beside its majority-class baseline, sorted by the lift."""
    from facelab._html import figure_png

    plt = _plt()
    names = sorted(per_attr, key=lambda n: per_attr[n]["accuracy"] - per_attr[n]["baseline_accuracy"])
    acc = [per_attr[n]["accuracy"] for n in names]
    base = [per_attr[n]["baseline_accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.25 * len(names)))
    pos = np.arange(len(names))
    ax.barh(pos + 0.2, acc, height=0.4, label="model")
    ax.barh(pos - 0.2, base, height=0.4, color="#bbb", label="majority baseline")
    ax.set_yticks(pos, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Accuracy per attribute vs always predicting the majority")
    return figure_png(fig)


def plot_reliability(cal: dict) -> bytes:
    from facelab._html import figure_png

    plt = _plt()
    edges = np.asarray(cal["edges"])
    centers = (edges[1:] + edges[:-1]) / 2
    acc = np.array([np.nan if a is None else a for a in cal["accuracy"]])
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centers, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"Reliability diagram (ECE {cal['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    axh.bar(centers, cal["count"], width=edges[1] - edges[0], color="#888")
    axh.set_xlabel("confidence of the decision")
    axh.set_ylabel("decisions")
    return figure_png(fig)


def plot_subgroups(subgroups: dict[str, dict]) -> bytes:
    from facelab._html import figure_png

    plt = _plt()
    rows = [(f"{col}: {g}", r["accuracy"], r["n"]) for col, sg in subgroups.items() for g, r in sg["groups"].items()]
    rows = rows[:40]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.3 * len(rows)))
    pos = np.arange(len(rows))
    ax.barh(pos, [r[1] for r in rows], color="#4a7")
    ax.set_yticks(pos, [f"{r[0]} (n={r[2]})" for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("Accuracy per subgroup")
    return figure_png(fig)


def _read_thumb(path: Path) -> np.ndarray | None:
    from facelab.images import ImageError, read_image

    try:
        return read_image(path)
    except ImageError as exc:
        log.warning("top-loss grid: %s", exc)
        return None


def _grid_png(images: list, captions: list[str], tile: int = 112) -> bytes:
    """A grid whose captions break at "|" (image_grid wraps at a fixed character count)."""
    from facelab._html import image_grid, png_bytes

    width = max(8, tile // 6)  # image_grid's characters per caption line
    lines = [[part[:width].ljust(width) for part in c.split("|")][:3] for c in captions]
    return png_bytes(image_grid(images, ["".join(c).rstrip() for c in lines], cols=8, tile=tile, caption_lines=3))


def top_loss_grids(task: Task, table: SampleTable, probs: np.ndarray, y: np.ndarray, k: int) -> dict[str, bytes]:
    """The most confidently wrong faces: one grid (binary / multiclass) or one per attribute."""
    loss = M.per_sample_loss(task, probs, y)
    wrong = task.decide(probs) != y
    if task.kind != "multilabel":
        idx = [i for i in np.argsort(-loss) if wrong[i]][:k]
        if not idx:
            return {}
        captions = [f"{table.source_of(i).name}|pred {task.labels[int(probs[i].argmax())]} p={probs[i].max():.2f}|"
                    f"true {task.labels[int(y[i])]}" for i in idx]
        return {"top_losses": _grid_png([_read_thumb(table.paths[i]) for i in idx], captions)}
    grids = {}
    for j, name in enumerate(task.labels):
        idx = [i for i in np.argsort(-loss[:, j]) if wrong[i, j]][:max(1, k // 2)]
        if idx:
            captions = [f"{table.source_of(i).name}|p={probs[i, j]:.2f}|true: {'yes' if y[i, j] else 'no'}"
                        for i in idx]
            grids[f"top_losses_{name}"] = _grid_png([_read_thumb(table.paths[i]) for i in idx], captions, tile=96)
    return grids


def disagreement_grid(task: Task, table: SampleTable, member_probs: np.ndarray, y: np.ndarray, k: int) -> bytes:
    """The faces on which the ensemble members disagree most."""
    std, disagree = ensemble_spread(task, member_probs)
    idx = np.lexsort((-std, -disagree))[:k]
    probs = member_probs.mean(0)
    captions = [f"std {std[i]:.2f}|{disagree[i]:.0%} disagree|{_decision_text(task, probs[i])}" for i in idx]
    return _grid_png([_read_thumb(table.paths[i]) for i in idx], captions)


def _decision_text(task: Task, p: np.ndarray) -> str:
    d = task.decide(p[None])[0]
    if task.kind == "multilabel":
        return ",".join(n for n, v in zip(task.labels, d) if v) or "(none)"
    return f"{task.labels[int(d)]} {p[int(d)]:.2f}"


# --------------------------------------------------------------------------- HTML report

def _headline_rows(m: dict) -> list[list[Any]]:
    base = m.get("baseline", {})
    rows = [["accuracy", m["accuracy"], base.get("accuracy", math.nan)],
            ["balanced accuracy", m["balanced_accuracy"], base.get("balanced_accuracy", math.nan)],
            ["ROC-AUC", m["auc"], 0.5], ["macro F1", m.get("macro_f1", math.nan), math.nan],
            ["expected calibration error", m["ece"], math.nan]]
    for r in rows:
        r.append(r[1] - r[2] if not (math.isnan(_num(r[1])) or math.isnan(_num(r[2]))) else math.nan)
    return rows


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def write_report(path: Path, task: Task, m: dict, plots: dict[str, bytes]) -> Path:
    from facelab._html import escape, img_tag, table, write_page

    src = m["source"]
    intro = (f"<p>Runs: {escape(', '.join(src['runs']))}<br>Data: {escape(src['data'])} "
             f"(split: {escape(src['split'] or 'all')}, {src['evaluated']} photos evaluated; "
             f"{src['dropped_by_face_preparation']} of {src['photos_in_source']} dropped by face preparation)<br>"
             f"Task: {escape(task.kind)} over {len(task.labels)} label(s)</p>")
    sections = [("Summary", table(_headline_rows(m), ["metric", "model", "baseline", "model - baseline"])
                 + "<p class='muted'>Baseline: the best constant answer on the evaluated photos (always the "
                   "class most frequent among them); any constant answer scores chance in balanced accuracy.</p>"
                 + _weak_html(m))]
    sections.append(("Decision thresholds", _thresholds_html(m["thresholds"], task)))
    if task.kind == "multilabel":
        rows = [[n, a["accuracy"], a["baseline_accuracy"], a["balanced_accuracy"], a["f1"], a["auc"], a["threshold"],
                 a["positives"]] for n, a in m["per_attribute"].items()]
        sections.append(("Per attribute", table(rows, ["attribute", "accuracy", "majority baseline", "balanced acc.",
                                                         "F1", "AUC", "threshold", "positives"])
                         + img_tag(plots["attributes"], "accuracy per attribute")))
    else:
        rows = [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in m["per_class"].items()]
        sections.append(("Per class", table(rows, ["class", "precision", "recall", "F1", "support"])
                         + img_tag(plots["confusion"], "confusion matrix")
                         + (img_tag(plots["roc"], "ROC curve") if "roc" in plots else "")))
    sections.append(("Calibration", f"<p>Expected calibration error: {m['ece']:.3f} (0 = the stated confidence "
                                    f"matches the observed accuracy).</p>" + img_tag(plots["reliability"], "reliability")))
    sections.append(("Subgroups", _subgroups_html(m["subgroups"], plots)))
    if "ensemble" in m:
        e = m["ensemble"]
        rows = [[r["run"], r["accuracy"]] for r in e["members"]]
        sections.append(("Ensemble", table(rows, ["member", "accuracy"])
                         + f"<p>Mean std of the decided probability: {e['mean_std']:.3f}; members disagree on "
                           f"{e['photos_with_disagreement']} of {src['evaluated']} photos.</p>"
                         + (img_tag(plots["disagreement"], "disagreement") if "disagreement" in plots else "")))
    grids = [(k, v) for k, v in plots.items() if k.startswith("top_losses")]
    sections.append(("Top losses: the most confidently wrong faces",
                     "".join(f"<h3>{escape(k.replace('top_losses_', '') if k != 'top_losses' else '')}</h3>"
                             + img_tag(v, k) for k, v in grids) or "<p class='ok'>No errors.</p>"))
    return write_page(path, "facelab evaluation", sections, intro)


def _weak_html(m: dict) -> str:
    from facelab._html import escape

    weak = m.get("weak_labels") or {}
    if not weak:
        return ""
    items = "".join(f"<li><b>{escape(n)}</b>: {escape(why)}</li>" for n, why in weak.items())
    return f"<p><b>Labels the model has not learned</b> (near or below a constant answer):</p><ul>{items}</ul>"


def _thresholds_html(t: dict, task: Task) -> str:
    from facelab._html import escape, table

    if not t.get("tuned"):
        return f"<p>Not tuned: {escape(t.get('why', ''))}.</p>"
    names = [task.labels[1]] if task.kind == "binary" else list(task.labels)
    rows = [[n, b, a] for n, b, a in zip(names, t["before"], t["thresholds"])]
    before = t.get("before_metrics", {})
    return (f"<p>Tuned on the {escape(t['split'])} split ({t['n']} photos) to maximise {escape(t['metric'])}. "
            f"With the previous thresholds: accuracy {_fmt(before.get('accuracy'))}, balanced accuracy "
            f"{_fmt(before.get('balanced_accuracy'))}. Saved to: {escape(', '.join(t.get('saved_to', [])) or 'not saved')}.</p>"
            + table(rows, ["output", "before", "tuned"]))


def _subgroups_html(subgroups: dict, plots: dict[str, bytes]) -> str:
    from facelab._html import escape, img_tag, table

    if not subgroups:
        return "<p>No subgroup columns (pass --subgroups ATTR,... or identity).</p>"
    parts = []
    for col, sg in subgroups.items():
        rows = [[g, r["n"], r["accuracy"]] for g, r in sg["groups"].items()]
        gap = sg["gap"]
        cls = "warn" if not math.isnan(_num(gap)) and gap < -0.05 else "ok"
        parts.append(f"<h3>{escape(col)}</h3>" + table(rows, ["group", "photos", "accuracy"])
                     + f"<p class='{cls}'>Worst minus best: {_fmt(gap)} (worst group: {escape(sg['worst'])})</p>")
    return "".join(parts) + (img_tag(plots["subgroups"], "subgroups") if "subgroups" in plots else "")


# --------------------------------------------------------------------------- model card

def model_card(task: Task, m: dict) -> str:
    """MODEL_CARD.md: what the model is, how good it is against baselines, where it fails, limits."""
    src = m["source"]
    model = src.get("model", {})
    lines = [f"# Model card: {Path(src['runs'][0]).name}" + (" (ensemble)" if len(src["runs"]) > 1 else ""), "",
             "## Model", f"- Architecture: {model.get('name', '?')} ({model.get('backend', '?')})",
             f"- Input: {src['input'].get('size', '?')} px aligned face crops",
             f"- Runs: {', '.join(src['runs'])}",
             f"- Trained for {src['train'].get('epochs', '?')} epoch(s); training data: "
             f"{src.get('train_data') or 'see the run config.json'}",
             "", "## Task", f"- {task.kind} over {len(task.labels)} label(s): {', '.join(task.labels[:40])}"
             + (" ..." if len(task.labels) > 40 else ""),
             f"- Decision thresholds: {', '.join(f'{t:.2f}' for t in task.thresholds) or 'argmax'}"
             + (f" (tuned on {m['thresholds']['split']} for {m['thresholds']['metric']})"
                if m["thresholds"].get("tuned") else ""),
             "", "## Evaluation data",
             f"- {src['data']}, split {src['split'] or 'all'}: {src['evaluated']} photos "
             f"({src['dropped_by_face_preparation']} of {src['photos_in_source']} dropped: no usable face)",
             "", "## Metrics (beside the best constant answer on these photos)", "",
             "| metric | model | baseline |", "|---|---|---|"]
    lines += [f"| {r[0]} | {_fmt(r[1])} | {_fmt(r[2])} |" for r in _headline_rows(m)]
    if task.kind == "multilabel":
        lines += ["", "| attribute | accuracy | baseline | balanced acc. | AUC |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_fmt(a['accuracy'])} | {_fmt(a['baseline_accuracy'])} | {_fmt(a['balanced_accuracy'])} "
                  f"| {_fmt(a['auc'])} |" for n, a in m["per_attribute"].items()]
    lines += ["", "## Subgroups"]
    for col, sg in m["subgroups"].items():
        groups = "; ".join(f"{g}: {_fmt(r['accuracy'])} (n={r['n']})" for g, r in sg["groups"].items())
        lines.append(f"- {col}: {groups}. Worst minus best: {_fmt(sg['gap'])}")
    if not m["subgroups"]:
        lines.append("- not measured (no subgroup columns in the data)")
    lines += ["", "## Calibration", f"- Expected calibration error {m['ece']:.3f} over {len(m['calibration']['count'])} bins "
              "(see the reliability diagram in report.html)."]
    if "ensemble" in m:
        e = m["ensemble"]
        lines.append(f"- Ensemble of {len(e['members'])}: members disagree on {e['photos_with_disagreement']} photos.")
    lines += ["", "## Intended use and limits", *_limits(task, m)]
    return "\n".join(lines) + "\n"


def _limits(task: Task, m: dict) -> list[str]:
    src = m["source"]
    out = ["- For learning and experiments with face classifiers; not for decisions about people "
           "(hiring, policing, access, credit).",
           f"- Measured on {src['evaluated']} photos only: with so few, a difference of a few points is noise.",
           "- Expects a face the detector finds; photos without one are dropped, not predicted.",
           "- Faces are biometric data: collect and keep them only with consent."]
    subjective = [n for n in task.labels if n in SUBJECTIVE_ATTRIBUTES]
    if subjective:
        out.append(f"- **Subjective labels**: {', '.join(subjective)} are the annotators' opinions (CelebA), not facts "
                   f"about a person; a model predicting them reproduces those opinions and their biases. "
                   + ("'Attractive' in particular must not be used to judge anyone. " if "Attractive" in subjective else ""))
    gaps = [(c, sg) for c, sg in m["subgroups"].items() if not math.isnan(_num(sg["gap"])) and sg["gap"] < -0.05]
    for col, sg in gaps:
        out.append(f"- Accuracy differs by {-sg['gap']:.1%} across {col} groups (worst: {sg['worst']}).")
    if "Male" in task.labels:
        out.append("- **Male** is CelebA's binary annotation of perceived gender; it says nothing about how "
                   "a person identifies.")
    for name, why in (m.get("weak_labels") or {}).items():
        out.append(f"- **{name} not learned**: {why}.")
    return out


def compare(runs: Sequence[str | Path], out: str | Path | None = None) -> list[dict[str, Any]]:
    """``facelab.compare``: see :func:`facelab.compare.compare`."""
    from facelab.compare import compare as _compare

    return _compare(runs, out)
