"""``facelab export``: a run's model to ONNX, after a parity check, with its report."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from facelab._io import write_bytes, write_json
from facelab.bundle import TorchPredictor, read_bundle
from facelab.errors import ConfigError
from facelab.export.backend import cache_path
from facelab.export.graph import ONNX_FILE, export_bytes, onnx_bundle, weights_digest
from facelab.people import export_onnx as export_face_embed_head

log = logging.getLogger(__name__)

FORMATS = ("onnx",)


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
    """Keep a copy in the export cache, where predict/serve look for an up-to-date export."""
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


def _export_face_embed(bdir: Path, target: Path, t0: float) -> ExportReport:
    """face-embed runs: the people stage decides what export means (the identity head)."""
    path = Path(export_face_embed_head(bdir, target))
    return ExportReport(str(path), "", float("nan"), 0.0, 17, path.stat().st_size, time.perf_counter() - t0,
                        "face-embed", note="face-embed: the ONNX file holds the identity head only (input: "
                                           "128-d dlib embeddings); predict and serve keep using dlib + "
                                           "the gallery for this run")
