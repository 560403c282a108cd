"""A collect run: download the todo list in a bounded pool, settle results in list order
(dedupe, save), and keep the manifest current."""
from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from facelab._io import DiskFullError, write_bytes
from facelab._phash import Fingerprint, find_same, fingerprint
from facelab._progress import progress as progress_bar
from facelab.collect.config import MANIFEST, SETTLED, CollectConfig, CollectReport, Entry
from facelab.collect.download import Fetched, client_for, fetch
from facelab.collect.lists import read_manifest, read_url_list, write_manifest
from facelab.folders import clear_incomplete, mark_incomplete
from facelab.images import ImageError, read_image

log = logging.getLogger(__name__)

class _Saver:
    """Saves checked downloads, refusing exact and near-identical copies of saved photos."""

    def __init__(self, out: Path, config: CollectConfig) -> None:
        self.out, self.config = out, config
        self.by_sha: dict[str, str] = {}
        self.fps: list[Fingerprint] = []
        self.files: list[str] = []

    def remember(self, entry: Entry) -> None:
        """Register a photo saved by an earlier run (its fingerprint is recomputed)."""
        path = self.out / entry.file
        try:
            fp = fingerprint(read_image(path))
        except ImageError as exc:
            log.warning("%s: saved earlier but no longer readable (%s); it will be downloaded again",
                        path, exc.reason)
            entry.status, entry.reason = "failed", "saved file missing or unreadable"
            return
        self.by_sha[entry.sha256] = entry.file
        self.fps.append(fp)
        self.files.append(entry.file)

    def save(self, entry: Entry, got: Fetched) -> None:
        entry.sha256 = got.sha256
        if self.config.dedupe and got.sha256 in self.by_sha:
            entry.status, entry.reason = "duplicate", f"same bytes as {self.by_sha[got.sha256]}"
            return
        if self.config.dedupe and got.fp is not None and self.fps:
            twin = self._near(got.fp)
            if twin is not None:
                entry.status, entry.reason = "near-duplicate", f"same picture as {twin}"
                return
        rel = Path(entry.label or ".") / f"{got.sha256[:16]}{got.ext}"
        write_bytes(self.out / rel, got.data)
        entry.file, entry.status, entry.reason = rel.as_posix(), "ok", ""
        self.by_sha[got.sha256] = entry.file
        if got.fp is not None:
            self.fps.append(got.fp)
            self.files.append(entry.file)

    def _near(self, fp: Fingerprint) -> str | None:
        i = find_same(fp, self.fps, self.config.hash_threshold, self.config.diff_threshold)
        return None if i is None else self.files[i]


def collect(urls_file: str | Path, out: str | Path, config: CollectConfig | None = None,
            progress: bool = True, **overrides) -> CollectReport:
    """Download the photos listed in ``urls_file`` into ``out`` (a folder per label).

    Args:
        urls_file: text (``URL [LABEL]`` per line) or CSV (``url[,label]``) file.
        out: destination folder; ``out/manifest.csv`` records every URL's outcome.
        config: download settings; ``**overrides`` replace single fields of it.
        progress: show a progress bar.
    """
    config = config or CollectConfig()
    if overrides:
        config = CollectConfig(**{**asdict(config), **overrides})
    out = Path(out)
    entries = read_url_list(urls_file)
    try:
        report = _collect_into(entries, out, config, progress)
    except DiskFullError as exc:
        raise exc.within(out, f"{out} is marked incomplete; free some space and run the same collect "
                              "again: saved photos are kept and only the rest are downloaded") from None
    clear_incomplete(out)
    return report


def _collect_into(entries: list[Entry], out: Path, config: CollectConfig, progress: bool) -> CollectReport:
    out.mkdir(parents=True, exist_ok=True)
    mark_incomplete(out, "facelab collect")
    manifest = out / MANIFEST
    earlier = read_manifest(manifest)
    saver = _Saver(out, config)
    todo: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    skipped = 0
    for e in entries:
        key = (e.url, e.label)
        if key in seen:
            e.status, e.reason = "duplicate", f"line {e.line}: URL listed twice"
            continue
        seen.add(key)
        old = earlier.get(key)
        if old is not None and old.status in SETTLED and e.status != "invalid":
            e.file, e.status, e.reason, e.sha256 = old.file, old.status, old.reason, old.sha256
            if e.status == "ok":
                saver.remember(e)
            if e.status in SETTLED:
                skipped += 1
                continue
        if e.status != "invalid":
            todo.append(e)
    if skipped:
        log.info("%s: %d URL(s) already settled by an earlier run; skipped", manifest, skipped)
    try:
        _download_all(todo, saver, config, manifest, entries, progress)
    except DiskFullError:
        _save_manifest_if_possible(manifest, entries)
        raise
    write_manifest(manifest, entries)
    counts = dict(Counter(e.status for e in entries))
    log.info("collect: %s -> %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), out)
    return CollectReport(out=out, manifest=manifest, counts=counts, entries=entries, skipped=skipped)


def _save_manifest_if_possible(manifest: Path, entries: list[Entry]) -> None:
    """After a full disk: the manifest of what was saved, if there is room for it (a re-run
    then skips those URLs); if not, the photos on disk are downloaded again (same names)."""
    try:
        write_manifest(manifest, entries)
    except OSError as exc:
        log.warning("%s: could not be updated (%s)", manifest, exc)


def _download_all(todo: list[Entry], saver: _Saver, config: CollectConfig, manifest: Path,
                  entries: list[Entry], progress: bool) -> None:
    """Download with a pool; results are settled in list order, so which copy of a duplicate
    is kept does not depend on network timing. At most ``8 * workers`` downloads are in flight
    or waiting for their turn (bounded memory)."""
    bar = progress_bar(len(todo), "collect", unit="url", enabled=progress)
    last_save = time.monotonic()
    ready: dict[int, Fetched] = {}
    next_submit = next_settle = 0
    with client_for(config) as client, ThreadPoolExecutor(max_workers=config.workers) as pool:
        running: dict[Future, int] = {}
        while next_settle < len(todo):
            while next_submit < len(todo) and next_submit - next_settle < 8 * config.workers \
                    and len(running) < 2 * config.workers:
                running[pool.submit(fetch, todo[next_submit].url, config, client)] = next_submit
                next_submit += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                ready[running.pop(fut)] = fut.result()
            while next_settle in ready:
                _settle(todo[next_settle], ready.pop(next_settle), saver)
                next_settle += 1
                bar.update(1)
            if time.monotonic() - last_save > 5.0:  # keep progress if the run is killed
                write_manifest(manifest, entries)
                last_save = time.monotonic()
    bar.close()


def _settle(e: Entry, got: Fetched, saver: _Saver) -> None:
    if got.status:
        e.status, e.reason = got.status, got.reason
        log.info("%s: %s (%s)", e.url, e.status, e.reason)
    else:
        saver.save(e, got)


def summary_rows(report: CollectReport) -> list[tuple[str, int]]:
    """(status, count) rows in a fixed order for printing."""
    order = ["ok", "duplicate", "near-duplicate", "rejected", "failed", "invalid"]
    return [(s, report.counts.get(s, 0)) for s in order if report.counts.get(s, 0)]


def reasons(report: CollectReport) -> list[tuple[str, str, str]]:
    """(status, url, reason) for every URL that was not saved."""
    return [(e.status, e.url, e.reason) for e in report.entries if e.status != "ok"]
