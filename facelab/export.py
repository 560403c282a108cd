"""ONNX export of a run's model, and the ``onnx`` backend that runs it with ONNX Runtime.

The exported graph is self-contained: it takes aligned face crops as **uint8 NHWC**
(N, size, size, 3) RGB, normalises them with the bundle's mean/std, runs the network and
applies :meth:`facelab.tasks.Task.activate`, so it outputs probabilities (N, len(labels)).
Everything else a user needs (labels, task, thresholds, input size, mean/std, face
preparation) travels *inside* the ONNX file (``metadata_props["facelab_bundle"]``) and,
for a stand-alone export folder, beside it as ``bundle.json`` with backend ``"onnx"``, so
``facelab.load(folder)`` works without PyTorch.

``export()`` checks parity against PyTorch on real-shaped inputs and refuses to write a
model whose max absolute difference is above ``tolerance`` (1e-4 in float32).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from facelab._deps import require
from facelab._io import read_json, write_bytes, write_json
from facelab.bundle import Bundle, Predictor, TorchPredictor, read_bundle
from facelab.errors import ConfigError, DataError, NotFound
from facelab.people import export_onnx as export_face_embed_head
from facelab.prepare import default_cache_dir

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
META_KEY = "facelab_bundle"
#: Bump when the exported graph's layout changes (invalidates on-the-fly export caches).
EXPORT_VERSION = 2  # 2: the first layer is the InputSpec module (scale to [0, 1], then normalise)
FORMATS = ("onnx",)


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


# --------------------------------------------------------------------------- export()

@dataclass
class ExportReport:
    """What ``export()`` wrote and how close ONNX Runtime is to PyTorch."""

    path: str
    """The ONNX file."""
    bundle: str
    """The bundle.json beside it (stand-alone exports), or "" when written into the run."""
    max_abs_diff: float
    """Max |PyTorch - ONNX Runtime| over the parity inputs (probabilities)."""
    tolerance: float
    opset: int
    size_bytes: int
    seconds: float
    backend: str
    """The run's backend (``torch`` or ``face-embed``)."""
    note: str = ""

    def summary(self) -> str:
        lines = [f"exported {self.backend} model -> {self.path} ({self.size_bytes / 1e6:.1f} MB, "
                 f"opset {self.opset}, {self.seconds:.1f} s)"]
        if self.max_abs_diff == self.max_abs_diff:  # not NaN
            lines.append(f"parity vs PyTorch: max abs diff {self.max_abs_diff:.2e} "
                         f"(tolerance {self.tolerance:.0e}) OK")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def export(run: str | Path, out: str | Path | None = None, format: str = "onnx", opset: int = 17,
           tolerance: float = 1e-4) -> ExportReport:
    """Export the run's model to ONNX with its metadata, after a parity check.

    Args:
        run: run folder or bundle folder.
        out: a folder for a stand-alone ONNX bundle (``model.onnx`` + ``bundle.json``), or a
            ``.onnx`` path; default: ``model.onnx`` inside the run's bundle folder.
        format: only ``onnx``.
        opset: ONNX opset.
        tolerance: max allowed absolute difference of the probabilities vs PyTorch.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    bdir, bundle = read_bundle(run)
    backend = bundle["model"].get("backend", "torch")
    target, bundle_json = _targets(bdir, out)
    if backend == "face-embed":
        return _export_face_embed(bdir, target, t0)
    if backend != "torch":
        raise ConfigError(f"{bdir}: the model is already a {backend!r} export; export its source run")
    predictor = TorchPredictor.from_bundle(bdir, bundle, device="cpu")
    data, diff = export_bytes(predictor, bdir, opset, tolerance)
    write_bytes(target, data)
    _fill_cache(weights_digest(bdir, bundle), data)
    if bundle_json:
        write_json(bundle_json, onnx_bundle(bundle, weights_digest(bdir, bundle), target.name))
    report = ExportReport(str(target), str(bundle_json or ""), diff, tolerance, opset, len(data),
                          time.perf_counter() - t0, backend)
    write_json(target.with_suffix(".export.json"), asdict(report))
    log.debug("%s", report.summary())
    return report


def _fill_cache(digest: str, data: bytes) -> None:
    """Keep a copy where predict/serve look for on-the-fly exports (saves a re-export)."""
    try:
        write_bytes(cache_path(digest), data)
    except OSError as exc:  # a read-only cache is not a reason to fail the export
        log.debug("could not cache the export: %s", exc)


def _targets(bdir: Path, out: str | Path | None) -> tuple[Path, Path | None]:
    if out is None:
        return bdir / ONNX_FILE, None
    out = Path(out).expanduser()
    if out.suffix == ".onnx":
        return out, None
    return out / ONNX_FILE, out / "bundle.json"


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


def _export_face_embed(bdir: Path, target: Path, t0: float) -> ExportReport:
    """face-embed runs: the people stage decides what export means (the identity head)."""
    path = Path(export_face_embed_head(bdir, target))
    return ExportReport(str(path), "", float("nan"), 0.0, 17, path.stat().st_size, time.perf_counter() - t0,
                        "face-embed", note="face-embed: the ONNX file holds the identity head only (input: "
                                           "128-d dlib embeddings); predict and serve keep using dlib + "
                                           "the gallery for this run")


# --------------------------------------------------------------------------- the onnx backend

def _session(model: bytes | str, threads: int = 0) -> Any:
    ort = require("onnxruntime", "onnxruntime", "running ONNX models")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # No busy-waiting between calls: on a few shared cores the spinning threads would take
    # the CPU from face detection running beside the model.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=_providers(ort))


def _providers(ort: Any) -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present, otherwise CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have] or have


class OnnxPredictor(Predictor):
    """The ``onnx`` backend: the exported graph (preprocessing included) run by ONNX Runtime."""

    backend = "onnx"

    def __init__(self, session: Any, bundle: Bundle | dict, bundle_dir: Path | None = None) -> None:
        super().__init__(bundle, bundle_dir)
        self.session = session

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, bundle_dict: dict | None = None, threads: int = 0) -> "OnnxPredictor":
        """Load ``bundle_dir/<model.file>`` (an export folder, backend ``onnx``)."""
        bundle_dir = Path(bundle_dir)
        bundle = bundle_dict if bundle_dict is not None else read_json(bundle_dir / "bundle.json")
        path = bundle_dir / bundle["model"].get("file", ONNX_FILE)
        if not path.is_file():
            raise NotFound(f"{path}: ONNX file missing; run `facelab export` again")
        return cls(_session(str(path), threads), bundle, bundle_dir)

    @classmethod
    def from_file(cls, path: str | Path, threads: int = 0) -> "OnnxPredictor":
        """Load any ``.onnx`` written by :func:`export` (metadata read from inside the file)."""
        path = Path(path)
        return cls(_session(str(path), threads), read_metadata(path), path.parent)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.asarray(self.session.run(None, {"crops": self.spec.batch(crops)})[0], dtype=np.float32)


# --------------------------------------------------------------------------- auto backend

def cached_export(info: Bundle, create: bool = False) -> Path | None:
    """An ONNX export matching the run's weights: ``bundle/model.onnx`` (``facelab export``),
    else one in the cache (``$FACELAB_CACHE/onnx``); with ``create`` (the caller asked for
    ONNX) one is exported into the cache now. None when there is none (or the export fails)."""
    assert info.dir is not None
    bundle = info.to_dict()
    digest = weights_digest(info.dir, bundle)
    own = info.dir / ONNX_FILE
    if own.is_file() and export_digest(own) == digest:
        return own
    cached = cache_path(digest)
    if cached.is_file() or not create:
        return cached if cached.is_file() else None
    try:
        data, diff = export_bytes(TorchPredictor.from_bundle(info.dir, bundle, device="cpu"), info.dir)
    except Exception as exc:  # noqa: BLE001 - reported to the caller as "could not export"
        log.warning("%s: ONNX export failed (%s)", info.dir, str(exc).splitlines()[0][:300])
        return None
    log.info("%s: exported to ONNX (parity %.1e) -> %s", info.dir, diff, cached)
    return write_bytes(cached, data)


def cache_path(digest: str) -> Path:
    """Where on-the-fly exports live: ``$FACELAB_CACHE/onnx/<digest>.onnx``."""
    return default_cache_dir() / "onnx" / f"{digest}.onnx"


def export_digest(path: Path) -> str:
    try:
        onnx = require("onnx", "onnx", "reading ONNX metadata")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return props.get("facelab_digest", "")
    except Exception:  # noqa: BLE001 - unreadable file = stale
        return ""
