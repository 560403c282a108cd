"""``facelab export`` of a face-embed run: the logreg head as ONNX (the dlib embedding is
not exportable)."""
from __future__ import annotations

from pathlib import Path

from facelab._io import atomic_path
from facelab.bundle import read_bundle
from facelab.errors import ConfigError
from facelab.people.model import _load_head


def export_onnx(bundle_dir: str | Path, out_path: str | Path) -> Path:
    """Export the logreg head as ONNX: input ``embedding`` float32 (N, 128) -> output
    ``probs`` float32 (N, L).

    The embedding itself stays dlib (not ONNX-exportable): an ONNX runtime must compute
    dlib descriptors first (``facelab.embed.embed_crops``). The knn head and the open-set
    rule (``bundle.json["open_set"]``) need the gallery and are not in the graph.
    """
    import torch

    bdir, bundle = read_bundle(bundle_dir)
    m = bundle["model"]
    if m.get("head") != "logreg":
        raise ConfigError(f"{bdir}: ONNX export supports the logreg head only (this run uses "
                         f"{m.get('head')!r}); retrain with head=logreg or predict with `facelab predict`")
    weight, bias = _load_head(bdir / m["files"]["head"])
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    net = torch.nn.Sequential(layer, torch.nn.Softmax(dim=1)).eval()
    with atomic_path(out_path) as tmp:
        torch.onnx.export(net, (torch.zeros(1, weight.shape[1]),), str(tmp), input_names=["embedding"],
                          output_names=["probs"], dynamic_axes={"embedding": {0: "n"}, "probs": {0: "n"}},
                          opset_version=17, dynamo=False)
    return Path(out_path)
