"""Dynamic micro-batching: concurrent requests' face crops go through the model in one call.

Each request ``await``s :meth:`MicroBatcher.submit` with its crops. A single collector
task per model takes the first waiting request, then keeps gathering for at most
``max_wait_ms`` (or until ``max_batch`` crops), runs the model once in a worker thread and
hands every request its own rows. While the model runs, new requests queue up and form the
next batch, so batches grow with the load and a lone request waits at most ``max_wait_ms``.

A caller that gives up (e.g. its request timed out) cancels its
``submit``; its crops are then dropped before the next model call instead of being
computed for nobody (counted in :attr:`BatchStats.dropped`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters for ``/healthz`` and the benchmark."""

    calls: int = 0
    items: int = 0
    largest: int = 0
    seconds: float = 0.0
    dropped: int = 0
    """Requests abandoned (cancelled) before their model call: never computed."""

    def to_dict(self) -> dict[str, Any]:
        mean = self.items / self.calls if self.calls else 0.0
        return {"calls": self.calls, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(mean, 2), "model_seconds": round(self.seconds, 3), "dropped": self.dropped}


@dataclass
class _Job:
    items: Sequence[Any]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Batch ``fn(list_of_items) -> N rows`` (an array or a list) calls across concurrent callers."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: Executor | None = None,
                 max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, items: Sequence[Any]) -> Sequence[Any]:
        """Run ``fn`` on ``items`` as part of a batch; returns this caller's rows."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(list(items), future))
        return await future

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    job = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                size += len(job.items)
            live = [j for j in jobs if not j.future.cancelled()]
            self.stats.dropped += len(jobs) - len(live)
            await self._run(live)

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        items = [it for j in jobs for it in j.items]
        t0 = time.perf_counter()
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, items)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            log.exception("model call on a batch of %d failed", len(items))
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        self._record(len(items), time.perf_counter() - t0)
        start = 0
        for j in jobs:
            n = len(j.items)
            if not j.future.done():
                j.future.set_result(out[start:start + n])
            start += n

    def _record(self, n: int, seconds: float) -> None:
        s = self.stats
        s.calls += 1
        s.items += n
        s.largest = max(s.largest, n)
        s.seconds += seconds
