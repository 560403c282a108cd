"""Shared fixtures: the real face sets in ../shared/data, and a scratch folder.

Tests use real photos. The data sets are required: a missing ../shared/data is a
failure, not a skip (CI always has it beside the checkout).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACELAB_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
ARTIFACTS = REPO / "test-artifacts"

# Keep torch from oversubscribing the 2 CI cores when several things run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.fail(f"real test data {path} is missing: tests need ../shared/data beside the checkout "
                    f"(or FACELAB_SHARED_DATA pointing at it)")
    return path


@pytest.fixture(scope="session")
def celeba_mini() -> Path:
    """900 aligned CelebA photos, official layout, 30 people, 660/120/120 partition."""
    return _dataset("celeba-mini")


@pytest.fixture(scope="session")
def celeba_wild() -> Path:
    """40 uncropped CelebA photos (img_celeba/) with their official aligned crops."""
    return _dataset("celeba-wild-mini")


@pytest.fixture(scope="session")
def orl_faces() -> Path:
    """ORL: 40 people x 10 greyscale 92x112 PGM photos, folder per person."""
    return _dataset("orl-faces")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave things a person may want to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# Face-preparation cache shared by the whole test session (re-runs are fast); tests that
# exercise the cache itself pass their own cache folder.
os.environ.setdefault("FACELAB_CACHE", str(REPO / ".cache" / "test-cache"))

# Small trained runs shared by several test files (owned by the training stage).
from _fixtures_runs import *  # noqa: E402,F401,F403
