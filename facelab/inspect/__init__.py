"""`facelab inspect`: what is wrong with a data set, before a model learns it.

Reads any source :func:`facelab.data.load_source` understands and writes ``report.html``
(self-contained: plots and thumbnails are embedded), ``report.json`` and the PNG plots to
an output folder. Checks, each producing :class:`Finding` s:

* ``unreadable``: files that do not decode;
* ``imbalance`` / ``rare-attribute`` / ``missing-class``: label counts per split;
* ``leakage-duplicate``: the same picture (exact bytes or near-identical) in two splits;
* ``leakage-identity``: the same person in two splits (when identities are known);
* ``duplicate`` / ``conflicting-labels``: repeated pictures inside a split, or with
  different labels;
* ``shortcut``: classes that differ strongly in brightness, contrast, colour, size or
  format (a model would learn the lighting or the camera instead of the face);
* ``no-face`` / ``several-faces`` (``faces=True``): face detection outcome per class,
  through facelab.prepare's pipeline and cache;
* ``label-error`` (``embed=True`` or ``run=``): photos whose face embedding (nearest
  neighbours and class centroids) or whose trained model's prediction contradicts the label.

Modules: :mod:`.config`, :mod:`.scan` (reading), :mod:`.checks`, :mod:`.duplicates`,
:mod:`.optional` (faces, label errors), :mod:`.report` (pictures, report.html), :mod:`.core`
(:func:`inspect`).
"""
from __future__ import annotations

from facelab.inspect.checks import check_counts, check_identity_leakage, check_shortcuts, check_unreadable
from facelab.inspect.config import PROPERTIES, SEVERITIES, Finding, ImageStats, InspectConfig, InspectReport
from facelab.inspect.core import inspect
from facelab.inspect.duplicates import FLAT_CONTRAST, check_duplicates, duplicate_groups
from facelab.inspect.optional import check_faces, check_label_errors_embedding, check_label_errors_run
from facelab.inspect.scan import scan

__all__ = ["FLAT_CONTRAST", "PROPERTIES", "SEVERITIES", "Finding", "ImageStats", "InspectConfig", "InspectReport",
           "check_counts", "check_duplicates", "check_faces", "check_identity_leakage", "check_label_errors_embedding",
           "check_label_errors_run", "check_shortcuts", "check_unreadable", "duplicate_groups", "inspect", "scan"]
