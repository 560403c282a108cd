"""CLI commands of the people stage (see facelab/people.py)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`. (Not built yet.)"""
