"""Class-activation maps: Grad-CAM (default), HiResCAM or Grad-CAM++ for a chosen output,
computed on the aligned crop at the model's input size.

Why Grad-CAM by default: it is the best-studied method and cheap (one backward pass).
HiResCAM (``method="hirescam"``) multiplies gradients and activations element-wise before
summing over channels instead of averaging the gradients first; for networks that end in
global average pooling + one linear layer (every timm classifier and our small CNNs) it
is provably faithful to the score being explained, where Grad-CAM can highlight regions
the model did not use. Grad-CAM++ weights positive gradients to show several instances.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.errors import ConfigError
from facelab.explain.config import CAM_METHODS
from facelab.explain.hooks import disable_inplace, find_cam_layer, to_tensor, torch_net

if TYPE_CHECKING:  # pragma: no cover
    import torch


def target_index(task: Any, probs: np.ndarray, target: str | None) -> int:
    """Index into ``task.labels`` of the output to explain for one photo."""
    if target is not None:
        if target not in task.labels:
            raise ConfigError(f"unknown target {target!r}; the model's labels are {', '.join(task.labels)}")
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
        raise ConfigError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    net = torch_net(predictor)
    net.eval()
    x = to_tensor(predictor, crops, net)
    layer = layer or find_cam_layer(net, x)
    modules = dict(net.named_modules())
    if layer not in modules:
        raise ConfigError(f"unknown layer {layer!r}; e.g. {', '.join(list(modules)[-8:])}")
    store: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, out: "torch.Tensor") -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    inplace = disable_inplace(net)
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
