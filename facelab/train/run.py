"""A run from start to end: :func:`train` picks the trainer, :func:`train_classifier`
builds the data, model and :class:`Loop`, runs it and writes the run folder.

Trainers are a registry (name -> ``"module:function"``, like ``facelab.bundle.BACKENDS``):
``facelab train --model face-embed`` trains the embedding classifier of ``facelab.people``
without this module importing it; every other model name is a CNN ``classifier``.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facelab._io import DiskFullError, write_json
from facelab.bundle.spec import InputSpec
from facelab.data import SampleTable
from facelab.errors import ConfigError
from facelab.models import create_model, get_spec
from facelab.train.config import FACE_EMBED, TrainConfig
from facelab.train.dataset import load_data, load_table
from facelab.train.imbalance import class_balance, compensated_task, init_head_bias
from facelab.train.loop import Loop, run_epochs
from facelab.train.rundir import State, check_run_dir, write_bundle, write_config, write_split
from facelab.train.runtime import (barrier, broadcast, check_ranks_agree, init_distributed, make_runtime,
                                   wrap_ddp)
from facelab.train.schedule import base_lr, resolve_budget

__all__ = ["TRAINERS", "get_trainer", "train", "train_classifier", "train_ensemble"]

log = logging.getLogger("facelab.train")

#: Trainer name -> ``"module:function"``; each is called ``fn(table, config, run_dir) -> run_dir``.
TRAINERS: dict[str, str] = {
    "classifier": "facelab.train.run:train_classifier",
    FACE_EMBED: "facelab.people:train_face_embed",
}

Trainer = Callable[[SampleTable, TrainConfig, Path], Path]


def trainer_name(model: str) -> str:
    """The trainer of a model name: its own when registered, else the CNN classifier's."""
    return model if model in TRAINERS else "classifier"


def get_trainer(name: str) -> Trainer:
    """The trainer function registered as ``name`` (imported only now)."""
    target = TRAINERS.get(name)
    if target is None:
        raise ConfigError(f"unknown trainer {name!r}; valid: {', '.join(TRAINERS)}")
    module, _, attr = target.partition(":")
    fn: Trainer = getattr(importlib.import_module(module), attr)
    return fn


def train(data: str | Path | TrainConfig, **options: Any) -> Path:
    """Train a model; returns the run folder (``runs/NAME``), whose bundle
    ``facelab.load`` turns into a predictor.

    >>> run = train("faces/", model="efficientnet_lite0", epochs=3)
    """
    config = replace(data, **options) if isinstance(data, TrainConfig) else TrainConfig(data=str(data), **options)
    try:
        return get_trainer(trainer_name(config.model))(load_table(config), config, config.run_dir)
    except DiskFullError as exc:  # every run file is written atomically: the last epoch saved is whole
        if not exc.path.is_relative_to(config.run_dir):
            raise  # the crop cache's disk: prepare_table's message names it
        raise exc.within(config.run_dir, "free some space (or train into another folder with --out), then "
                                         "run the same command with --resume: it continues from the last "
                                         "saved epoch") from None


def train_classifier(table: SampleTable, config: TrainConfig, run_dir: Path) -> Path:
    """The CNN trainer: one model into ``run_dir``, or an ensemble of ``config.ensemble``."""
    if config.ensemble > 1:
        return train_ensemble(config, table)
    if Path(run_dir) != config.run_dir:
        config = replace(config, out=str(Path(run_dir).parent), name=Path(run_dir).name)
    return _train_single(config, table)


def train_ensemble(config: TrainConfig, table: SampleTable | None = None) -> Path:
    """K members with seeds seed+i in ``NAME/m{i}``, listed in ``NAME/ensemble.json``.

    Every member holds out the SAME validation photos (one ``split_seed``): members that
    split at random each would leave no photo that no member trained on."""
    root = config.run_dir
    members = []
    for i in range(config.ensemble):
        member = replace(config, ensemble=1, seed=config.seed + i, split_seed=config.resolved_split_seed, out=str(root),
                         name=f"m{i}")
        log.info("ensemble member %d/%d (seed %d)", i + 1, config.ensemble, member.seed)
        _train_single(member, table)
        members.append(f"m{i}")
    write_json(root / "ensemble.json", {"members": members, "config": config.to_dict()})
    return root


def _train_single(config: TrainConfig, table: SampleTable | None = None) -> Path:
    run_dir = config.run_dir
    model_spec = get_spec(config.model)
    rt = make_runtime(config, InputSpec(config.image_size or model_spec.size, model_spec.mean, model_spec.std))
    init_distributed(rt)
    ckpt = broadcast(check_run_dir(config, run_dir) if rt.main else None, rt)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = load_data(config, rt.spec.size, rt, table)
    balance = class_balance(data.train_y, data.task, config.imbalance, config.imbalance_ratio)
    log.info("%s", balance.report)
    data.task = compensated_task(data.task, balance)
    model = create_model(config.model, data.task.num_outputs, pretrained=bool(config.pretrained),
                         weights=config.weights, allow_download=config.download_weights, **config.model_kwargs)
    init_head_bias(model, data.train_y, data.task, balance)
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    weight = balance.loss_weight.to(rt.device) if balance.loss_weight is not None else None
    batch_size, epochs = resolve_budget(config, len(data.train_x), rt)
    log.info("%d epochs of %d steps (batch size %d)", epochs, max(1, len(data.train_x) // batch_size), batch_size)
    if rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config, {
            "image_size": rt.spec.size, "batch_size": batch_size, "epochs": epochs, "lr": base_lr(config),
            "split": data.split, "task": data.task.to_dict(), "imbalance": balance.report, "device": str(rt.device),
            "world_size": rt.world, "amp": str(rt.amp_dtype) if rt.amp_dtype else None,
            "loader": f"stream ({data.loader_workers} workers)" if data.streamed else "memory",
            "people": data.groups})
        write_json(run_dir / "labels.json", list(data.task.labels))
        write_split(run_dir, data)
    config = replace(config, epochs=epochs)  # the loop runs the resolved budget
    loop = Loop(config, rt, data, model, wrap_ddp(model, rt), data.task.loss(weight), balance, batch_size, run_dir,
                State(**ckpt["state"]) if ckpt is not None else State(), ckpt)
    run_epochs(loop)
    check_ranks_agree(model, rt, run_dir)
    if rt.main:
        write_bundle(config, data, rt.spec, loop.state, run_dir)
    barrier(rt)
    return run_dir
