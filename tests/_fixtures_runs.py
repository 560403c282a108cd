"""Session-scoped tiny trained runs that evaluate/explain/predict/serve tests share.

Each trains a small from-scratch CNN (lenet5, 32x32 inputs) for one or two epochs on real
photos; they learn little, but they are real runs written by ``facelab.train`` with
every file of the run-folder contract (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest

CELEBA_ATTRS = ["Smiling", "Male", "Eyeglasses", "Young"]
TINY = dict(model="lenet5", image_size=32, batch_size=32, progress=False, tensorboard=False)


def _train(data: Path, out: Path, name: str, **options: object) -> Path:
    from facelab.train import train

    return train(data, out=str(out), name=name, **{**TINY, **options})


@pytest.fixture(scope="session")
def celeba_run(celeba_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-label run: 4 CelebA attributes (Smiling, Male, Eyeglasses, Young), 2 epochs."""
    return _train(celeba_mini, tmp_path_factory.mktemp("runs"), "celeba", attrs=CELEBA_ATTRS, epochs=2)


@pytest.fixture(scope="session")
def binary_run(celeba_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Binary run: CelebA Smiling vs not, 2 epochs."""
    return _train(celeba_mini, tmp_path_factory.mktemp("runs"), "smiling", attrs=["Smiling"], epochs=2)


@pytest.fixture(scope="session")
def orl_run(orl_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-class run: the 40 ORL people (folder per person), 2 epochs."""
    return _train(orl_faces, tmp_path_factory.mktemp("runs"), "orl", epochs=2, lr=5e-3)
