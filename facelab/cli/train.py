"""CLI commands of the train stage (see facelab/train.py)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`. (Not built yet.)"""
