"""Training: a data source in, a run folder with a model bundle out.

Read in this order (docs/train.md has the user's view, docs/ARCHITECTURE.md the run folder):

- ``config.py``: :class:`TrainConfig`, everything a run needs (stored as ``config.json``).
- ``dataset.py``: :func:`load_data`: source -> prepared crops -> task, split
  (``facelab.splits``), targets -> crops in memory or streamed from a crop store.
- ``imbalance.py``: weighted loss or oversampling, head bias at the priors, thresholds.
- ``runtime.py``: device, AMP, channels_last, DDP rank; the input path through ``InputSpec``.
- ``batches.py``: each epoch's rows per rank, and each step's model input.
- ``schedule.py``: epoch/batch budget, phases (frozen head, then all layers), optimiser.
- ``loop.py``: :func:`run_epochs` -> :func:`train_one_epoch` / :func:`evaluate`, state in one :class:`Loop`.
- ``rundir.py``: config.json, split.json, metrics.csv, checkpoints, the bundle.
- ``run.py``: :func:`train`, the trainer registry, ensembles.
- ``lr_range.py``: :func:`lr_find`, the learning-rate range test.

Transfer models fine-tune the fastai way: a few epochs with the pretrained backbone
frozen (only the new head learns), then all layers with a lower backbone learning rate.
Under ``torchrun --nproc_per_node N`` the same code trains with DistributedDataParallel.
"""
from __future__ import annotations

from facelab.splits import DEFAULT_VALID_FRACTION, _keep_every_class, official_split, split_indices, without_test_split
from facelab.train.batches import epoch_batches, epoch_inputs
from facelab.train.config import (DEFAULT_MODEL, FACE_EMBED, IMBALANCE_MODES, LOADERS, MONITORS, SCHEDULES,
                                  TrainConfig)
from facelab.train.dataset import Data, group_people, load_crops, load_data, load_table, prepared_table, use_stream
from facelab.train.imbalance import Balance, class_balance, compensated_task, init_head_bias
from facelab.train.loop import Loop, _improved, evaluate, evaluate_epoch, predict_logits, run_epochs, train_one_epoch
from facelab.train.lr_range import lr_find, plot_lr_find, suggest_lr
from facelab.train.rundir import METRIC_COLUMNS, EpochTable, State, save_checkpoint, write_metrics, write_split
from facelab.train.run import TRAINERS, get_trainer, train, train_classifier, train_ensemble
from facelab.train.runtime import Runtime, init_distributed, make_runtime, weights_checksum
from facelab.train.schedule import (BATCH_RANGE, EPOCH_RANGE, Phase, base_lr, cosine, make_optimizer, one_cycle,
                                    phase_of, plan_phases, resolve_budget)

__all__ = ["BATCH_RANGE", "DEFAULT_MODEL", "DEFAULT_VALID_FRACTION", "EPOCH_RANGE", "FACE_EMBED", "IMBALANCE_MODES",
           "LOADERS", "METRIC_COLUMNS", "MONITORS", "SCHEDULES", "TRAINERS", "Balance", "Data", "EpochTable", "Loop",
           "Phase", "Runtime", "State", "TrainConfig", "_improved", "_keep_every_class", "base_lr", "class_balance",
           "compensated_task", "cosine", "epoch_batches", "epoch_inputs", "evaluate", "evaluate_epoch",
           "get_trainer", "group_people", "init_distributed", "init_head_bias", "load_crops", "load_data",
           "load_table", "lr_find", "make_optimizer", "make_runtime", "official_split", "one_cycle", "phase_of",
           "plan_phases", "plot_lr_find", "predict_logits", "prepared_table", "resolve_budget", "run_epochs",
           "save_checkpoint", "split_indices", "suggest_lr", "train", "train_classifier", "train_ensemble",
           "train_one_epoch", "use_stream", "weights_checksum", "without_test_split", "write_metrics", "write_split"]
