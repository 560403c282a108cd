"""Optional heavy dependencies, imported on first use with an install hint on failure."""
from __future__ import annotations

import importlib
from types import ModuleType

from facelab.errors import MissingDependency


def require(module: str, pip_name: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise ImportError that says exactly what to install.

    >>> cv2 = require("cv2", "opencv-python-headless<5", "the Haar face detector")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependency(
            f"facelab could not import {module!r}{why}. Install it with "
            f"`pip install '{pip_name or module}'`, or run `make setup` in the facelab "
            f"checkout, which installs every dependency. Original error: {exc}"
        ) from exc
