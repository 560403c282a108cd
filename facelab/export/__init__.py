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

from facelab.export.backend import OnnxPredictor, cache_path, cached_export
from facelab.export.graph import (EXPORT_VERSION, META_KEY, ONNX_FILE, export_bytes, export_digest, max_abs_diff,
                                  onnx_bundle, parity_inputs, read_metadata, weights_digest)
from facelab.export.run import FORMATS, ExportReport, export

__all__ = ["EXPORT_VERSION", "FORMATS", "META_KEY", "ONNX_FILE", "ExportReport", "OnnxPredictor", "cache_path",
           "cached_export", "export", "export_bytes", "export_digest", "max_abs_diff", "onnx_bundle", "parity_inputs",
           "read_metadata", "weights_digest"]
