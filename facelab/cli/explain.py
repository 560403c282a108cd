"""CLI commands of the explain stage (see facelab/explain.py)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`. (Not built yet.)"""
