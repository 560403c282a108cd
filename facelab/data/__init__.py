"""Data sources: every way users keep face photos, read into one uniform sample table.

Three layouts are understood, and :func:`load_source` tells them apart:

* a folder per class (``people/alice/*.jpg``, nested folders allowed below the class
  folder; an optional split level above it: ``train/alice``, ``valid/alice``, ``test/alice``);
* the official CelebA layout (``img_align_celeba/`` or ``img_celeba/``,
  ``list_attr_celeba.txt``, optional ``identity_CelebA.txt`` and ``list_eval_partition.txt``);
* a CSV file with a path column and one or more label columns.

A folder written by ``facelab prepare`` keeps its source's layout, so it loads through the
same code; its ``facelab_prepared.json`` is returned as :attr:`SampleTable.prepared`.

Modules: ``table`` (:class:`SampleTable`), one per layout (``folder``, ``celeba``, ``csvfile``:
each reader with the writer of the same files for a prepared copy) and ``source``
(:func:`load_source`).
"""
from __future__ import annotations

from facelab.data.celeba import (CELEBA_ATTR_FILE, CELEBA_IDENTITY_FILE, CELEBA_IMAGE_DIRS, CELEBA_PARTITION_FILE,
                                 CELEBA_PARTITIONS, find_celeba_root, load_celeba, write_celeba_labels)
from facelab.data.csvfile import load_csv, write_csv_labels
from facelab.data.folder import IMAGE_EXTENSIONS, is_image_file, list_images, load_folder
from facelab.data.source import load_source
from facelab.data.table import LABEL_KINDS, SPLIT_ALIASES, SPLITS, SampleTable
from facelab.errors import DataError
from facelab.folders import INCOMPLETE_MARKER, PREPARED_MANIFEST, check_complete, clear_incomplete, mark_incomplete

__all__ = ["CELEBA_ATTR_FILE", "CELEBA_IDENTITY_FILE", "CELEBA_IMAGE_DIRS", "CELEBA_PARTITION_FILE", "CELEBA_PARTITIONS",
           "IMAGE_EXTENSIONS", "INCOMPLETE_MARKER", "LABEL_KINDS", "PREPARED_MANIFEST", "SPLITS", "SPLIT_ALIASES",
           "DataError", "SampleTable", "check_complete", "clear_incomplete", "find_celeba_root", "is_image_file",
           "list_images", "load_celeba", "load_csv", "load_folder", "load_source", "mark_incomplete",
           "write_celeba_labels", "write_csv_labels"]
