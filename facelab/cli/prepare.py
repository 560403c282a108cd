"""CLI commands of the prepare stage (see facelab/prepare.py)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`. (Not built yet.)"""
