"""Class-activation maps: Grad-CAM (default), HiResCAM or Grad-CAM++ for a chosen output,
computed on the aligned crop at the model's input size.

Why Grad-CAM by default: it is the best-studied method and cheap (one backward pass).
HiResCAM (``method="hirescam"``) multiplies gradients and activations element-wise before
summing over channels instead of averaging the gradients first; for networks that end in
global average pooling + one linear layer (every timm classifier and our small CNNs) it
is provably faithful to the score being explained, where Grad-CAM can highlight regions
the model did not use. Grad-CAM++ weights positive gradients to show several instances.

Why not the ``grad-cam`` package (pytorch_grad_cam 1.5.7), measured 2026-12-01 on the
smiling-vgg run of tests/test_explain.py (smallvgg, 32 px, 160 real faces) with our layer,
batch and in-place handling around it: its maps are ours up to interpolation (per-map
correlation 0.9996 / 0.9991 / 0.9957 mean for gradcam / hirescam / gradcam++, >= 0.996 on
a lenet5 and an EfficientNet-Lite0 too; pointing game 0.819 for both with Grad-CAM, 0.900
vs 0.919 HiResCAM, 0.794 vs 0.825 Grad-CAM++: it resizes each map to the 32 px input and
then we to the crop) and computing them takes the same time (0.84-0.98x). But importing it
costs 3.1-3.6 s on this machine (its ``__init__`` imports every CAM method, hence
torchvision 1.7 s, scikit-learn 1.3 s, scipy, matplotlib, ttach), while ``facelab explain``
on 3 photos takes 2.5 s in all, imports included: 2.2x slower, far over the 20 % allowed
(timed under /tmp/cpu, load average 2.3-2.6 on 2 cores). It would also replace only the
hook and :func:`_combine` (the layer search, in-place switch, batch and resize stay ours),
and its CAM object's ``__exit__`` swallows an IndexError with a print. So: ours.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from facelab.bundle import Predictor
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


def class_activation_maps(predictor: Predictor, crops: Sequence[np.ndarray], index: Sequence[int],
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
