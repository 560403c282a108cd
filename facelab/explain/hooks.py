"""The PyTorch plumbing explain needs: the predictor's network, its input batch, every
module's output from one hooked forward pass, and the default layer to explain at."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.bundle import Predictor
from facelab.errors import ConfigError
from facelab.explain.config import MIN_CAM_SIDE

if TYPE_CHECKING:  # pragma: no cover
    import torch


def torch_net(predictor: Predictor) -> "torch.nn.Module":
    """The predictor's PyTorch module (a bundle with another backend cannot be explained)."""
    import torch

    for attr in ("model", "net", "module"):
        net = getattr(predictor, attr, None)
        if isinstance(net, torch.nn.Module):
            return net
    backend = predictor.info.model.backend
    raise ConfigError(f"explain needs a PyTorch model; this bundle's backend is {backend!r} "
                     f"(explain the training run folder, not an ONNX export)")


def to_tensor(predictor: Predictor, crops: Sequence[np.ndarray], net: "torch.nn.Module") -> "torch.Tensor":
    """Crops -> the network's input batch on its device, through the bundle's
    :class:`~facelab.bundle.InputSpec` (the one preprocessing training and every predictor
    use). Every network of facelab.models takes RGB, so there is no one-channel case."""
    spec = predictor.spec
    return spec.preprocess(spec.batch(crops), next(net.parameters()).device)


def _hooked_forward(net: "torch.nn.Module", x: "torch.Tensor", modules: list[tuple[str, Any]],
                    keep_inplace: bool = True) -> list[tuple[str, Any, Any]]:
    """(name, module, output) of each of ``modules`` in the order their forward passes
    FINISHED, from one no-grad forward pass of ``net`` (hooks removed afterwards).
    ``keep_inplace=False`` turns in-place activations off meanwhile, so an output kept here
    is not overwritten by the ReLU after it."""
    import torch

    seen: list[tuple[str, Any, Any]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.append((n, mod, o))) for name, m in modules]
    inplace = [] if keep_inplace else disable_inplace(net)
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
    return seen


def leaf_outputs(net: "torch.nn.Module", x: "torch.Tensor") -> list[tuple[str, str, Any]]:
    """(name, type, output) of every leaf module, in the order they ran."""
    leaves = [(name, m) for name, m in net.named_modules() if not list(m.children())]
    return [(n, type(m).__name__, o) for n, m, o in _hooked_forward(net, x, leaves, keep_inplace=False)]


def module_outputs(net: "torch.nn.Module", x: "torch.Tensor") -> list[tuple[str, Any]]:
    """(name, output) of every module but the root, in the order they FINISHED: a residual
    stage (e.g. ``blocks.4``) comes after its last leaf, with the skip connection added."""
    named = [(name, m) for name, m in net.named_modules() if name]
    return [(n, o) for n, _, o in _hooked_forward(net, x, named)]


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

    maps = [(n, min(o.shape[2:])) for n, o in module_outputs(net, x[:1])
            if isinstance(o, torch.Tensor) and o.ndim == 4 and min(o.shape[2:]) >= 2]
    if not maps:
        raise ConfigError("the model has no layer with a spatial output to explain; explain needs a CNN")
    fine = [n for n, side in maps if side >= min_side]
    return fine[-1] if fine else maps[-1][0]


def disable_inplace(net: "torch.nn.Module") -> list[Any]:
    """In-place activations would overwrite the hooked activations; switch them off for now."""
    changed: list[Any] = [m for m in net.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    return changed
