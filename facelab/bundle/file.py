"""``bundle.json``: the contract every stage after training reads, as one typed object.

``runs/NAME/bundle/`` holds ``bundle.json`` and the weights. :meth:`Bundle.read` is the one
way to find and read it (a run folder, its ``bundle/`` folder, or an export folder), checks
its format, and gives typed fields: the model reference, the :class:`~facelab.tasks.Task`,
the :class:`~facelab.bundle.spec.InputSpec` and the face preparation. Entries this version
does not know (``open_set`` of identity runs, ``train`` summaries) are kept as written.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from facelab._io import read_json, save_torch, write_json
from facelab.bundle.spec import InputSpec
from facelab.errors import BundleError, NotFound
from facelab.tasks import Task

__all__ = ["Bundle", "ModelRef", "FORMAT", "BUNDLE_DIR", "BUNDLE_FILE", "WEIGHTS_FILE", "bundle_dir_of"]

FORMAT = 1
BUNDLE_DIR = "bundle"
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
_KNOWN = ("format", "model", "task", "input", "prepare", "train")


@dataclass(frozen=True)
class ModelRef:
    """Which network, and how to load it."""

    backend: str = "torch"
    """The predictor class that runs it (a key of ``facelab.bundle.BACKENDS``)."""
    name: str = ""
    """Registry name of the architecture (``facelab models``); empty for exports."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Options the architecture was built with (``--model-option``)."""
    weights: str = WEIGHTS_FILE
    """Weights file inside the bundle folder."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific entries kept as written (an export's ``file``, ``source``, ...)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRef":
        known = ("backend", "name", "kwargs", "weights")
        return cls(str(d.get("backend", "torch")), str(d.get("name", "")), dict(d.get("kwargs") or {}),
                   str(d.get("weights", WEIGHTS_FILE)), {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend}
        if self.name or self.backend == "torch":
            out.update(name=self.name, kwargs=dict(self.kwargs), weights=self.weights)
        return {**out, **copy.deepcopy(self.extra)}


@dataclass(frozen=True)
class Bundle:
    """A trained model's description: everything needed to predict without training code."""

    model: ModelRef
    """The network and its backend."""
    task: Task
    """Labels, kind (binary / multiclass / multilabel) and decision thresholds."""
    input: InputSpec
    """Crop size and normalisation: the model's one preprocessing."""
    prepare: dict[str, Any] | None = None
    """Face preparation (``PrepareConfig.to_dict()``) applied to new photos; None when the
    model was trained on crops facelab did not make."""
    train: dict[str, Any] = field(default_factory=dict)
    """Training summary (best epoch, validation scores, split, ...)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other top-level entries kept as written (``open_set`` of identity runs, ...)."""
    format: int = FORMAT
    dir: Path | None = field(default=None, compare=False)
    """The folder it was read from (weights are relative to it)."""

    # ------------------------------------------------------------------ reading

    @classmethod
    def read(cls, run_or_dir: str | Path) -> "Bundle":
        """A run folder (``runs/NAME``), its ``bundle/`` folder or an export folder -> its bundle."""
        bdir = bundle_dir_of(run_or_dir)
        data = read_json(bdir / BUNDLE_FILE)
        return cls.from_dict(data, bdir, where=str(bdir / BUNDLE_FILE))

    @classmethod
    def from_dict(cls, data: Any, dir: Path | None = None, where: str = "bundle") -> "Bundle":
        if not isinstance(data, dict) or "model" not in data or "task" not in data:
            raise BundleError(f"{where}: not a facelab bundle (no 'model'/'task' entries)")
        fmt = int(data.get("format", FORMAT))
        if fmt > FORMAT:
            raise BundleError(f"{where}: bundle format {fmt} is newer than this facelab understands "
                              f"({FORMAT}); upgrade facelab")
        try:
            return cls(ModelRef.from_dict(data["model"]), Task.from_dict(data["task"]),
                       InputSpec.from_dict(data["input"]), data.get("prepare"), dict(data.get("train") or {}),
                       {k: copy.deepcopy(v) for k, v in data.items() if k not in _KNOWN}, fmt, dir)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed bundle ({type(exc).__name__}: {exc}); train or export "
                              f"the run again") from exc

    # ------------------------------------------------------------------ writing

    def to_dict(self) -> dict[str, Any]:
        """The ``bundle.json`` content (docs/ARCHITECTURE.md)."""
        return {"format": self.format, "model": self.model.to_dict(), "task": self.task.to_dict(),
                "input": self.input.to_dict(), "prepare": copy.deepcopy(self.prepare),
                "train": copy.deepcopy(self.train), **copy.deepcopy(self.extra)}

    def write(self, bundle_dir: str | Path | None = None, state_dict: dict | None = None) -> Path:
        """Write ``weights.pt`` (when given) then ``bundle.json``, each atomically; the json is
        written last so a bundle.json always points at complete weights."""
        bdir = Path(bundle_dir) if bundle_dir is not None else self.dir
        if bdir is None:
            raise ValueError("Bundle.write: no folder given and the bundle was not read from one")
        if state_dict is not None:
            save_torch(bdir / self.model.weights, state_dict)
        write_json(bdir / BUNDLE_FILE, self.to_dict())
        return bdir

    # ------------------------------------------------------------------ derived bundles

    def with_thresholds(self, thresholds: Sequence[float]) -> "Bundle":
        """The same model deciding at new thresholds (one per output)."""
        return replace(self, task=self.task.with_thresholds([float(t) for t in thresholds]))

    @property
    def weights_path(self) -> Path:
        if self.dir is None:
            raise ValueError("the bundle was not read from a folder")
        return self.dir / self.model.weights


def bundle_dir_of(run_or_bundle: str | Path) -> Path:
    """``runs/NAME`` or ``runs/NAME/bundle`` -> the folder holding ``bundle.json``."""
    path = Path(run_or_bundle).expanduser()
    for cand in (path, path / BUNDLE_DIR):
        if (cand / BUNDLE_FILE).is_file():
            return cand
    raise NotFound(f"{path}: no {BUNDLE_FILE} in it or in {path / BUNDLE_DIR}; pass a run folder "
                   f"written by `facelab train` (runs/NAME) or its bundle/ folder")
