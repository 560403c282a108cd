"""What `pip install facelab` brings is enough for the default path (prepare with the
default detector, training with people grouping, face-embed)."""
from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from facelab.prepare import PrepareConfig

ROOT = Path(__file__).resolve().parents[1]
DETECTOR_MODULES = {"yuface": "yuface", "haar": "cv2", "hog": "dlib"}


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def _distribution_of(module: str) -> set[str]:
    """Distributions that install ``module`` (top_level.txt, else the files they record:
    dlib-bin names only its extension module at top level)."""
    found = set(md.packages_distributions().get(module, []))
    if not found:
        found = {d.metadata["Name"] for d in md.distributions()
                 if any(f.parts[0] == module for f in (d.files or []))}
    return {d.lower().replace("_", "-") for d in found}


def test_default_path_modules_are_declared_dependencies() -> None:
    needed = {DETECTOR_MODULES[PrepareConfig().detector], "dlib", "face_recognition_models", "cv2", "numpy"}
    declared = _declared()
    for module in sorted(needed):
        dists = _distribution_of(module)
        assert dists, f"{module} is not installed here"
        assert dists & declared, f"{module} comes from {dists}, which pyproject.toml does not list"


def test_numpy_floor_has_what_facelab_uses() -> None:
    import numpy as np

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if d.startswith("numpy")).split(">=")[1].split(",")[0].split()[0]
    assert int(floor.split(".")[0]) >= 2 and hasattr(np, "bitwise_count")  # facelab/_phash.py needs NumPy 2
