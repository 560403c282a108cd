"""Does the map point at the face? Face-level results over many photos: the pointing game
(the map's peak on the original photo against the detected face box, with its chance
rate) and the model-randomisation control."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.bundle import Predictor
from facelab.errors import DataError
from facelab.explain.cam import class_activation_maps, target_index
from facelab.explain.geometry import to_original
from facelab.explain.hooks import torch_net
from facelab.images import ImageError, read_image
from facelab.prepare import FacePipeline

if TYPE_CHECKING:  # pragma: no cover
    from facelab.detect import Face

log = logging.getLogger(__name__)


@dataclass
class FacePhoto:
    """A photo with its detected face and aligned crop (detect once, explain many times)."""

    path: str
    rgb: np.ndarray
    face: "Face"
    crop: np.ndarray


@dataclass
class PointingGame:
    """Where the heat maps peak on the original photos, against the detected face boxes."""

    photos: int
    in_box: float
    """Share of photos whose map, carried back onto the photo, peaks inside the face box
    (an empty map, one with no positive evidence at all, counts as a miss)."""
    empty: float
    """Share of photos whose map is empty (all zero)."""
    chance: float
    """Expected ``in_box`` of a peak placed uniformly at random on the crop: the mean of
    face-box area / area of the crop's footprint on the photo."""


def face_photos(prepare: dict, paths: Sequence[str | Path]) -> list[FacePhoto]:
    """Each readable photo with a face -> its largest face and crop (others skipped, logged)."""
    pipeline, out = FacePipeline(prepare), []
    for path in paths:
        try:
            rgb = read_image(path)
        except ImageError as exc:
            log.warning("skipped %s", exc)
            continue
        faces = pipeline.process(rgb)
        if faces:
            out.append(FacePhoto(str(path), rgb, faces[0].face, faces[0].crop))
        else:
            log.warning("skipped %s: no face found", path)
    return out


def pointing_game(predictor: Predictor, photos: Sequence[FacePhoto], target: str | None = None, method: str = "gradcam",
                  layer: str | None = None, batch: int = 32) -> PointingGame:
    """Explain ``target`` (None: each photo's prediction, as :func:`facelab.explain.explain`
    does) on every photo and count the maps whose peak on the ORIGINAL photo (through
    :func:`to_original`) lies inside the detected face box."""
    if not photos:
        raise DataError("pointing_game needs at least one photo with a face; pass photos in which one is found")
    prepare = predictor.info.prepare
    hits, empty, chance = 0, 0, []
    for start in range(0, len(photos), batch):
        chunk = photos[start:start + batch]
        crops = [p.crop for p in chunk]
        index = [target_index(predictor.task, probs, target) for probs in predictor.predict_crops(crops)]
        cams = class_activation_maps(predictor, crops, index, method, layer)
        for p, cam in zip(chunk, cams):
            x0, y0, x1, y1 = p.face.box
            footprint = to_original(np.ones_like(cam), p.face, prepare, p.rgb.shape)
            chance.append((x1 - x0) * (y1 - y0) / max(float((footprint > 0.5).sum()), 1.0))
            if cam.max() <= 0:
                empty += 1
                continue
            back = to_original(cam, p.face, prepare, p.rgb.shape)
            y, x = np.unravel_index(int(back.argmax()), back.shape)
            hits += bool(x0 <= x <= x1 and y0 <= y <= y1)
    n = len(photos)
    return PointingGame(n, hits / n, empty / n, float(np.mean(chance)))


def randomized(predictor: Predictor, seed: int = 0) -> Any:
    """A copy of ``predictor`` whose network has fresh random weights (same architecture and
    preprocessing): the "model randomisation" sanity check of Adebayo et al. (2018). Maps that
    look the same for it as for the trained model show the architecture, not what was learnt.

    The network is a copy of the predictor's own with every layer's ``reset_parameters()``
    called in module order: for the built-in networks exactly the weights a fresh
    ``facelab.models.create_model`` draws from the same seed (PyTorch's default init, in
    construction order); timm networks get PyTorch's default init instead of timm's. Copying
    instead of rebuilding keeps facelab.models, which imports torch at its top, out of
    ``import facelab.explain`` (the CLI imports ExplainConfig from here)."""
    import torch

    net = copy.deepcopy(torch_net(predictor))
    torch.manual_seed(seed)
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    other = copy.copy(predictor)
    other.model = net.eval()  # type: ignore[attr-defined]  # the PyTorch backend's network (torch_net found it)
    return other
