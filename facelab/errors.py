"""The errors facelab raises on purpose.

Every kind derives from :class:`FacelabError`; the CLI prints these as one line and exits 2
(see ``facelab/cli/_errors.py``). Anything else is a bug and keeps its traceback. Each kind
also derives from the built-in exception a caller would have caught before (``ValueError``,
``FileNotFoundError``, ``FileExistsError``, ``ImportError``), so ``except ValueError`` in user
code keeps working.
"""
from __future__ import annotations

__all__ = ["FacelabError", "ConfigError", "DataError", "NotFound", "RunExists", "MissingDependency",
           "BundleError"]


class FacelabError(Exception):
    """An expected failure caused by the user's input, files or environment. The message
    says what is wrong and what to do."""


class ConfigError(FacelabError, ValueError):
    """An option or setting has a bad name or value (the message lists the valid ones)."""


class DataError(FacelabError, ValueError):
    """A data source (folder, CSV, CelebA files, photo, prepared crops) is missing or
    malformed; the message names the file (and line)."""


class NotFound(FacelabError, FileNotFoundError):
    """A path the user named does not exist (run folder, photo, weights file, ...)."""


class RunExists(FacelabError, FileExistsError):
    """The output folder already holds a run; pass a new name or the overwrite flag."""


class MissingDependency(FacelabError, ImportError):
    """An optional package is needed; the message names the ``pip install`` command."""


class BundleError(FacelabError, ValueError):
    """A run's ``bundle.json`` is missing, malformed or from a newer facelab."""
