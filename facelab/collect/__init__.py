"""`facelab collect`: download a list of photo URLs into a folder-per-label data set.

* Input: a text file (``URL`` or ``URL LABEL`` per line, ``#`` comments) or a CSV
  (a ``url`` column and an optional ``label`` column, or ``URL,LABEL`` rows without header).
* A bounded pool of worker threads downloads (httpx, one client per run, redirects followed
  to http(s) addresses only: ``download``); each request has a timeout, transient
  failures (timeouts, connection errors, HTTP 429/5xx) are retried with exponential
  backoff; a body larger than ``max_bytes`` is abandoned.
* Every download must decode as an image within the pixel limits
  (:func:`facelab.images.decode_image`); web pages, truncated files and bombs are rejected.
* Exact duplicates (same sha256) and near-identical pictures (perceptual hash confirmed on
  a thumbnail, :mod:`facelab._phash`) are not saved twice.
* ``OUT/manifest.csv`` (url, label, file, status, reason, sha256) is rewritten atomically
  as the run goes, so a re-run skips everything already settled and retries only what
  failed for a transient reason (``lists``; the run itself: ``run``).
"""
from __future__ import annotations

from facelab.collect.config import MANIFEST, MANIFEST_COLUMNS, SETTLED, CollectConfig, CollectReport, Entry
from facelab.collect.download import MAX_REDIRECTS, Fetched, client_for, fetch
from facelab.collect.lists import read_manifest, read_url_list, write_manifest
from facelab.collect.run import collect, reasons, summary_rows

__all__ = ["MANIFEST", "MANIFEST_COLUMNS", "MAX_REDIRECTS", "SETTLED", "CollectConfig", "CollectReport", "Entry",
           "Fetched", "client_for", "collect", "fetch", "read_manifest", "read_url_list", "reasons", "summary_rows",
           "write_manifest"]
