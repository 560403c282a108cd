"""The exported graph: uint8 NHWC crops -> the bundle's InputSpec -> the net -> probabilities,
written by the TorchScript exporter with facelab's metadata inside, and checked against
PyTorch (parity)."""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from facelab._deps import require
from facelab.errors import ConfigError, DataError

ONNX_FILE = "model.onnx"
META_KEY = "facelab_bundle"
#: Bump when the exported graph's layout changes (invalidates cached exports).
EXPORT_VERSION = 2  # 2: the first layer is the InputSpec module (scale to [0, 1], then normalise)


# --------------------------------------------------------------------------- bundles

def weights_digest(bundle_dir: Path, bundle: dict) -> str:
    """Hash of what the export depends on: the weights file and the bundle's model/task/input."""
    h = hashlib.sha256()
    weights = bundle_dir / bundle["model"].get("weights", "weights.pt")
    if weights.is_file():
        with open(weights, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    keys = {k: bundle.get(k) for k in ("model", "task", "input")}
    h.update(json.dumps({"v": EXPORT_VERSION, **keys}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- the graph

def _export_module(predictor: Any) -> "Any":
    """uint8 NHWC crops -> probabilities, as one torch module: the bundle's InputSpec as the
    first layer (the same preprocessing as training and every predictor), the net, activate."""
    import torch

    net = _torch_net(predictor)
    preprocess = predictor.spec.module()
    task = predictor.task

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.preprocess = preprocess
            self.net = net

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return task.activate(self.net(self.preprocess(crops)))

    return Exported().eval().cpu()


def _sliced_adaptive_avg_pool(x: Any, output_size: Any, exact: Any) -> Any:
    """``adaptive_avg_pool2d`` written as fixed slices and means. The ONNX exporter refuses
    the real one when the output size does not divide the input size (LeNet-5's 13x13 -> 5x5
    at 64 px; timm's VGG head upsampling a 5x5 map to 7x7 below 224 px); the result is the
    same numbers. ``exact`` is the real function, used where the sizes divide."""
    import torch

    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (int(s) if s is not None else d for s, d in zip(size, (h, w)))
    if h % oh == 0 and w % ow == 0:
        return exact(x, (oh, ow))
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = [x[..., r0:r1, (j * w) // ow:-((-(j + 1) * w) // ow)].mean(dim=(-2, -1)) for j in range(ow)]
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


@contextlib.contextmanager
def _exportable_pools() -> Iterator[None]:
    """While exporting, every adaptive average pool (module or functional call) is traced as
    :func:`_sliced_adaptive_avg_pool`."""
    import torch.nn.functional as F  # noqa: N812

    exact = F.adaptive_avg_pool2d
    F.adaptive_avg_pool2d = functools.partial(_sliced_adaptive_avg_pool, exact=exact)
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = exact


def _torch_net(predictor: Any) -> "Any":
    import torch

    for attr in ("model", "net", "module"):
        net = getattr(predictor, attr, None)
        if isinstance(net, torch.nn.Module):
            return net
    raise ConfigError(f"cannot export backend {predictor.info.model.backend!r}: the "
                     f"predictor has no PyTorch module")


def _onnx_bytes(module: Any, size: int, opset: int) -> bytes:
    import torch

    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _exportable_pools():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example,), buf,  # type: ignore[arg-type]  # a file object is fine
                          input_names=["crops"], output_names=["probs"],
                          dynamic_axes={"crops": {0: "n"}, "probs": {0: "n"}}, opset_version=opset,
                          dynamo=False)
    return buf.getvalue()


def _with_metadata(data: bytes, meta: dict) -> bytes:
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    model.doc_string = "facelab face classifier: uint8 NHWC RGB aligned crops -> probabilities"
    return model.SerializeToString()


def onnx_bundle(bundle: dict, digest: str, file: str = ONNX_FILE) -> dict:
    """The bundle dict of the ONNX model: same task/input/prepare, backend ``onnx``."""
    out = copy.deepcopy(bundle)
    out["model"] = {"backend": "onnx", "file": file, "input_layout": "NHWC uint8 RGB",
                    "source": bundle["model"], "source_digest": digest}
    return out


def read_metadata(path: str | Path) -> dict:
    """The facelab bundle dict stored inside an exported ONNX file."""
    onnx = require("onnx", "onnx", "reading ONNX metadata")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise DataError(f"{path}: not a facelab export (no {META_KEY!r} metadata); export it with "
                         f"`facelab export RUN`")
    return json.loads(props[META_KEY])


# --------------------------------------------------------------------------- parity

def parity_inputs(predictor: Any, n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random RGB crops at the model's input size to compare backends on (the tests also
    compare the backends on real face crops)."""
    size = predictor.spec.size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    import cv2

    return np.stack([cv2.resize(b, (size, size), interpolation=cv2.INTER_CUBIC) for b in base]).clip(
        0, 255).astype(np.uint8)


def max_abs_diff(module: Any, session: Any, crops: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        ref = module(torch.from_numpy(crops)).numpy()
    got = session.run(None, {"crops": crops})[0]
    return float(np.abs(ref - got).max())


def export_bytes(predictor: Any, bdir: Path, opset: int = 17, tolerance: float = 1e-4) -> tuple[bytes, float]:
    """The ONNX model (with metadata) of a torch predictor and its parity max abs diff."""
    ort = require("onnxruntime", "onnxruntime", "running ONNX models")
    module = _export_module(predictor)
    size = predictor.spec.size
    raw = _onnx_bytes(module, size, opset)
    digest = weights_digest(bdir, predictor.bundle)
    data = _with_metadata(raw, {META_KEY: onnx_bundle(predictor.bundle, digest),
                                "facelab_digest": digest, "facelab_export_version": str(EXPORT_VERSION)})
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diff = max_abs_diff(module, session, parity_inputs(predictor))
    if not diff <= tolerance:
        raise ConfigError(f"{bdir}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); "
                         f"not exporting. Try another --opset, or predict with --backend torch")
    return data, diff


def export_digest(path: Path) -> str:
    try:
        onnx = require("onnx", "onnx", "reading ONNX metadata")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return props.get("facelab_digest", "")
    except Exception:  # noqa: BLE001 - unreadable file = stale
        return ""
