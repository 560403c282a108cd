"""Inside the CNN: for the first convolution blocks, the maps after the convolution, after
its activation and after pooling; and the first layer's filters as images."""
from __future__ import annotations


import numpy as np

from facelab.bundle import Predictor
from facelab.errors import ConfigError
from facelab.explain.hooks import leaf_outputs, to_tensor, torch_net

_ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "ELU", "Hardswish", "Mish", "Tanh", "Sigmoid",
                "PReLU", "Swish", "HardSwish")
_POOLS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LPPool2d")


def feature_maps(predictor: Predictor, crop: np.ndarray, blocks: int = 3) -> list[tuple[str, np.ndarray]]:
    """For the first ``blocks`` convolutions: (caption, maps (C, h, w)) after the convolution,
    after its activation and after pooling (each where the network has one before the next
    convolution; functional activations inside ``forward`` have no module and are not seen)."""
    import torch

    net = torch_net(predictor)
    net.eval()
    run = leaf_outputs(net, to_tensor(predictor, [crop], net))
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


def first_layer_filters(predictor: Predictor) -> np.ndarray:
    """The first convolution's kernels as images (O, k, k, 3) uint8 (one-channel kernels grey)."""
    import torch

    net = torch_net(predictor)
    conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise ConfigError("the model has no convolution layer; explain needs a CNN")
    w = conv.weight.detach().cpu().numpy()
    w = w if w.shape[1] == 3 else np.repeat(w.mean(1, keepdims=True), 3, axis=1)
    w = w.transpose(0, 2, 3, 1)
    lo, hi = w.min((1, 2, 3), keepdims=True), w.max((1, 2, 3), keepdims=True)
    return (255 * (w - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.uint8)
