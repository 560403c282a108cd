"""``evaluate()``: which rows are scored and tuned on, the thresholds, and every number of
metrics.json (the pictures and reports are :mod:`.plots` and :mod:`.report`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab import metrics as M
from facelab._io import read_json, write_json
from facelab.bundle import BUNDLE_FILE, Bundle
from facelab.data import DataError, SampleTable, load_source
from facelab.ensemble import ENSEMBLE_FILE
from facelab.evaluate.analysis import context, ensemble_stats, subgroups
from facelab.evaluate.config import MIN_TUNE_PEOPLE, MIN_TUNE_PHOTOS, EvalResult, EvaluateConfig
from facelab.evaluate.report import write_outputs
from facelab.evaluate.runs import load_predictors, prepared, predict_table, resolve_members, task_targets
from facelab.splits import split_indices
from facelab.tasks import Task

log = logging.getLogger(__name__)


def evaluate(run: str | Path | Sequence[str | Path], data: str | Path, out: str | Path | None = None,
             config: EvaluateConfig | None = None, **overrides: Any) -> EvalResult:
    """Evaluate ``run`` (a run folder, an ensemble folder, or several runs) on ``data``.

    Returns an :class:`EvalResult`; writes metrics.json, report.html, plots/,
    predictions.csv and MODEL_CARD.md into ``out`` (default: the run / ensemble folder).
    """
    config = config or EvaluateConfig(**overrides)
    members, ensemble_dir = resolve_members(run)
    predictors = load_predictors(members)
    task = predictors[0].task
    out = Path(out) if out else _default_out(members, ensemble_dir)
    table = load_source(data)
    if len(table) == 0:
        raise DataError(f"{data}: no photos to evaluate")
    task_targets(table, task)  # mismatched labels fail here, before any slow work
    n_source = len(table)
    table = prepared(table, predictors[0].info.prepare, config.progress)
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
    metrics["source"] = context(members, predictors[0].bundle, data, n_source, table, eval_table, config)
    metrics["subgroups"] = subgroups(eval_table, tuned_task, probs, y, config)
    metrics["weak_labels"] = M.weak_labels(metrics)  # named in summary(), the report and the card
    if len(members) > 1:
        metrics["ensemble"] = ensemble_stats(tuned_task, member_probs, y, members)
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
    out for validation, so the report never scores training photos.

    They are read from the run's ``split.json`` (written by training: the exact photos, by
    path). Runs from before split.json recompute the split with :func:`facelab.splits.split_indices`
    and the run's seed and validation fraction; evaluate never imports the training stage."""
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
    return [Bundle.read(members[0]).with_thresholds(thresholds).write() / BUNDLE_FILE]
