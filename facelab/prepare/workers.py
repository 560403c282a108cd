"""Running the pipeline over many photos: cached, in threads or worker processes, in order,
fail-fast (a photo that fails for a reason other than bad input stops the run)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from facelab._io import DiskFullError, os_reason
from facelab._progress import progress as progress_bar
from facelab.detect import cached_detector, is_builtin_detector
from facelab.images import ImageError
from facelab.prepare.cache import CropCache, FileResult, place_crop
from facelab.prepare.config import PrepareConfig
from facelab.prepare.pipeline import FacePipeline

log = logging.getLogger(__name__)

PROCESSES_FROM = 200
"""run_files(processes=None) uses worker processes from this many photos on: yuface holds
the GIL, so threads barely overlap detection (celeba-mini: ~1.3x faster in processes), but
starting them costs ~0.3 s."""


class WorkerError(RuntimeError):
    """A photo failed for a reason that is not bad input (a bug, a broken install): the
    whole run stops with the photo and the reason."""


class _Worker:
    """Pipeline + cache for one thread or process; turns a path into a :class:`FileResult`."""

    def __init__(self, config: PrepareConfig, cache_root: str) -> None:
        self.pipeline = FacePipeline(config)
        self.cache = CropCache(cache_root, config)

    def __call__(self, path: str, out_name: str | None = None) -> FileResult:
        """One photo through the cache or the pipeline; never raises for bad input (it becomes
        the result's status): anything else is a :class:`WorkerError` naming the photo."""
        try:
            return self._run(path, out_name)
        except (DiskFullError, WorkerError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a broken install: stop, name the photo
            log.debug("%s: prepare failed", path, exc_info=True)
            raise WorkerError(f"{path}: prepare failed ({type(exc).__name__}: {exc})") from exc

    def _run(self, path: str, out_name: str | None) -> FileResult:
        """With ``out_name`` the first crop is also placed there (here, in the worker, so that
        writing the output runs in parallel too; further faces are named by the main thread,
        which knows every output name)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return FileResult(path, "unreadable", os_reason(exc))
        sha = hashlib.sha256(data).hexdigest()
        result = self.cache.load(sha)
        if result is not None:
            result.path = path
        else:
            result, crops = _run_pipeline(self.pipeline, path, data, sha)
            try:
                result = self.cache.store(result, crops)
            except DiskFullError:
                raise
            except OSError as exc:  # a read-only cache must not stop the run
                log.warning("%s: could not write to the cache %s (%s)", path, self.cache.dir, exc)
        if out_name is not None and result.crops:
            try:
                place_crop(result.crops[0], Path(out_name))
            except OSError as exc:  # the main thread retries and reports it (see outputs.write_outputs)
                log.debug("%s: could not place %s (%s)", result.path, out_name, exc)
        return result


def _run_pipeline(pipeline: FacePipeline, path: str, data: bytes, sha: str) -> tuple[FileResult, list[np.ndarray]]:
    """One photo's bytes -> its result row and crops (bad input becomes a row, not an error)."""
    try:
        faces, prepared = pipeline.process_file(data, path)
    except ImageError as exc:
        return FileResult(path, "unreadable", exc.reason, sha256=sha), []
    result = FileResult(path, "kept", n_faces=len(faces), sha256=sha, faces=[p.face.to_dict() for p in prepared])
    if not faces:
        result.status, result.reason = "no_face", "no face found"
    elif not prepared:
        result.status, result.reason = "several_faces", f"{len(faces)} faces (multi_face=skip)"
    elif len(faces) > 1:
        kept = "all" if len(prepared) > 1 else {"main": "the main face"}.get(pipeline.config.multi_face, "the largest")
        result.reason = f"{len(faces)} faces, kept {kept}"
    return result, [p.crop for p in prepared]


_PROCESS_WORKER: list[_Worker] = []


_PROCESS_SETUP_ERROR: list[str] = []


def _init_process(config_dict: dict, cache_root: str) -> None:
    """Worker-process set-up: one thread per process (the processes are the parallelism).

    OMP_NUM_THREADS must be set before yuface's OpenMP runtime loads, or two workers each
    spinning two OpenMP threads on two cores run ten times slower. A set-up failure is kept
    and raised with the first photo (an initializer that raises only kills the process).
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
        _PROCESS_WORKER[:] = [_Worker(PrepareConfig.from_dict(config_dict), cache_root)]
    except Exception as exc:  # noqa: BLE001 - reported with the first photo
        _PROCESS_SETUP_ERROR[:] = [f"{type(exc).__name__}: {exc}"]


def _process_chunk(items: list[tuple[str, str | None]]) -> list[FileResult]:
    if not _PROCESS_WORKER:
        raise WorkerError(f"{items[0][0]}: the prepare worker could not start "
                          f"({_PROCESS_SETUP_ERROR[0] if _PROCESS_SETUP_ERROR else 'unknown error'})")
    return [_PROCESS_WORKER[0](*item) for item in items]


def run_files(paths: Sequence[Path | str], config: PrepareConfig, cache_dir: Path | str | None = None,
              workers: int = 2, progress: bool = True, desc: str = "prepare",
              processes: bool | None = None, out_names: Sequence[str] | None = None) -> list[FileResult]:
    """Run the pipeline over ``paths`` (cached, parallel, with progress), in order.
    ``out_names[i]``: where photo i's first crop goes, None = only cached.

    Workers are processes (``forkserver``) or threads; ``processes=None`` picks processes
    from :data:`PROCESSES_FROM` photos on. Detectors hold the GIL while they run (yuface,
    mtcnn's Python), so only processes run two detections at once; threads start at once and
    share the model, which wins on small jobs.
    """
    cache_root = str(CropCache(cache_dir, config).root)
    names = list(out_names) if out_names is not None else [None] * len(paths)
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(names)} output names")
    todo = [(str(p), s) for p, s in zip(paths, names)]
    if processes is None:
        processes = len(todo) >= PROCESSES_FROM
    if processes and not is_builtin_detector(config.detector):
        log.info("detector %r is registered by this program, not by facelab: preparing in threads "
                 "(worker processes would not know it)", config.detector)
        processes = False
    # Build the detector here first: a bad option value (or a missing model) stops the run
    # with one message before any worker starts, and OpenCV is fully imported before threads.
    cached_detector(config.detector, config.detector_options)
    bar = progress_bar(len(todo), desc, enabled=progress)
    results: list[FileResult] = []
    try:
        for r in _map(todo, config, cache_root, workers, processes):
            results.append(r)
            bar.update()
    finally:
        bar.close()
    return results


def _map(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str, workers: int,
         processes: bool):  # noqa: ANN202
    """Results for ``todo`` (path, output stem) in order, from threads, processes or this thread."""
    if workers <= 1 or len(todo) < 2:
        worker = _Worker(config, cache_root)
        yield from (worker(*item) for item in todo)
    elif processes:
        yield from _map_processes(todo, config, cache_root, workers)
    else:
        yield from _map_threads(todo, config, cache_root, workers)


def _map_threads(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str,
                 workers: int):  # noqa: ANN202
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def work(item: tuple[str, str | None]) -> FileResult:
        if not hasattr(local, "worker"):  # detectors are not all thread-safe: one per thread
            local.worker = _Worker(config, cache_root)
        return local.worker(*item)

    pending: deque = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="facelab-prepare")
    try:
        for item in todo:  # bounded look-ahead keeps memory flat on 200k-photo sources
            pending.append(pool.submit(work, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a failure stops the run at once: queued photos are dropped, not worked on
        pool.shutdown(wait=True, cancel_futures=True)


def _map_processes(todo: list[tuple[str, str | None]], config: PrepareConfig, cache_root: str,
                   workers: int):  # noqa: ANN202
    """Chunks of ``todo`` in worker processes. A worker that dies (killed, out of memory)
    breaks the pool and stops the run with the photos it held; it is never replaced in a
    loop, and a failure inside a worker comes back as :class:`WorkerError`."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    size = max(1, min(16, len(todo) // (workers * 8)))
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    pool = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_process,
                               initargs=(config.to_dict(), cache_root))
    processes = pool._processes  # noqa: SLF001 - see _stop_broken
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append((_submit(pool, chunk, BrokenProcessPool), chunk))
            if len(pending) >= 4 * workers:
                yield from pending[0][0].result()
                pending.popleft()
        while pending:
            yield from pending[0][0].result()
            pending.popleft()
    except BrokenProcessPool:
        _stop_broken(pool, processes)
        photo = pending[0][1][0][0] if pending else "prepare"  # the oldest unfinished chunk
        raise WorkerError(f"{photo}: a prepare worker process died while working on this photo or one of the "
                          f"{size - 1} after it (killed, or out of memory?); run again (finished photos come "
                          "from the cache), or with --threads to stay in one process") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: Any, chunk: list, broken: type[Exception]) -> Any:
    """``pool.submit`` that reports a pool broken mid-call as broken: when a worker dies while
    this thread submits, the executor's wake-up pipe may already be closed and the call
    raises ``OSError: Bad file descriptor`` instead (Python 3.11)."""
    try:
        return pool.submit(_process_chunk, chunk)
    except OSError as exc:
        raise broken(f"the pool broke while a chunk was submitted ({exc})") from exc


def _stop_broken(pool: Any, processes: Mapping[int, Any] | None) -> None:
    """Kill what is left of a broken pool. The executor terminates its workers, but one that
    this thread was starting at that moment is missed and then waited for forever
    (Python 3.11: a worker killed early in the run hung prepare)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for p in list((processes or {}).values()):
        if p.is_alive():
            p.kill()


def _mp_context():  # noqa: ANN202 - multiprocessing context
    """``forkserver`` where available: workers fork from a clean single-threaded server, so a
    parent that already ran OpenCV, OpenMP or torch threads cannot deadlock them (plain
    ``fork`` does), and they start much faster than ``spawn``.

    The workers never import the caller's ``__main__``: multiprocessing would re-run a user's
    script in every worker, and a script that calls ``facelab.prepare`` at top level (no
    ``if __name__ == "__main__":`` guard) would then start workers from its workers, which die
    and are replaced forever. They need nothing from it (they run facelab code on paths)."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["facelab.prepare"])
    else:
        ctx = mp.get_context("spawn")
    return _WithoutMain(ctx)


class _WithoutMain:
    """A multiprocessing context whose processes start without the parent's ``__main__``."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.Process = _PROCESS_WITHOUT_MAIN[ctx.get_start_method()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _process_without_main(base: type) -> type:
    """``base`` (a multiprocessing Process class) started under :func:`_main_module_hidden`;
    a module-level class, so that the process object pickles."""

    def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocessing's name
        with _main_module_hidden():
            return getattr(base, "_Popen")(process_obj)  # noqa: B009 - a private staticmethod of base

    name = f"_{base.__name__}WithoutMain"
    cls = type(name, (base,), {"_Popen": staticmethod(_Popen), "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


def _processes_without_main() -> dict[str, type]:
    from multiprocessing import context

    bases = {"forkserver": getattr(context, "ForkServerProcess", None), "spawn": context.SpawnProcess}
    return {method: _process_without_main(base) for method, base in bases.items() if base is not None}


_PROCESS_WITHOUT_MAIN = _processes_without_main()
_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a worker process is being started, ``sys.modules["__main__"]`` is a blank module:
    multiprocessing then sends the child no main module to import (it reads the path or the
    module name of ``__main__`` at that moment)."""
    import types

    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main

