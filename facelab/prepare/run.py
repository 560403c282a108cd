"""Whole sources: :func:`prepare` (a source into an output folder with the same layout and
labels, a manifest and a report), :func:`prepare_table` (a table into cached crops, used by
training on raw photos) and :func:`prepare_shard` (one slice into the cache only)."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from facelab._io import DiskFullError
from facelab.data import SampleTable, load_source
from facelab.detect import cached_detector
from facelab.errors import ConfigError, DataError
from facelab.folders import (INCOMPLETE_MARKER, clear_incomplete, mark_incomplete, read_prepared_manifest,
                             write_prepared_manifest)
from facelab.prepare.cache import CropCache, FileResult
from facelab.prepare.config import PrepareConfig, as_config
from facelab.prepare.outputs import primary_names, write_outputs
from facelab.prepare.report import REPORT_DIR, PrepareReport, write_csv, write_grid, write_html
from facelab.prepare.workers import run_files

log = logging.getLogger(__name__)


def prepare_table(table: SampleTable, config: PrepareConfig | dict | None = None,
                  cache_dir: Path | str | None = None, workers: int = 2, progress: bool = True) -> SampleTable:
    """The same table with each path replaced by its cached aligned crop.

    Rows without a usable face are dropped and logged. A table read from a folder written
    by ``facelab prepare`` (``table.prepared`` set) is returned unchanged.
    """
    if table.prepared is not None:
        log.info("%s is already prepared (facelab_prepared.json); using its crops as they are", table.root)
        return table
    config = as_config(config)
    try:
        results = run_files(table.paths, config, cache_dir, workers, progress)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, None, CropCache(cache_dir, config).root) from None
    keep = [i for i, r in enumerate(results) if r.crops]
    dropped = [r for r in results if not r.crops]
    _log_rejects(dropped)
    if dropped:
        counts = Counter(r.status for r in dropped)
        log.warning("prepare_table: dropped %d of %d photos without a usable face (%s)", len(dropped),
                    len(results), ", ".join(f"{k}: {v}" for k, v in counts.items()))
    out = table.subset(keep)
    out.sources = [Path(table.source_of(i)) for i in keep]
    out.paths = [Path(results[i].crops[0]) for i in keep]
    out.prepared = {"config": config.to_dict(), "source": str(table.root), "cache": True}
    return out


def prepare(src: str | Path, out: str | Path, config: PrepareConfig | dict | None = None,
            workers: int = 2, cache_dir: str | Path | None = None, progress: bool = True,
            report_html: bool = True, grid_size: int = 24, processes: bool | None = None) -> PrepareReport:
    """Detect, align and crop every photo of ``src`` into ``out``, keeping layout and labels.

    ``src`` is anything :func:`facelab.data.load_source` reads. The output is loadable the
    same way (a CelebA source stays CelebA with its txt files, a folder tree stays a folder
    tree, a CSV gets a new ``labels.csv``), plus ``facelab_prepared.json`` and a report in
    ``out/.facelab_report/`` (CSV with a reason per file, a grid of originals next to crops,
    and an HTML page).
    """
    config = as_config(config)
    out = Path(out).expanduser().resolve()
    table = load_source(src)
    if out == table.root or (table.root.is_dir() and out.is_relative_to(table.root) and table.source != "csv"):
        raise ConfigError(f"{out}: the output folder must not be inside the source {table.root}")
    _warn_if_reconfigured(out, config)
    cached_detector(config.detector, config.detector_options)  # a bad option value stops before any output
    cache_root = CropCache(cache_dir, config).root
    try:
        mark_incomplete(out, "facelab prepare")
        report = _prepare_into(table, out, config, workers, cache_dir, progress, report_html, grid_size, processes)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, out, cache_root) from None
    clear_incomplete(out)
    log.info("prepare %s -> %s: %s", table.root, out, report.summary())
    return report


@dataclass
class ShardReport:
    """What one ``prepare --shard K/N`` process did: its slice, now in the crop cache."""

    shard: int
    shards: int
    photos: int
    counts: dict[str, int]
    seconds: float
    cache: Path

    def summary(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (f"shard {self.shard}/{self.shards}: {self.photos} photo(s) in {self.seconds:.1f} s ({done}); "
                f"crops in {self.cache}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N, or a ConfigError that shows the form."""
    k, sep, n = text.partition("/")
    try:
        shard, shards = int(k), int(n)
    except ValueError:
        shard = shards = -1
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise ConfigError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2 and 1/2")
    return shard, shards


def prepare_shard(src: str | Path, shard: int, shards: int, config: PrepareConfig | dict | None = None,
                  workers: int = 1, cache_dir: str | Path | None = None, progress: bool = True,
                  processes: bool | None = None) -> ShardReport:
    """Prepare slice ``shard`` of ``shards`` of ``src`` into the crop cache only.

    Photo i (in :func:`~facelab.data.load_source` order) belongs to slice ``i % shards``, so
    N processes (or machines sharing ``cache_dir``, or whose cache folders are copied
    together afterwards: every worker writes its own records file) split the work without
    talking to each other. The merge is a plain :func:`prepare` into the output folder:
    every photo then comes from the cache, and the output is the one a single process
    writes (the crops are content-addressed and deterministic).
    """
    config = as_config(config)
    table = load_source(src)
    t0 = time.perf_counter()
    mine = table.paths[shard::shards]
    cache_root = CropCache(cache_dir, config).root
    try:
        results = run_files(mine, config, cache_dir, workers, progress, desc=f"prepare {shard}/{shards}",
                            processes=processes)
    except DiskFullError as exc:
        raise _disk_full_advice(exc, None, cache_root) from None
    return ShardReport(shard, shards, len(mine), _counts(results), time.perf_counter() - t0, cache_root)


def _counts(results: list[FileResult]) -> dict[str, int]:
    """Photos per outcome, and how many came from the cache."""
    counts = dict(Counter(r.status for r in results))
    counts["cached"] = sum(r.cached for r in results)
    return counts


def _prepare_into(table: SampleTable, out: Path, config: PrepareConfig, workers: int, cache_dir: str | Path | None,
                  progress: bool, report_html: bool, grid_size: int, processes: bool | None) -> PrepareReport:
    t0 = time.perf_counter()
    names = primary_names(table, config.format)
    results = run_files(table.paths, config, cache_dir, workers, progress, processes=processes,
                        out_names=[str(out / n) for n in names])
    outputs = write_outputs(table, results, out, names)
    seconds = time.perf_counter() - t0
    counts = _counts(results)
    counts["kept_from_several"] = sum(r.status == "kept" and r.n_faces > 1 for r in results)
    _log_rejects(results)
    csv_path = write_csv(out / REPORT_DIR / "report.csv", results, outputs)
    grid_path = write_grid(out / REPORT_DIR / "grid.png", results, grid_size)
    report = PrepareReport(out, counts, results, csv_path, grid_path, None, seconds)
    if report_html:
        report.html_path = write_html(out / REPORT_DIR / "report.html", report, config, table)
    write_prepared_manifest(out, config.to_dict(), table.root, table.source, counts, len(results),
                            sum(len(o) for o in outputs),
                            {"csv": str(csv_path.relative_to(out)),
                             "grid": str(grid_path.relative_to(out)) if grid_path else None,
                             "html": str(report.html_path.relative_to(out)) if report.html_path else None})
    return report


def _disk_full_advice(exc: DiskFullError, out: Path | None, cache_root: Path) -> DiskFullError:
    """The disk-full error told about the folder the user chose (the output or the cache)."""
    again = "then run the same command again: photos already done come from the cache"
    if exc.path.is_relative_to(cache_root):
        return exc.within(cache_root, f"the crop cache is there; free some space or set --cache-dir "
                                      f"(or FACELAB_CACHE) to a disk with room, {again}")
    if out is None:
        return exc
    return exc.within(out, f"{out} is marked incomplete ({INCOMPLETE_MARKER}); free some space or "
                           f"choose an output folder on another disk, {again.replace('command', 'prepare')}")


def _warn_if_reconfigured(out: Path, config: PrepareConfig) -> None:
    """Re-using an output folder with another config leaves crops the new run does not write."""
    try:
        previous = (read_prepared_manifest(out) or {}).get("config")
    except DataError:  # a damaged manifest is rewritten by this run
        return
    if previous is not None and previous != config.to_dict():
        log.warning("%s was prepared with a different config; crops the new run does not "
                    "rewrite (other policies, rejected photos) stay there. Use a new folder for a "
                    "clean result.", out)


def _log_rejects(results: list[FileResult], limit: int = 20) -> None:
    rejects = [r for r in results if r.status != "kept"]
    for r in rejects[:limit]:
        log.warning("%s: skipped (%s: %s)", r.path, r.status, r.reason)
    if len(rejects) > limit:
        log.warning("... and %d more skipped photos; every reason is in the report CSV", len(rejects) - limit)


