"""The command line: `facelab <cmd> -h` against snapshots, and the options derived from the
config dataclasses (facelab/cli/_config.py) reach every field with the field's docstring.

Regenerate the snapshots after a deliberate change of an option or its help:
    FACELAB_UPDATE_SNAPSHOTS=1 pytest tests/test_cli_help.py
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from facelab.cli import app
from facelab.cli._config import field_docs, help_text, parse_pairs
from facelab.cli._lazy import LAZY, load_command
from facelab.errors import ConfigError

SNAPSHOTS = Path(__file__).parent / "snapshots" / "cli_help"
ENV = {"COLUMNS": "100", "TERMINAL_WIDTH": "100", "NO_COLOR": "1", "FACELAB_API_KEY": None}
COMMANDS = list(typer.main.get_command(app).list_commands(None))  # type: ignore[attr-defined, arg-type]


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "-h"], env=ENV)
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_matches_snapshot(command: str) -> None:
    text = _help(*([command] if command else []))
    path = SNAPSHOTS / f"{command or 'facelab'}.txt"
    if os.environ.get("FACELAB_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run with FACELAB_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"`facelab {command} -h` changed: FACELAB_UPDATE_SNAPSHOTS=1 if meant"


def _options(command: str) -> dict[str, Any]:
    return {p.name: p for p in load_command(command).params}


def test_every_train_config_field_has_a_flag_with_its_docstring() -> None:
    from facelab.cli.train_commands import FACE_EMBED_FIELDS, TRAIN_EXCLUDED
    from facelab.people import FaceEmbedConfig
    from facelab.train import TrainConfig

    params = _options("train")
    for cls, names in ((TrainConfig, [f.name for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_EXCLUDED]),
                       (FaceEmbedConfig, FACE_EMBED_FIELDS)):
        docs = field_docs(cls)
        for name in names:
            assert name in params, f"{cls.__name__}.{name} has no flag on `facelab train`"
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
            assert params[name].help == help_text(docs[name]), name
    # the FaceEmbedConfig fields without a face-embed flag are TrainConfig's own
    rest = {f.name for f in dataclasses.fields(FaceEmbedConfig)} - set(FACE_EMBED_FIELDS)
    assert rest <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_every_serve_setting_has_a_flag_with_its_docstring() -> None:
    """`facelab serve`'s options are ServeConfig's (pydantic-settings, its docstrings are the
    fields' descriptions) and ServerOptions' fields; the flags it always had still exist."""
    from facelab.cli._config import config_fields
    from facelab.cli.serve_command import SERVE_EXCLUDED
    from facelab.serve.settings import ServeConfig, ServerOptions

    params = _options("serve")
    for cls, excluded in ((ServeConfig, SERVE_EXCLUDED), (ServerOptions, ())):
        for name, (_, _, doc) in config_fields(cls).items():
            if name in excluded:
                continue
            assert name in params, f"{cls.__name__}.{name} has no flag on `facelab serve`"
            assert doc and params[name].help == help_text(doc), name
    names = {opt for p in params.values() for opt in (*p.opts, *p.secondary_opts)}
    for flag in ("--host", "--port", "--backend", "--api-key", "--max-upload-mb", "--max-megapixels", "--timeout",
                 "--cors-origin", "--max-batch", "--max-wait-ms", "--threads", "--model-threads", "--all-faces",
                 "--max-connections", "--max-idle-connections", "--header-timeout", "--body-timeout", "--keep-alive",
                 "--max-header-kb", "--max-form-parts", "--max-part-header-bytes", "--omp-threads", "--workers",
                 "--log-level", "--access-log"):
        assert flag in names, flag


def test_existing_flags_keep_their_names() -> None:
    names = {opt for p in load_command("train").params for opt in (*p.opts, *p.secondary_opts)}
    for flag in ("--model", "-m", "--name", "--out", "--task", "--attrs", "--epochs", "--freeze-epochs", "--batch-size",
                 "--lr", "--size", "--schedule", "--augment", "--augment-option", "-A", "--imbalance",
                 "--valid-fraction", "--group-people", "--no-group-people", "--seed", "--patience", "--monitor",
                 "--pretrained", "--no-pretrained", "--weights", "--download-weights", "--device", "--threads", "--amp",
                 "--no-amp", "--max-batches", "--ensemble", "--model-option", "-M", "--detector", "--prepare-option",
                 "-P", "--cache-dir", "--loader", "--memory-budget-mb", "--loader-workers", "--shard-rows", "--resume",
                 "--overwrite", "--tensorboard", "--no-tensorboard"):
        assert flag in names, flag


def test_lazy_commands_are_listed_with_their_docstring_and_without_torch() -> None:
    for name in LAZY:
        assert typer.main.get_command(app).commands[name].help == load_command(name).help.splitlines()[0]  # type: ignore[attr-defined]
    code = "import sys, facelab.cli; assert 'torch' not in sys.modules, 'facelab.cli imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_train_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import facelab.cli.train_commands as commands

    seen: list[Any] = []
    monkeypatch.setattr(commands, "train", lambda config: seen.append(config) or "runs/x")
    res = CliRunner().invoke(app, ["train", "faces", "-m", "lenet5", "--size", "48", "--attrs", "Smiling, Young",
                                   "-A", "max_rotate=20", "-A", "flip=false", "-M", "filters=[12,32]",
                                   "-P", "size=96", "--detector", "haar", "--no-tensorboard", "--weight-decay", "0"])
    assert res.exit_code == 0, (res.output, res.exception)
    c = seen[0]
    assert (c.data, c.model, c.image_size, c.attrs, c.tensorboard, c.weight_decay) == \
        ("faces", "lenet5", 48, ["Smiling", "Young"], False, 0.0)
    assert c.augment_options == {"max_rotate": 20.0, "flip": False}
    assert c.model_kwargs == {"filters": [12, 32]} and c.prepare == {"size": 96, "detector": "haar"}
    res = CliRunner().invoke(app, ["train", "people", "-m", "face-embed", "--head", "knn", "--knn-k", "5",
                                   "-M", "target_far=0.05"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert seen[1].model_kwargs == {"head": "knn", "knn_k": 5, "target_far": 0.05}
    res = CliRunner().invoke(app, ["train", "faces", "-m", "lenet5", "--head", "knn"])
    assert isinstance(res.exception, ConfigError) and "--model face-embed" in str(res.exception)


def test_key_value_options_are_typed_by_the_target() -> None:
    from facelab.augment import AugmentConfig

    assert parse_pairs(["max_rotate=5", "flip=no"], AugmentConfig, flag="-A") == {"max_rotate": 5.0, "flip": False}
    with pytest.raises(ConfigError, match=r"unknown option 'max_rotat' \(did you mean max_rotate\?\); valid options: flip"):
        parse_pairs(["max_rotat=5"], AugmentConfig, flag="-A")
    with pytest.raises(ConfigError, match="max_zoom: expected a number, got 'big'"):
        parse_pairs(["max_zoom=big"], AugmentConfig, flag="-A")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_pairs(["max_zoom"], AugmentConfig, flag="-A")

    def builder(num_outputs: int, filters: tuple[int, ...] = (6, 16), pool: str = "max") -> None: ...

    assert parse_pairs(["filters=12,32", "pool=avg"], builder, flag="-M", skip=("num_outputs",)) == \
        {"filters": [12, 32], "pool": "avg"}
    assert parse_pairs(["drop_rate=0.2", "name=x"], None, flag="-M") == {"drop_rate": 0.2, "name": "x"}
