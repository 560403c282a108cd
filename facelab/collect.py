"""`facelab collect`: download a list of photo URLs into a folder-per-label data set.

* Input: a text file (``URL`` or ``URL LABEL`` per line, ``#`` comments) or a CSV
  (a ``url`` column and an optional ``label`` column, or ``URL,LABEL`` rows without header).
* A bounded pool of worker threads downloads; each request has a timeout, transient
  failures (timeouts, connection errors, HTTP 429/5xx) are retried with exponential
  backoff; a body larger than ``max_bytes`` is abandoned.
* Every download must decode as an image within the pixel limits
  (:func:`facelab.images.decode_image`); web pages, truncated files and bombs are rejected.
* Exact duplicates (same sha256) and near-identical pictures (perceptual hash confirmed on
  a thumbnail, :mod:`facelab._phash`) are not saved twice.
* ``OUT/manifest.csv`` (url, label, file, status, reason, sha256) is rewritten atomically
  as the run goes, so a re-run skips everything already settled and retries only what
  failed for a transient reason.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from facelab._io import DiskFullError, atomic_path, write_bytes
from facelab._phash import DIFF_THRESHOLD, NEAR_THRESHOLD, Fingerprint, find_same, fingerprint
from facelab.data import DataError, clear_incomplete, mark_incomplete

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("url", "label", "file", "status", "reason", "sha256")
#: Statuses a re-run leaves alone; ``failed`` (network trouble) is tried again.
SETTLED = ("ok", "duplicate", "near-duplicate", "rejected", "invalid")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif", "PPM": ".ppm"}
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class CollectConfig:
    """How photos are downloaded and checked."""

    workers: int = 8
    """Parallel downloads (threads)."""
    timeout: float = 15.0
    """Seconds allowed per request: connecting, each read, and the whole body."""
    retries: int = 2
    """Extra attempts after a transient failure (timeout, connection error, HTTP 429/5xx)."""
    backoff: float = 0.5
    """Seconds before the first retry; doubled for each further retry."""
    max_bytes: int = 25_000_000
    """A response body larger than this is abandoned (rejected)."""
    max_pixels: int = 40_000_000
    """Images with more pixels than this are rejected (decompression-bomb guard)."""
    min_side: int = 32
    """Images whose shorter side is below this many pixels are rejected (icons, trackers)."""
    dedupe: bool = True
    """Skip exact (sha256) and near-identical (perceptual hash) copies of a saved photo."""
    hash_threshold: int = NEAR_THRESHOLD
    """Near-identical: at most this many of 64 hash bits differ (both hashes)..."""
    diff_threshold: float = DIFF_THRESHOLD
    """...and the thumbnails differ by at most this much (see facelab._phash)."""
    user_agent: str = "facelab-collect/0.1 (+https://github.com/facelab)"
    """HTTP User-Agent header."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        if self.max_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise ValueError("max_bytes, max_pixels and min_side must be >= 1")


@dataclass
class Entry:
    """One line of the URL list and, after the run, its manifest row."""

    url: str
    label: str = ""
    line: int = 0
    file: str = ""
    status: str = ""
    reason: str = ""
    sha256: str = ""

    def row(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in MANIFEST_COLUMNS}


@dataclass
class CollectReport:
    """What a collect run did."""

    out: Path
    manifest: Path
    counts: dict[str, int]
    """status -> number of URLs (this run's and earlier runs' rows together)."""
    entries: list[Entry] = field(default_factory=list)
    skipped: int = 0
    """URLs settled by an earlier run and not downloaded again."""


# --------------------------------------------------------------------------- reading the list

def _safe_label(label: str, where: str) -> str:
    label = label.strip()
    if not label:
        return ""
    clean = re.sub(r"[^\w.+-]+", "_", label).strip("._")
    if not clean:
        raise DataError(f"{where}: label {label!r} cannot be used as a folder name")
    return clean


def read_url_list(path: str | Path) -> list[Entry]:
    """Parse a URL list (text or CSV). Malformed URLs become ``invalid`` entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: URL list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc
    rows = list(_rows(text, csv_like=path.suffix.lower() == ".csv"))
    entries = [_entry(path, lineno, cells) for lineno, cells in rows]
    if not entries:
        raise DataError(f"{path}: no URLs found (one URL per line, optionally followed by a label)")
    return entries


def _rows(text: str, csv_like: bool) -> Iterator[tuple[int, list[str]]]:
    lines = text.splitlines()
    if csv_like:
        parsed = list(csv.reader(lines))
        header = [c.strip().lower() for c in parsed[0]] if parsed else []
        if "url" in header:
            ucol = header.index("url")
            lcol = next((header.index(c) for c in ("label", "class", "folder") if c in header), None)
            for lineno, cells in enumerate(parsed[1:], start=2):
                if any(c.strip() for c in cells):
                    yield lineno, [cells[ucol] if ucol < len(cells) else "",
                                   cells[lcol] if lcol is not None and lcol < len(cells) else ""]
            return
        for lineno, cells in enumerate(parsed, start=1):
            if cells and cells[0].strip() and not cells[0].lstrip().startswith("#"):
                yield lineno, cells[:2]
        return
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, re.split(r"[\s,]+", line, maxsplit=1)


def _entry(path: Path, lineno: int, cells: list[str]) -> Entry:
    url = cells[0].strip()
    label = _safe_label(cells[1] if len(cells) > 1 else "", f"{path}, line {lineno}")
    e = Entry(url=url, label=label, line=lineno)
    if not re.match(r"^https?://[^\s/]+", url):
        e.status, e.reason = "invalid", f"line {lineno}: not an http(s) URL"
    return e


# --------------------------------------------------------------------------- manifest

def read_manifest(path: Path) -> dict[tuple[str, str], Entry]:
    """Earlier rows keyed by (url, label); a missing manifest is an empty one."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        e = Entry(**{k: r.get(k, "") or "" for k in MANIFEST_COLUMNS})
        out[(e.url, e.label)] = e
    return out


def write_manifest(path: Path, entries: Iterable[Entry]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for e in entries:
            w.writerow(e.row())


# --------------------------------------------------------------------------- downloading

@dataclass
class _Fetched:
    """A worker's result: the checked bytes, or why there are none."""

    data: bytes = b""
    ext: str = ""
    sha256: str = ""
    fp: Fingerprint | None = None
    status: str = ""
    reason: str = ""


class _Reject(Exception):
    """A permanent failure (do not retry)."""


class _Transient(Exception):
    """A failure worth retrying (timeouts, connection errors, 429/5xx)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only: urllib also follows ``ftp://`` (and the list was
    checked to hold http(s) URLs, not where they lead)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise _Reject(f"HTTP {code} redirect to a non-http(s) address ({scheme}:), not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _get(url: str, config: CollectConfig) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": config.user_agent, "Accept": "image/*"})
    deadline = time.monotonic() + config.timeout
    try:
        with _OPENER.open(req, timeout=config.timeout) as resp:  # noqa: S310 - http(s) checked, redirects too
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
                raise _Reject(f"not an image: the server sent {ctype} (a web page, not a photo)")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > config.max_bytes:
                raise _Reject(f"too large: {int(length) / 1e6:.1f} MB (limit {config.max_bytes / 1e6:.1f} MB)")
            chunks, size = [], 0
            while block := resp.read(1 << 16):
                size += len(block)
                if size > config.max_bytes:
                    raise _Reject(f"too large: over {config.max_bytes / 1e6:.1f} MB")
                if time.monotonic() > deadline:
                    raise _Transient(f"timed out after {config.timeout:g} s (body still arriving)")
                chunks.append(block)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        if exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise _Reject(f"HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, ConnectionError, urllib.error.URLError, OSError) as exc:
        if isinstance(exc, (_Reject, _Transient)):
            raise
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _Transient(f"timed out after {config.timeout:g} s") from None
        raise _Transient(f"connection failed ({reason})") from None


def _check(data: bytes, url: str, config: CollectConfig) -> _Fetched:
    from PIL import Image

    from facelab.images import ImageError, decode_image

    try:
        rgb = decode_image(data, name=url, max_pixels=config.max_pixels)
    except ImageError as exc:
        raise _Reject(exc.reason) from None
    h, w = rgb.shape[:2]
    if min(h, w) < config.min_side:
        raise _Reject(f"too small: {w}x{h} (shorter side below {config.min_side} px)")
    with Image.open(io.BytesIO(data)) as img:
        ext = _EXTENSIONS.get(img.format or "", ".jpg")
    return _Fetched(data=data, ext=ext, sha256=hashlib.sha256(data).hexdigest(), fp=fingerprint(rgb))


def fetch(url: str, config: CollectConfig) -> _Fetched:
    """Download and check one URL, retrying transient failures with exponential backoff."""
    attempt = 0
    while True:
        try:
            return _check(_get(url, config), url, config)
        except _Reject as exc:
            return _Fetched(status="rejected", reason=str(exc))
        except _Transient as exc:
            if attempt >= config.retries:
                tries = f" ({attempt + 1} attempts)" if attempt else ""
                return _Fetched(status="failed", reason=f"{exc}{tries}")
            time.sleep(config.backoff * (2 ** attempt))
            attempt += 1


# --------------------------------------------------------------------------- the run

class _Saver:
    """Saves checked downloads, refusing exact and near-identical copies of saved photos."""

    def __init__(self, out: Path, config: CollectConfig) -> None:
        self.out, self.config = out, config
        self.by_sha: dict[str, str] = {}
        self.fps: list[Fingerprint] = []
        self.files: list[str] = []

    def remember(self, entry: Entry) -> None:
        """Register a photo saved by an earlier run (its fingerprint is recomputed)."""
        from facelab.images import ImageError, read_image

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

    def save(self, entry: Entry, got: _Fetched) -> None:
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
    from facelab._progress import progress as progress_bar

    bar = progress_bar(len(todo), "collect", unit="url", enabled=progress)
    last_save = time.monotonic()
    ready: dict[int, _Fetched] = {}
    next_submit = next_settle = 0
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        running: dict[Future, int] = {}
        while next_settle < len(todo):
            while next_submit < len(todo) and next_submit - next_settle < 8 * config.workers \
                    and len(running) < 2 * config.workers:
                running[pool.submit(fetch, todo[next_submit].url, config)] = next_submit
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


def _settle(e: Entry, got: _Fetched, saver: _Saver) -> None:
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
