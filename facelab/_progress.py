"""Progress of a long loop: a tqdm bar on a terminal, a few log lines elsewhere.

A bar redraws itself with carriage returns, which a log file or a CI console keeps as
hundreds of lines. When stderr is not a terminal, :func:`progress` logs one line each time
another tenth of the work is done (at most one every few seconds, and at least one a minute
on slow work) and one at the end.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("facelab.progress")

STEP = 0.10
"""A log line each time this fraction of the work is done ..."""
MIN_SECONDS = 5.0
"""... but not more often than this (a fast loop logs only its end) ..."""
MAX_SECONDS = 60.0
"""... and at least this often while the work goes on."""


def progress(total: int, desc: str, unit: str = "img", enabled: bool = True) -> Any:
    """An object with ``update(n=1)`` and ``close()``: tqdm on a terminal, log lines otherwise."""
    if not enabled or total <= 0:
        return _Quiet()
    if stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return LogProgress(total, desc, unit)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LogProgress:
    """Progress as log lines: ``prepare: 450/900 (50%), 120.3 img/s, about 4 s left``."""

    def __init__(self, total: int, desc: str, unit: str = "img") -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.start = self.last = time.monotonic()
        self.next_step = STEP
        self.lines = 0
        self.logged = 0  # work done at the last line

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        stepped = self.done >= self.next_step * self.total and now - self.last >= MIN_SECONDS
        if stepped or now - self.last >= MAX_SECONDS:
            self._log(now)
            self.next_step = (int(self.done / self.total / STEP) + 1) * STEP

    def close(self) -> None:
        if self.done != self.logged:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        tail = f", about {left:.0f} s left" if left else f" in {elapsed:.1f} s"
        log.info("%s: %d/%d (%d%%), %.1f %s/s%s", self.desc, self.done, self.total,
                 100 * self.done // self.total, rate, self.unit, tail)
        self.last = now
        self.lines += 1
        self.logged = self.done

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
