"""What the network looks at: class-activation maps and the classic "inside the CNN" pictures.

* :func:`class_activation_maps` (``cam``): Grad-CAM (default), HiResCAM or Grad-CAM++ for a
  chosen output, computed on the aligned crop at the model's input size.
* :func:`to_original` (``geometry``): the map carried back onto the ORIGINAL photo through
  the inverse of the alignment transform.
* :func:`pointing_game`, :func:`randomized` (``pointing``): does the map point at the face,
  more often than chance and than the same network with random weights?
* :func:`feature_maps`, :func:`first_layer_filters` (``features``): inside the CNN.
* :func:`explain` (``run``): photos in, pictures and one self-contained ``explain.html``
  (``render``) out.

Works on any PyTorch predictor (``facelab.load``): from-scratch CNNs and timm models alike;
the target layer is found by running the model once and taking the last module whose
output is a spatial map at least ``MIN_CAM_SIDE`` (6) cells across (:func:`find_cam_layer`,
``hooks``).
"""
from __future__ import annotations

from facelab.explain.cam import class_activation_maps, target_index
from facelab.explain.config import CAM_METHODS, MIN_CAM_SIDE, ExplainConfig, Explanation, ExplainResult
from facelab.explain.features import feature_maps, first_layer_filters
from facelab.explain.geometry import crop_transform, to_original
from facelab.explain.hooks import find_cam_layer, to_tensor, torch_net
from facelab.explain.pointing import FacePhoto, PointingGame, face_photos, pointing_game, randomized
from facelab.explain.render import _caption, feature_map_grid, filters_grid, overlay
from facelab.explain.run import explain, explain_photo

__all__ = ["CAM_METHODS", "MIN_CAM_SIDE", "ExplainConfig", "Explanation", "ExplainResult", "FacePhoto", "PointingGame",
           "class_activation_maps", "crop_transform", "explain", "explain_photo", "face_photos", "feature_map_grid",
           "feature_maps", "filters_grid", "find_cam_layer", "first_layer_filters", "overlay", "pointing_game",
           "randomized", "target_index", "to_original", "to_tensor", "torch_net", "_caption"]
