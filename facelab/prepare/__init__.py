"""Face preparation: photos -> detected, aligned, cropped faces (THE crop every stage uses).

* :class:`PrepareConfig` (``config``) says how (detector, template, size, margin, policies
  ...); it is stored in ``facelab_prepared.json`` and in every run bundle, so predict and
  serve crop new photos exactly like the training photos were cropped.
* :class:`FacePipeline` (``pipeline``) turns one RGB photo into :class:`PreparedFace` crops.
* ``cache`` and ``workers``: work is cached by content (``sha256(file bytes)`` + a hash of
  the config), so a re-run reads the cache (near-instant) and an interrupted run resumes
  where it stopped; :func:`run_files` runs many photos in threads or worker processes.
* :func:`prepare` (``run``) does a whole source (folder tree, CelebA, CSV) into an output
  folder with the same layout (``outputs``) and labels, a manifest and a report (``report``);
  :func:`prepare_table` does a :class:`~facelab.data.SampleTable` into cached crops (used by
  training on raw photos); :func:`prepare_shard` one slice of a source into the cache.
"""
from __future__ import annotations

from facelab.folders import PREPARED_MANIFEST
from facelab.prepare.cache import STATUSES, CropCache, FileResult, default_cache_dir, place_crop
from facelab.prepare.config import (BACKGROUND_MODES, CROP_FORMATS, LIGHT_MODES, MULTI_FACE_POLICIES, ONE_FACE_POLICIES,
                                    PIPELINE_VERSION, PrepareConfig, as_config)
from facelab.prepare.pipeline import REFINE_FACE, REFINE_WINDOW, FacePipeline, PreparedFace, main_face
from facelab.prepare.report import REPORT_COLUMNS, REPORT_DIR, PrepareReport
from facelab.prepare.run import ShardReport, parse_shard, prepare, prepare_shard, prepare_table
from facelab.prepare.workers import PROCESSES_FROM, WorkerError, run_files

__all__ = ["BACKGROUND_MODES", "CROP_FORMATS", "LIGHT_MODES", "MULTI_FACE_POLICIES", "ONE_FACE_POLICIES",
           "PIPELINE_VERSION", "PREPARED_MANIFEST", "PROCESSES_FROM", "REFINE_FACE", "REFINE_WINDOW", "REPORT_COLUMNS",
           "REPORT_DIR", "STATUSES", "CropCache", "FacePipeline", "FileResult", "PrepareConfig", "PrepareReport",
           "PreparedFace", "ShardReport", "WorkerError", "as_config", "default_cache_dir", "main_face", "parse_shard",
           "place_crop", "prepare", "prepare_shard", "prepare_table", "run_files"]
