"""``facelab serve``: a FastAPI app with dynamic micro-batching and a web page (see app.py)."""
from __future__ import annotations

from facelab.serve.app import ServeConfig, create_app, serve

__all__ = ["ServeConfig", "create_app", "serve"]
