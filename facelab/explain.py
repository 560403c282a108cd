"""What the network looks at: class-activation maps and the classic "inside the CNN" pictures.

* :func:`class_activation_maps`: Grad-CAM (default), HiResCAM or Grad-CAM++ for a chosen
  output, computed on the aligned crop at the model's input size.
* :func:`to_original`: the map carried back onto the ORIGINAL photo through the inverse of
  the alignment transform (the similarity transform from the face's five landmarks onto
  the bundle's crop template, exactly as ``facelab.align.align_face`` computes it).
* :func:`feature_maps`: for the first convolution blocks, the maps after the convolution,
  after its activation and after pooling; :func:`first_layer_filters`.
* :func:`explain`: photos in, pictures and one self-contained ``explain.html`` out.

Works on any PyTorch predictor (``facelab.load``): from-scratch CNNs and timm models alike;
the target layer is found by running the model once and taking the last module whose
output is a spatial map at least ``MIN_CAM_SIDE`` (6) cells across (:func:`find_cam_layer`).

Why Grad-CAM by default: it is the best-studied method and cheap (one backward pass).
HiResCAM (``method="hirescam"``) multiplies gradients and activations element-wise before
summing over channels instead of averaging the gradients first; for networks that end in
global average pooling + one linear layer (every timm classifier and our small CNNs) it
is provably faithful to the score being explained, where Grad-CAM can highlight regions
the model did not use. Grad-CAM++ weights positive gradients to show several instances.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from facelab._io import write_bytes

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from facelab.detect import Face

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "hirescam", "gradcam++")
_ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "ELU", "Hardswish", "Mish", "Tanh", "Sigmoid",
                "PReLU", "Swish", "HardSwish")
MIN_CAM_SIDE = 6
"""Default CAM layer: the last one whose map is at least this many cells across, so that the
face box of an aligned crop (about half the crop's side) holds several cells."""
_POOLS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LPPool2d")


@dataclass
class ExplainConfig:
    """How to explain."""

    method: str = "gradcam"
    """CAM variant: gradcam, hirescam or gradcam++."""
    target: str | None = None
    """Label (class or attribute) to explain; None = the predicted class, or for multilabel
    the attribute with the highest probability."""
    layer: str | None = None
    """Module name (``model.named_modules()``) to explain at; None = the last one whose map is
    at least ``MIN_CAM_SIDE`` cells across (:func:`find_cam_layer`)."""
    aligned: bool = False
    """The photos are already aligned crops: skip face detection."""
    feature_maps: bool = True
    """Also draw feature maps of the first blocks and the first layer's filters (first photo)."""
    blocks: int = 3
    """Convolution blocks shown in the feature-map picture."""
    channels: int = 12
    """Channels shown per feature map."""
    alpha: float = 0.5
    """Opacity of the heat map over the photo."""

    def __post_init__(self) -> None:
        if self.method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {self.method!r}; valid: {', '.join(CAM_METHODS)}")
        if self.blocks < 1 or self.channels < 1 or not 0 < self.alpha <= 1:
            raise ValueError("blocks >= 1, channels >= 1 and 0 < alpha <= 1 are required")


@dataclass
class Explanation:
    """One explained face."""

    path: str
    label: str
    prob: float
    crop: np.ndarray
    cam: np.ndarray
    """Heat map over the crop, float32 in [0, 1], same height/width as ``crop``."""
    face: "Face | None" = None
    original: np.ndarray | None = None
    cam_original: np.ndarray | None = None
    """Heat map over the original photo (0 outside the crop's footprint)."""
    predicted: bool = True
    """The model decides for ``label`` on this face (its threshold / arg-max)."""


def _caption(e: Explanation, method: str) -> str:
    """What a heat map shows; an empty map says why it is empty."""
    if e.cam.max() > 0:
        return f"{method}: {e.label} {e.prob:.2f}"
    if not e.predicted:
        return f"no evidence for {e.label}"
    return f"{method} map empty at p={e.prob:.2f}" + (": try hirescam" if method != "hirescam" else "")


@dataclass
class ExplainResult:
    out: Path
    items: list[Explanation]
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- torch plumbing

def torch_net(predictor: Any) -> "torch.nn.Module":
    """The predictor's PyTorch module (a bundle with another backend cannot be explained)."""
    import torch

    for attr in ("model", "net", "module"):
        net = getattr(predictor, attr, None)
        if isinstance(net, torch.nn.Module):
            return net
    backend = predictor.bundle.get("model", {}).get("backend")
    raise ValueError(f"explain needs a PyTorch model; this bundle's backend is {backend!r} "
                     f"(explain the training run folder, not an ONNX export)")


def to_tensor(predictor: Any, crops: Sequence[np.ndarray], net: "torch.nn.Module") -> "torch.Tensor":
    """Crops -> the normalised input batch, exactly as the bundle prescribes (same resizing
    as training and ``predict_crops``: :func:`facelab.bundle.resize_crops`)."""
    import torch

    from facelab.bundle import resize_crops

    inp = predictor.bundle["input"]
    x = resize_crops(crops, int(inp["size"])).astype(np.float32) / 255
    x = (x - np.asarray(inp["mean"], np.float32)) / np.asarray(inp["std"], np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is not None and first.in_channels == 1 and t.shape[1] == 3:
        t = t.mean(1, keepdim=True)
    device = next(net.parameters()).device
    return t.to(device)


def _leaf_outputs(net: "torch.nn.Module", x: "torch.Tensor") -> list[tuple[str, str, Any]]:
    """(name, type, output) of every leaf module, in the order they ran."""
    import torch

    seen: list[tuple[str, str, Any]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.append((n, type(mod).__name__, o)))
               for name, m in net.named_modules() if not list(m.children())]
    inplace = _disable_inplace(net)  # else ReLU(inplace=True) overwrites the conv output we keep
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
    return seen


def _module_outputs(net: "torch.nn.Module", x: "torch.Tensor") -> list[tuple[str, Any]]:
    """(name, output) of every module but the root, in the order they FINISHED: a residual
    stage (e.g. ``blocks.4``) comes after its last leaf, with the skip connection added."""
    import torch

    seen: list[tuple[str, Any]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.append((n, o)))
               for name, m in net.named_modules() if name]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def find_cam_layer(net: "torch.nn.Module", x: "torch.Tensor", min_side: int = MIN_CAM_SIDE) -> str:
    """Name of the last module whose output is a spatial map at least ``min_side`` cells
    across (else the last one of at least 2x2).

    Why not simply the last spatial layer: at small inputs it is far too coarse for a face.
    EfficientNet-Lite0 at 96 px ends in a 3x3 map; the mouth of an aligned face (70 % down
    the crop) falls in the bottom row, whose centre (83 %) lies below the chin, so the peak
    misses the face box: bench/evaluate.py, EfficientNet-Lite0 trained on 16k CelebA photos,
    Grad-CAM for Smiling peaks inside the box on 7 % of uncropped photos at that 3x3 map
    (chance: 22 %) and on 68 % at the last 6x6 one.
    """
    import torch

    maps = [(n, min(o.shape[2:])) for n, o in _module_outputs(net, x[:1])
            if isinstance(o, torch.Tensor) and o.ndim == 4 and min(o.shape[2:]) >= 2]
    if not maps:
        raise ValueError("the model has no layer with a spatial output to explain")
    fine = [n for n, side in maps if side >= min_side]
    return fine[-1] if fine else maps[-1][0]


def target_index(task: Any, probs: np.ndarray, target: str | None) -> int:
    """Index into ``task.labels`` of the output to explain for one photo."""
    if target is not None:
        if target not in task.labels:
            raise ValueError(f"unknown target {target!r}; the model's labels are {', '.join(task.labels)}")
        return task.labels.index(target)
    if task.kind == "multilabel":
        return int(np.argmax(probs))
    return int(task.decide(probs[None])[0])


def _score(task: Any, logits: "torch.Tensor", index: Sequence[int]) -> "torch.Tensor":
    """The logit that ``index`` (into task.labels) stands for; binary negative = -logit."""
    import torch

    idx = torch.as_tensor(list(index), device=logits.device)
    if task.kind == "binary":
        sign = torch.where(idx == 1, 1.0, -1.0).to(logits.dtype)
        return (logits[:, 0] * sign).sum()
    return logits.gather(1, idx[:, None]).sum()


def class_activation_maps(predictor: Any, crops: Sequence[np.ndarray], index: Sequence[int],
                          method: str = "gradcam", layer: str | None = None) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] over each crop, for output ``index[i]`` of photo i. A map is all
    zero when nothing in the crop speaks FOR that output (the CAM keeps positive evidence only),
    e.g. Smiling on a straight face; with Grad-CAM, rarely, also when averaged gradients cancel
    although the score is high (HiResCAM does not average them)."""
    import torch
    import torch.nn.functional as F

    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    net = torch_net(predictor)
    net.eval()
    x = to_tensor(predictor, crops, net)
    layer = layer or find_cam_layer(net, x)
    modules = dict(net.named_modules())
    if layer not in modules:
        raise ValueError(f"unknown layer {layer!r}; e.g. {', '.join(list(modules)[-8:])}")
    store: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, out: "torch.Tensor") -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    inplace = _disable_inplace(net)
    handle = modules[layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = net(x.requires_grad_(True))
            net.zero_grad(set_to_none=True)
            _score(predictor.task, logits, index).backward()
    finally:
        handle.remove()
        for m in inplace:
            m.inplace = True
    a, g = store["act"].detach(), store["grad"].detach()
    cam = _combine(a, g, method)
    cam = F.interpolate(cam[:, None], size=crops[0].shape[:2], mode="bilinear", align_corners=False)[:, 0]
    return _normalise(cam.cpu().numpy())


def _combine(a: "torch.Tensor", g: "torch.Tensor", method: str) -> "torch.Tensor":
    """Activations (N, C, h, w) and their gradients -> the map (N, h, w), before ReLU/normalising."""
    if method == "hirescam":
        cam = (a * g).sum(1)
    elif method == "gradcam++":
        g2, g3 = g ** 2, g ** 3
        denom = 2 * g2 + (a.sum((2, 3), keepdim=True) * g3)
        alpha = g2 / denom.where(denom != 0, denom.new_ones(()))
        weights = (alpha * g.clamp(min=0)).sum((2, 3), keepdim=True)
        cam = (weights * a).sum(1)
    else:
        cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    return cam.clamp(min=0)


def _normalise(cam: np.ndarray) -> np.ndarray:
    out = np.zeros_like(cam, dtype=np.float32)
    for i, c in enumerate(cam):
        lo, hi = float(c.min()), float(c.max())
        out[i] = (c - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _disable_inplace(net: "torch.nn.Module") -> list[Any]:
    """In-place activations would overwrite the hooked activations; switch them off for now."""
    changed = [m for m in net.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    return changed


# --------------------------------------------------------------------------- back to the photo

def crop_transform(face: "Face", prepare: dict) -> np.ndarray:
    """The 2x3 matrix that took the original photo to the aligned crop (as align_face does)."""
    from facelab.align import similarity_transform, template_points
    from facelab.prepare import as_config

    c = as_config(prepare)
    return similarity_transform(face.landmarks, template_points(c.template, c.size, c.margin))


def to_original(cam: np.ndarray, face: "Face", prepare: dict, shape: tuple[int, ...]) -> np.ndarray:
    """The crop's heat map warped back onto the original photo of ``shape`` (0 outside the crop)."""
    import cv2

    from facelab.prepare import as_config

    size = as_config(prepare).size
    cam = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    inverse = cv2.invertAffineTransform(crop_transform(face, prepare))
    return cv2.warpAffine(cam, inverse, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` with the heat map (jet colours) blended in where the map is non-zero."""
    import cv2

    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    a = (alpha * np.clip(cam, 0, 1) ** 0.5)[..., None]
    return np.uint8(rgb * (1 - a) + heat * a)


def _draw_box(rgb: np.ndarray, face: "Face") -> np.ndarray:
    import cv2

    out = rgb.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 255), max(1, rgb.shape[1] // 300))
    return out


# --------------------------------------------------------------------------- does the map point at the face?

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
    from facelab.images import ImageError, read_image
    from facelab.prepare import FacePipeline

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


def pointing_game(predictor: Any, photos: Sequence[FacePhoto], target: str | None = None, method: str = "gradcam",
                  layer: str | None = None, batch: int = 32) -> PointingGame:
    """Explain ``target`` (None: each photo's prediction, as :func:`explain` does) on every
    photo and count the maps whose peak on the ORIGINAL photo (through :func:`to_original`)
    lies inside the detected face box."""
    if not photos:
        raise ValueError("pointing_game needs at least one photo with a face")
    prepare = predictor.bundle["prepare"]
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


def randomized(predictor: Any, seed: int = 0) -> Any:
    """A copy of ``predictor`` whose network has fresh random weights (same architecture and
    preprocessing): the "model randomisation" sanity check of Adebayo et al. (2018). Maps that
    look the same for it as for the trained model show the architecture, not what was learnt."""
    import torch

    from facelab.models import create_model

    model = predictor.bundle["model"]
    torch.manual_seed(seed)
    other = copy.copy(predictor)
    other.model = create_model(model["name"], predictor.task.num_outputs, pretrained=False,
                               **model.get("kwargs", {})).eval()
    return other


# --------------------------------------------------------------------------- inside the CNN

def feature_maps(predictor: Any, crop: np.ndarray, blocks: int = 3) -> list[tuple[str, np.ndarray]]:
    """For the first ``blocks`` convolutions: (caption, maps (C, h, w)) after the convolution,
    after its activation and after pooling (each where the network has one before the next
    convolution; functional activations inside ``forward`` have no module and are not seen)."""
    import torch

    net = torch_net(predictor)
    net.eval()
    run = _leaf_outputs(net, to_tensor(predictor, [crop], net))
    run = [(n, t, o) for n, t, o in run if isinstance(o, torch.Tensor) and o.ndim == 4]
    convs = [i for i, (_, t, _) in enumerate(run) if t == "Conv2d"][:blocks]
    out = []
    for k, i in enumerate(convs):
        end = next((j for j in range(i + 1, len(run)) if run[j][1] == "Conv2d"), len(run))
        out.append((f"block {k + 1} conv ({run[i][0]})", run[i][2][0].cpu().numpy()))
        for kinds, what in ((_ACTIVATIONS, "activation"), (_POOLS, "pool")):
            j = next((j for j in range(i + 1, end) if run[j][1] in kinds), None)
            if j is not None:
                out.append((f"block {k + 1} {what} {run[j][1]} ({run[j][0]})", run[j][2][0].cpu().numpy()))
    return out


def first_layer_filters(predictor: Any) -> np.ndarray:
    """The first convolution's kernels as images (O, k, k, 3) uint8 (one-channel kernels grey)."""
    import torch

    net = torch_net(predictor)
    conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise ValueError("the model has no convolution layer")
    w = conv.weight.detach().cpu().numpy()
    w = w if w.shape[1] == 3 else np.repeat(w.mean(1, keepdims=True), 3, axis=1)
    w = w.transpose(0, 2, 3, 1)
    lo, hi = w.min((1, 2, 3), keepdims=True), w.max((1, 2, 3), keepdims=True)
    return np.uint8(255 * (w - lo) / np.where(hi > lo, hi - lo, 1))


def _map_tile(m: np.ndarray, side: int = 64) -> np.ndarray:
    """One channel -> a grey tile, nearest-neighbour upscaled so small maps stay crisp."""
    lo, hi = float(m.min()), float(m.max())
    g = np.uint8(255 * (m - lo) / (hi - lo)) if hi > lo else np.zeros(m.shape, np.uint8)
    k = max(1, side // max(m.shape))
    return np.kron(g, np.ones((k, k), np.uint8))


def feature_map_grid(maps: list[tuple[str, np.ndarray]], channels: int) -> np.ndarray:
    """One row per stage, ``channels`` channels each; the row's caption under its first tile."""
    from facelab._html import image_grid

    images, captions = [], []
    for caption, m in maps:
        for c in range(channels):
            images.append(_map_tile(m[c]) if c < len(m) else None)
            captions.append(caption if c == 0 else f"ch {c}")
    return image_grid(images, captions, cols=channels, tile=72, caption_lines=3)


def filters_grid(filters: np.ndarray, limit: int = 64) -> np.ndarray:
    from facelab._html import image_grid

    tiles = [np.kron(f, np.ones((max(1, 48 // f.shape[0]),) * 2 + (1,), np.uint8)) for f in filters[:limit]]
    return image_grid(tiles, None, cols=16, tile=48)


# --------------------------------------------------------------------------- photos -> pictures

def explain(run: str | Path, images: Sequence[str | Path], out: str | Path | None = None,
            config: ExplainConfig | None = None, **overrides: Any) -> ExplainResult:
    """Explain ``run``'s predictions on ``images``; writes pictures and ``explain.html`` into
    ``out`` (default ``RUN/explain``). Photos without a face are skipped with a warning."""
    from facelab.bundle import load
    from facelab.evaluate import resolve_members

    config = config or ExplainConfig(**overrides)
    if not images:
        raise ValueError("no photos given: pass one or more image files to explain")
    members, _ = resolve_members(run)
    if len(members) > 1:
        raise ValueError(f"{run} is an ensemble; explain one member run at a time: {', '.join(map(str, members))}")
    predictor = load(members[0])
    out = Path(out) if out else members[0] / "explain"
    items = [e for p in _progress(images) if (e := explain_photo(predictor, p, config)) is not None]
    if not items:
        raise ValueError(f"none of the {len(images)} photo(s) could be explained (unreadable or no face found); "
                         f"pass --aligned if they are already face crops")
    files = _write_outputs(out, predictor, items, config)
    return ExplainResult(out, items, files)


def _progress(images: Sequence[str | Path]) -> Iterator[str | Path]:
    """The photos, with progress (a bar on a terminal, log lines otherwise) from 4 photos on."""
    from facelab._progress import progress

    with progress(len(images), "explain", enabled=len(images) >= 4) as bar:
        for image in images:
            yield image
            bar.update()


def explain_photo(predictor: Any, path: str | Path, config: ExplainConfig) -> Explanation | None:
    """One photo -> its explanation (the largest face), or None (logged) when impossible."""
    from facelab.images import ImageError, read_image

    try:
        rgb = read_image(path)
    except ImageError as exc:
        log.warning("explain: skipped %s", exc)
        return None
    prepare = predictor.bundle.get("prepare")
    face = None
    if config.aligned or not prepare:
        crop = rgb
    else:
        from facelab.prepare import FacePipeline

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


def _write_outputs(out: Path, predictor: Any, items: list[Explanation], config: ExplainConfig) -> dict[str, Path]:
    from facelab._html import image_grid, img_tag, png_bytes, write_page

    files: dict[str, Path] = {}
    sections = []
    for i, e in enumerate(items):
        panels = [e.crop, overlay(e.crop, e.cam, config.alpha)]
        if e.cam_original is not None:
            panels.append(_draw_box(overlay(e.original, e.cam_original, config.alpha), e.face))
        what = _caption(e, config.method)
        png = png_bytes(image_grid(panels, ["aligned crop", what, "on the photo"],
                                   cols=3, tile=256, caption_lines=1))
        files[f"cam_{i}"] = write_bytes(out / f"{i:03d}_{Path(e.path).stem}_{config.method}.png", png)
        sections.append((f"{Path(e.path).name}: {e.label} (p={e.prob:.2f})", img_tag(png, e.label)))
    if len(items) > 1:
        grid = png_bytes(image_grid([overlay(e.crop, e.cam, config.alpha) for e in items],
                                    [f"{e.label[:14]} {e.prob:.2f}" for e in items], cols=8, tile=128, caption_lines=1))
        files["grid"] = write_bytes(out / f"{config.method}_grid.png", grid)
        sections.insert(0, ("All photos", img_tag(grid, "grid")))
    if config.feature_maps:
        maps = png_bytes(feature_map_grid(feature_maps(predictor, items[0].crop, config.blocks), config.channels))
        filters = png_bytes(filters_grid(first_layer_filters(predictor)))
        files["feature_maps"] = write_bytes(out / "feature_maps.png", maps)
        files["filters"] = write_bytes(out / "filters.png", filters)
        sections += [(f"Feature maps of {Path(items[0].path).name}: after convolution, activation and pooling",
                      img_tag(maps, "feature maps")), ("First-layer filters", img_tag(filters, "filters"))]
    files["html"] = write_page(out / "explain.html", "facelab explain", sections,
                               f"<p>Model: {predictor.bundle.get('model', {}).get('name', '?')}; method: {config.method}</p>")
    return files
