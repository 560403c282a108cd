"""The jinja2 templates of facelab's reports, and the one place that renders them.

Every HTML page (evaluate's report.html, inspect's and prepare's reports, compare.html,
explain.html, serve's /docs) and the Markdown model card come from the files in this
folder, rendered with autoescape on: a label, path or reason that contains ``<`` or ``&``
is shown, never interpreted, and the layout can be read apart from the code that computes
the numbers. Pictures are embedded
as data URIs (:func:`data_uri`), so a report opens offline and travels as one file.
"""
from __future__ import annotations

import base64
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from facelab._io import write_text

HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def environment() -> Any:
    """The jinja2 environment (built once): this folder, autoescape, strict undefined names."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE)), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, cell=cell, data_uri=data_uri)
    return env


def render(template: str, /, **context: Any) -> str:
    """``template`` (a file of this folder) rendered with ``context``."""
    return str(environment().get_template(template).render(**context))


def write(path: str | Path, template: str, /, **context: Any) -> Path:
    """:func:`render` written atomically to ``path``."""
    return write_text(path, render(template, **context))


# --------------------------------------------------------------------------- filters

def fmt(x: Any) -> str:
    """A metric with three decimals; ``n/a`` for a missing or undefined (NaN) one."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def cell(v: Any, floatfmt: str = "{:.3f}") -> Any:
    """A table cell: floats with ``floatfmt`` (empty when NaN), anything else as it is."""
    import numpy as np

    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else floatfmt.format(v)
    return v


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
