"""Session-scoped tiny trained runs that evaluate/explain/predict/serve tests share."""
from __future__ import annotations
