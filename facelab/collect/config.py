"""What collect is told (:class:`CollectConfig`), what it records per URL (:class:`Entry`, a
row of ``manifest.csv``) and what it returns (:class:`CollectReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facelab._phash import DIFF_THRESHOLD, NEAR_THRESHOLD
from facelab.errors import ConfigError

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("url", "label", "file", "status", "reason", "sha256")
#: Statuses a re-run leaves alone; ``failed`` (network trouble) is tried again.
SETTLED = ("ok", "duplicate", "near-duplicate", "rejected", "invalid")


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
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0 or self.backoff < 0:
            raise ConfigError("retries and backoff must be >= 0")
        if self.max_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise ConfigError("max_bytes, max_pixels and min_side must be >= 1")


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

