"""Photos in, pictures and one self-contained ``explain.html`` out: detect each photo's
largest face, explain the model's decision on its aligned crop, carry the map back onto
the photo."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

from facelab.bundle import Predictor
from facelab._progress import progress
from facelab.backends import load
from facelab.errors import ConfigError, DataError
from facelab.evaluate import resolve_members
from facelab.explain.cam import class_activation_maps, target_index
from facelab.explain.config import ExplainConfig, Explanation, ExplainResult
from facelab.explain.geometry import to_original
from facelab.explain.render import write_outputs
from facelab.images import ImageError, read_image
from facelab.prepare import FacePipeline

log = logging.getLogger(__name__)


def explain(run: str | Path, images: Sequence[str | Path], out: str | Path | None = None,
            config: ExplainConfig | None = None, **overrides: Any) -> ExplainResult:
    """Explain ``run``'s predictions on ``images``; writes pictures and ``explain.html`` into
    ``out`` (default ``RUN/explain``). Photos without a face are skipped with a warning."""
    config = config or ExplainConfig(**overrides)
    if not images:
        raise DataError("no photos given: pass one or more image files to explain")
    members, _ = resolve_members(run)
    if len(members) > 1:
        raise ConfigError(f"{run} is an ensemble; explain one member run at a time: {', '.join(map(str, members))}")
    predictor = load(members[0])
    out = Path(out) if out else members[0] / "explain"
    items = [e for p in _progress(images) if (e := explain_photo(predictor, p, config)) is not None]
    if not items:
        raise DataError(f"none of the {len(images)} photo(s) could be explained (unreadable or no face found); "
                         f"pass --aligned if they are already face crops")
    files = write_outputs(out, predictor, items, config)
    return ExplainResult(out, items, files)


def _progress(images: Sequence[str | Path]) -> Iterator[str | Path]:
    """The photos, with progress (a bar on a terminal, log lines otherwise) from 4 photos on."""
    with progress(len(images), "explain", enabled=len(images) >= 4) as bar:
        for image in images:
            yield image
            bar.update()


def explain_photo(predictor: Predictor, path: str | Path, config: ExplainConfig) -> Explanation | None:
    """One photo -> its explanation (the largest face), or None (logged) when impossible."""
    try:
        rgb = read_image(path)
    except ImageError as exc:
        log.warning("explain: skipped %s", exc)
        return None
    prepare = predictor.info.prepare
    face = None
    if config.aligned or not prepare:
        crop = rgb
    else:
        faces = FacePipeline(prepare).process(rgb)
        if not faces:
            log.warning("explain: skipped %s: no face found (pass --aligned for face crops)", path)
            return None
        face, crop = faces[0].face, faces[0].crop
    probs = predictor.predict_crops([crop])[0]
    idx = target_index(predictor.task, probs, config.target)
    cam = class_activation_maps(predictor, [crop], [idx], config.method, config.layer)[0]
    decision = predictor.task.decide(probs[None])[0]
    predicted = bool(decision[idx]) if predictor.task.kind == "multilabel" else int(decision) == idx
    e = Explanation(str(path), predictor.task.labels[idx], float(probs[idx]), crop, cam, face, predicted=predicted)
    if predicted and cam.max() == 0:
        # Grad-CAM averages each channel's gradient over the map before weighting it, so
        # positive and negative evidence can cancel to an all-negative map although the
        # score is high; HiResCAM's element-wise product does not average them away.
        log.warning("explain: %s: the %s map for %s (p=%.2f) is empty: the averaged gradients cancel; "
                    "--method hirescam shows where the evidence lies", path, config.method, e.label, e.prob)
    if face is not None:
        e.original, e.cam_original = rgb, to_original(cam, face, prepare, rgb.shape)
    return e
