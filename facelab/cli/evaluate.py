"""CLI commands of the evaluate stage (see facelab/evaluate.py)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`. (Not built yet.)"""
