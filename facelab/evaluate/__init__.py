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

Modules: :mod:`.config` (options, result), :mod:`.runs` (members, predictors, targets,
probabilities), :mod:`.core` (rows, thresholds, :func:`evaluate`), :mod:`.analysis`
(subgroups, ensemble spread), :mod:`.plots` and :mod:`.report` (the files). The numbers
are computed before, and apart from, any rendering.
"""
from __future__ import annotations

from facelab.evaluate.analysis import ensemble_spread, subgroup_values
from facelab.evaluate.config import (DEFAULT_SUBGROUPS, MIN_TUNE_PEOPLE, MIN_TUNE_PHOTOS, SUBJECTIVE_ATTRIBUTES,
                                     EvalResult, EvaluateConfig)
from facelab.evaluate.core import evaluate, save_thresholds
from facelab.evaluate.plots import disagreement_grid, make_plots, top_loss_grids
from facelab.evaluate.report import model_card, write_outputs, write_predictions, write_report
from facelab.evaluate.runs import bundle_json_path, predict_table, resolve_members, task_targets

__all__ = ["DEFAULT_SUBGROUPS", "MIN_TUNE_PEOPLE", "MIN_TUNE_PHOTOS", "SUBJECTIVE_ATTRIBUTES", "EvalResult",
           "EvaluateConfig", "bundle_json_path", "disagreement_grid", "ensemble_spread", "evaluate", "make_plots",
           "model_card", "predict_table", "resolve_members", "save_thresholds", "subgroup_values", "task_targets",
           "top_loss_grids", "write_outputs", "write_predictions", "write_report"]
