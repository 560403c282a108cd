"""The models ``facelab serve`` answers with: loading them, and one image (an upload or a
video frame) -> every face with each selected model's prediction.

Work per image: decoding, face detection and alignment run in a thread pool (never on the
event loop; each thread has its own face pipelines, detectors need not be thread-safe);
the crops then go to each model's :class:`MicroBatcher`, which joins the crops of
concurrent requests into one model call. Models whose face preparation is the same (one
config digest) share one detection per image.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from facelab.detect import create_detector
from facelab.images import UPLOAD_FORMATS, ImageError, upright_size
from facelab.predict import backend_of, face_dict, face_pipeline, load_predictor, model_name, prediction_dict
from facelab.prepare import FacePipeline
from facelab.serve.batching import MicroBatcher
from facelab.serve.errors import ApiError, image_error
from facelab.serve.settings import ServeConfig

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    run: str
    predictor: Any
    batcher: MicroBatcher
    digest: str
    """Face-preparation config digest: models sharing it share one detection per image."""

    def info(self) -> dict[str, Any]:
        b = self.predictor.bundle
        return {"name": self.name, "backend": backend_of(self.predictor),
                "task": self.predictor.task.to_dict(), "input_size": b["input"]["size"],
                "detector": b.get("prepare", {}).get("detector"), "batching": self.batcher.stats.to_dict()}


@dataclass
class Service:
    """Everything a request needs: models, pools, per-thread face pipelines."""

    config: ServeConfig
    models: dict[str, LoadedModel] = field(default_factory=dict)
    cpu_pool: ThreadPoolExecutor | None = None
    model_pool: ThreadPoolExecutor | None = None
    form_pool: ThreadPoolExecutor | None = None
    """Multipart parsing (its own threads: a form is not queued behind face detections)."""
    _local: threading.local = field(default_factory=threading.local)
    _configs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> None:
        threads = self.config.threads or os.cpu_count() or 2
        self.cpu_pool = ThreadPoolExecutor(threads, thread_name_prefix="facelab-cpu")
        self.model_pool = ThreadPoolExecutor(max(1, len(self.config.runs)), thread_name_prefix="facelab-model")
        self.form_pool = ThreadPoolExecutor(2, thread_name_prefix="facelab-form")
        for run in self.config.runs:
            predictor = load_predictor(run, self.config.backend, self.config.model_threads)
            name = _unique(model_name(run), self.models)
            pipe = face_pipeline(predictor.bundle, self.config.all_faces)
            digest = pipe.config.digest()
            self._configs[digest] = pipe.config
            batcher = MicroBatcher(batch_fn(predictor), self.model_pool, self.config.max_batch,
                                   self.config.max_wait_ms)
            self.models[name] = LoadedModel(name, str(run), predictor, batcher, digest)
            log.info("model %s: %s backend, %d labels", name, backend_of(predictor), len(predictor.labels))
        self._warm_up(self.cpu_pool, threads)

    def _warm_up(self, pool: ThreadPoolExecutor, n: int) -> None:
        """One tiny call per model, and every detection thread builds its own face
        pipelines now (a barrier makes the pool start all its ``n`` threads), so the first
        real requests are not slow."""
        blank = np.full((160, 160, 3), 127, np.uint8)
        for m in self.models.values():
            m.predictor.predict_crops([blank])
        barrier = threading.Barrier(n)

        def warm() -> None:
            for digest in self._configs:
                self.pipeline(digest).process(blank)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=30)

        for f in [pool.submit(warm) for _ in range(n)]:
            f.result()

    def pipeline(self, digest: str) -> Any:
        """This thread's own face pipeline (detectors need not be thread-safe)."""
        mine = self._local.__dict__.setdefault("pipelines", {})
        if digest not in mine:
            config = self._configs[digest]
            pipe = FacePipeline(config)
            pipe.detector = create_detector(config.detector, **config.detector_options)
            mine[digest] = pipe
        return mine[digest]

    def select(self, names: str | None) -> list[LoadedModel]:
        if not names:
            return list(self.models.values())
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in self.models]
        if unknown:
            raise ApiError(404, "unknown_model", f"unknown model(s) {unknown}; loaded: {list(self.models)}")
        return [self.models[n] for n in wanted]

    # ------------------------------------------------------------------ one image
    def _decode_and_detect(self, data: bytes, digests: list[str]) -> tuple[tuple[int, int], dict[str, list]]:
        # process_file: the upload is decoded the way training decoded its photos (a JPEG at
        # the smallest DCT scale that suffices), so the crop is the one training would cut
        try:
            found = {d: self.pipeline(d).process_file(data, "upload", formats=UPLOAD_FORMATS,
                                                      max_pixels=self.config.max_pixels)[1][: self.config.max_faces]
                     for d in digests}
        except ImageError as exc:
            raise image_error(exc) from None
        w, h = upright_size(data)
        return (h, w), found

    async def analyse(self, data: bytes, models: list[LoadedModel]) -> dict[str, Any]:
        """Image bytes (within the upload limit: :func:`facelab.serve.uploads.check_size`)
        -> the JSON answer: faces with every selected model's prediction."""
        t0 = time.perf_counter()
        digests = sorted({m.digest for m in models})
        loop = asyncio.get_running_loop()
        (h, w), found = await loop.run_in_executor(self.cpu_pool, self._decode_and_detect, data, digests)
        t1 = time.perf_counter()
        probs = await asyncio.gather(*(m.batcher.submit([p.crop for p in found[m.digest]]) for m in models))
        faces: list[dict[str, Any]] = []
        for m, rows in zip(models, probs):
            for prepared, (row, identity, spread) in zip(found[m.digest], rows):
                entry = _face_entry(faces, prepared.face)
                entry["predictions"][m.name] = prediction_dict(m.predictor.task, row, identity, spread)
        t2 = time.perf_counter()
        return {"width": w, "height": h, "models": [m.name for m in models], "faces": faces,
                "timing_ms": {"detect": round((t1 - t0) * 1e3, 2), "classify": round((t2 - t1) * 1e3, 2),
                              "total": round((t2 - t0) * 1e3, 2)}}

    def health(self) -> dict[str, Any]:
        """The models and their batching counters (``/healthz``)."""
        return {"models": list(self.models),
                "batching": {n: m.batcher.stats.to_dict() for n, m in self.models.items()}}

    async def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()

    async def stop(self) -> None:
        for m in self.models.values():
            await m.batcher.stop()
        for pool in (self.cpu_pool, self.model_pool, self.form_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)



def _unique(name: str, taken: dict) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


def _face_entry(faces: list[dict[str, Any]], face: Any) -> dict[str, Any]:
    """The entry of ``face`` in ``faces`` (same face found by another model's detector:
    boxes overlapping by IoU >= 0.5), appended when new."""
    for entry in faces:
        if _iou(entry["box"], face.box) >= 0.5:
            return entry
    entry = {**face_dict(face), "predictions": {}}
    faces.append(entry)
    return entry


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0



def batch_fn(predictor: Any) -> Callable[[list[np.ndarray]], list[tuple[np.ndarray, str | None, Any]]]:
    """The batched model call: crops -> [(probabilities, open-set identity or None, ensemble
    spread or None)]."""
    def run(crops: list[np.ndarray]) -> list[tuple[np.ndarray, str | None, Any]]:
        return list(zip(*predictor.classify_crops(crops)))
    return run
