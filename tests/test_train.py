"""facelab train: run folders, bundles, resume, splits, imbalance, CLI, on real photos."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facelab import backends as B
from facelab.images import read_image


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _crops(run: Path, n: int = 6) -> list[np.ndarray]:
    """The first validation crops the run trained on (cached aligned faces)."""
    from facelab.data import load_source
    from facelab.prepare import prepare_table

    cfg = json.loads((run / "config.json").read_text())
    bundle = json.loads((run / "bundle" / "bundle.json").read_text())
    table = load_source(cfg["data"])
    table = prepare_table(table.subset(range(n)), bundle["prepare"], progress=False)
    return [read_image(p) for p in table.paths]


@pytest.mark.parametrize("fixture,kind,labels", [
    ("celeba_run", "multilabel", ["Smiling", "Male", "Eyeglasses", "Young"]),
    ("binary_run", "binary", ["not_Smiling", "Smiling"]),
    ("orl_run", "multiclass", None),
])
def test_run_folder_matches_contract(fixture: str, kind: str, labels: list[str] | None,
                                     request: pytest.FixtureRequest) -> None:
    run: Path = request.getfixturevalue(fixture)
    for name in ("config.json", "metrics.csv", "labels.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "bundle/bundle.json", "bundle/weights.pt"):
        assert (run / name).is_file(), name
    bundle = json.loads((run / "bundle" / "bundle.json").read_text())
    assert bundle["format"] == 1 and bundle["model"]["backend"] == "torch"
    assert bundle["task"]["kind"] == kind
    if labels:
        assert bundle["task"]["labels"] == labels
    else:
        assert len(bundle["task"]["labels"]) == 40
    assert bundle["input"]["size"] == 32 and len(bundle["input"]["mean"]) == 3
    assert bundle["prepare"]["detector"]  # the face preparation travels with the model
    assert bundle["train"]["images_per_second"] > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "lenet5" and cfg["resolved"]["task"]["kind"] == kind
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_loss_falls(celeba_run: Path, orl_run: Path) -> None:
    for run in (celeba_run, orl_run):
        rows = _rows(run)
        assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), run


def test_bundle_reloads_and_predicts_same_numbers(celeba_run: Path) -> None:
    import torch

    from facelab.bundle import resize_crops
    from facelab.models import create_model

    predictor = B.load(celeba_run)
    crops = _crops(celeba_run)
    probs = predictor.predict_crops(crops)
    assert probs.dtype == np.float32 and probs.shape == (len(crops), 4)
    assert ((probs >= 0) & (probs <= 1)).all()
    # independently: the best checkpoint's weights, by hand
    model = create_model("lenet5", 4)
    model.load_state_dict(torch.load(celeba_run / "checkpoints" / "best.pt", weights_only=False)["model"])
    inp = predictor.bundle["input"]
    x = torch.from_numpy(resize_crops(crops, 32)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(inp["mean"]).view(1, 3, 1, 1)) / torch.tensor(inp["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # the same numbers through the bundle folder itself
    np.testing.assert_allclose(B.load(celeba_run / "bundle").predict_crops(crops), probs, atol=1e-6)


def test_predict_image_runs_face_preparation(binary_run: Path, celeba_wild: Path) -> None:
    predictor = B.load(binary_run)
    photo = sorted((celeba_wild / "img_celeba").iterdir())[0]
    faces = predictor.predict_image(photo)
    assert len(faces) >= 1
    f = faces[0]
    assert f.probs.shape == (2,) and abs(float(f.probs.sum()) - 1) < 1e-5
    assert f.crop.shape[2] == 3 and f.face.box[2] > f.face.box[0]


def test_backend_registry_errors(tmp_path: Path, celeba_run: Path) -> None:
    with pytest.raises(ValueError, match="valid: torch, onnx, auto"):
        B.load(celeba_run, backend="tensorflow")
    with pytest.raises(FileNotFoundError, match="no bundle.json"):
        B.load(tmp_path)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "facelab", "train", *args]


def test_kill_9_mid_epoch_loses_at_most_that_epoch(orl_faces: Path, tmp_path: Path) -> None:
    import torch

    from facelab.train import train

    common = ["--model", "lenet5", "--size", "32", "--epochs", "3", "--batch-size", "16", "--max-batches", "5",
              "--seed", "3", "--threads", "1", "--no-tensorboard"]
    env = {**os.environ, "FACELAB_LOG": "WARNING"}
    run = tmp_path / "r"
    last = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_cli(str(orl_faces), *common, "--out", str(tmp_path), "--name", "r"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # during epoch 2: its work is lost, epoch 1 is not
    proc.wait()
    saved = torch.load(last, weights_only=False)
    done = saved["state"]["epoch"]
    assert 1 <= done < 3 and not (run / "bundle" / "bundle.json").exists()
    first_rows = saved["state"]["history"]

    resumed = subprocess.run(_cli(str(orl_faces), *common, "--out", str(tmp_path), "--name", "r", "--resume"),
                             env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["train_loss"]) == pytest.approx(first_rows[0]["train_loss"], rel=1e-5)

    # the interrupted + resumed run ends exactly where an uninterrupted one does (--seed)
    threads = torch.get_num_threads()
    try:
        whole = train(orl_faces, model="lenet5", image_size=32, epochs=3, batch_size=16, max_batches=5, seed=3,
                      threads=1, tensorboard=False, progress=False, out=str(tmp_path), name="whole")
    finally:
        torch.set_num_threads(threads)
    a = torch.load(run / "bundle" / "weights.pt")
    b = torch.load(whole / "bundle" / "weights.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_bad_requests_are_specific(orl_faces: Path, celeba_mini: Path, celeba_run: Path) -> None:
    from facelab.data import DataError
    from facelab.errors import ConfigError, RunExists
    from facelab.train import TrainConfig, train

    with pytest.raises(DataError, match="Smilling.*valid names.*Smiling"):
        train(celeba_mini, attrs=["Smilling"], model="lenet5", out=str(celeba_run.parent), name="typo")
    with pytest.raises(RunExists, match="--resume"):
        train(orl_faces, model="lenet5", out=str(celeba_run.parent), name=celeba_run.name)
    with pytest.raises(ValueError, match="unknown model 'lenet6'"):
        TrainConfig(data=str(orl_faces), model="lenet6")
    with pytest.raises(ConfigError, match="schedule must be one of"):
        TrainConfig(data=str(orl_faces), schedule="linear")
    assert TrainConfig(data="x", model="lenet5").pretrained is False
    assert TrainConfig(data="x", model="mobilenetv2_100").pretrained is True


def test_splits_official_identity_disjoint_or_stratified(celeba_mini: Path, orl_faces: Path) -> None:
    from dataclasses import replace

    from facelab.data import DataError, load_source
    from facelab.tasks import infer_task
    from facelab.train import split_indices

    celeba = load_source(celeba_mini).select_attributes(["Smiling", "Eyeglasses"])
    task = infer_task(celeba)
    train, valid, how = split_indices(celeba, task, None, 0)
    assert how == "official partition" and (len(train), len(valid)) == (660, 120)
    with pytest.raises(DataError, match="official train/valid partition.*valid-fraction"):
        split_indices(celeba, task, 0.2, 0)  # refused, not silently ignored
    # no partition but known people: nobody is on both sides
    unsplit = replace(celeba, splits=[None] * len(celeba))
    train, valid, how = split_indices(unsplit, task, 0.2, 0)
    ids = np.array(celeba.identities)
    assert how.startswith("identity-disjoint") and not set(ids[train]) & set(ids[valid])
    assert 0.1 < len(valid) / len(celeba) < 0.35
    again = split_indices(unsplit, task, 0.2, 0)[1]
    assert np.array_equal(valid, again) and not np.array_equal(valid, split_indices(unsplit, task, 0.2, 1)[1])
    # people ARE the classes: every person on both sides, stratified
    orl = load_source(orl_faces)
    train, valid, how = split_indices(orl, infer_task(orl), 0.2, 0)
    assert how == "stratified"
    assert set(orl.labels[valid]) == set(orl.labels[train]) == set(range(40))
    assert len(valid) == 80


def test_imbalance_is_weighted_when_large_and_reported(celeba_mini: Path) -> None:
    import torch

    from facelab.data import load_source
    from facelab.tasks import infer_task, targets_from_table
    from facelab.train import class_balance

    table = load_source(celeba_mini).select_attributes(["Smiling", "Eyeglasses", "Bald"])
    task = infer_task(table)
    y = torch.from_numpy(targets_from_table(table, task))
    bal = class_balance(y, task, "auto", 10.0)
    w = bal.loss_weight.numpy()
    assert w[0] == 1.0 and w[1] > 2 and w[2] > w[1]  # Smiling is balanced; Bald is the rarest
    assert "Eyeglasses" in bal.report and "Bald" in bal.report and "Smiling" not in bal.report
    assert class_balance(y, task, "none", 10.0).loss_weight is None
    smiling = table.select_attributes(["Smiling"])
    btask = infer_task(smiling)
    off = class_balance(torch.from_numpy(targets_from_table(smiling, btask)), btask, "auto", 10.0)
    assert off.loss_weight is None and "off" in off.report
    over = class_balance(torch.from_numpy(targets_from_table(smiling, btask)), btask, "oversample", 10.0)
    assert over.sample_weight is not None and len(over.sample_weight) == len(smiling)


def test_augmentation_is_seeded_and_keeps_shape(celeba_mini: Path, tmp_path: Path) -> None:
    import torch

    from facelab.augment import augment_batch, get_preset, preview, preview_images

    crops = preview_images(celeba_mini, 2)
    x = torch.from_numpy(np.stack([c[:96, :96] for c in crops])).permute(0, 3, 1, 2).float() / 255
    cfg = get_preset("fastai")
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(augment_batch(x, get_preset("none"), torch.Generator()), x)
    with pytest.raises(ValueError, match="valid: none, light, fastai, strong"):
        get_preset("heavy")
    out = preview(crops, cfg, tmp_path / "grid.png", per_image=4, size=64)
    assert out.stat().st_size > 1000


def test_ensemble_members_and_manifest(orl_faces: Path, tmp_path: Path) -> None:
    from facelab.train import train

    root = train(orl_faces, model="lenet5", image_size=32, epochs=1, batch_size=32, max_batches=2, ensemble=2,
                 seed=5, progress=False, tensorboard=False, out=str(tmp_path), name="ens")
    manifest = json.loads((root / "ensemble.json").read_text())
    assert manifest["members"] == ["m0", "m1"]
    seeds = [json.loads((root / m / "config.json").read_text())["seed"] for m in manifest["members"]]
    assert seeds == [5, 6]
    a, b = (B.load(root / m) for m in manifest["members"])
    crops = _crops(root / "m0", 3)
    assert not np.allclose(a.predict_crops(crops), b.predict_crops(crops))


def test_weighted_attributes_decide_at_compensated_thresholds(celeba_run: Path) -> None:
    """pos_weight w shifts the sigmoid; the bundle's threshold w/(1+w) undoes it."""
    bundle = json.loads((celeba_run / "bundle" / "bundle.json").read_text())
    cfg = json.loads((celeba_run / "config.json").read_text())
    thresholds = dict(zip(bundle["task"]["labels"], bundle["task"]["thresholds"]))
    assert "Eyeglasses" in cfg["resolved"]["imbalance"]  # ~6 % positives in celeba-mini
    assert thresholds["Eyeglasses"] > 0.6
    assert thresholds["Smiling"] == 0.5 and thresholds["Male"] == 0.5


def test_bf16_autocast_on_a_cpu_trains_and_the_loss_falls(orl_faces: Path, tmp_path: Path) -> None:
    """The GPU path's mixed precision, run where it can be: bf16 autocast on a CPU."""
    import torch

    from facelab.train import train

    threads = torch.get_num_threads()
    try:
        run = train(orl_faces, model="lenet5", image_size=32, epochs=4, batch_size=16, max_batches=10, lr=5e-3,
                    amp=True, device="cpu", threads=1, augment="none", progress=False, tensorboard=False,
                    out=str(tmp_path), name="bf16")
    finally:
        torch.set_num_threads(threads)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["amp"] == "torch.bfloat16" and resolved["device"] == "cpu"
    losses = [float(r["train_loss"]) for r in _rows(run)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


def test_augmentation_draws_its_numbers_once_on_the_cpu(celeba_mini: Path) -> None:
    """One (N, DRAWS) draw from the CPU generator per batch: the same seed gives the same
    augmentation on any device, and a GPU batch costs one copy of its parameters."""
    import torch

    from facelab.augment import DRAWS, augment_batch, draw, get_preset

    x = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    augment_batch(x, get_preset("strong"), g)
    ref = torch.Generator().manual_seed(3)
    torch.rand((5, DRAWS), generator=ref)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))  # nothing else was drawn
    assert draw(5, torch.Generator().manual_seed(1)).shape == (5, DRAWS)


def test_trainers_are_a_registry() -> None:
    from facelab.errors import ConfigError
    from facelab.train import TRAINERS, get_trainer, train_classifier

    assert set(TRAINERS) == {"classifier", "face-embed"}
    assert get_trainer("classifier") is train_classifier
    assert get_trainer("face-embed").__name__ == "train_face_embed"
    with pytest.raises(ConfigError, match="unknown trainer 'svm'; valid: classifier, face-embed"):
        get_trainer("svm")


def test_bad_device_and_augment_options_are_config_errors() -> None:
    import torch

    from facelab.augment import get_preset
    from facelab.bundle.spec import InputSpec
    from facelab.errors import ConfigError
    from facelab.train import TrainConfig, make_runtime

    with pytest.raises(ConfigError, match="unknown augmentation option.*max_rotat.*valid: flip"):
        get_preset("fastai", max_rotat=5)
    with pytest.raises(ConfigError, match="max_zoom must be >= 1.0"):
        get_preset("fastai", max_zoom=0.5)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
            make_runtime(TrainConfig(data="x", model="lenet5", device="cuda"), InputSpec(32))
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        make_runtime(TrainConfig(data="x", model="lenet5", device="tpu9"), InputSpec(32))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_cuda_path_amp_pinned_copies_and_device_augmentation(orl_faces: Path, tmp_path: Path) -> None:
    """--device cuda: AMP (bf16 where the GPU has it, else fp16 + GradScaler), channels_last,
    pinned non-blocking copies from memory and from a crop store, augmentation on the device
    without host syncs and equal to the CPU's for the same seed."""
    import torch

    from facelab.augment import augment_batch, get_preset
    from facelab.bundle.spec import InputSpec
    from facelab.train import Runtime, train
    from facelab.train.runtime import amp_dtype

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = get_preset("strong")
    cpu = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    gpu = augment_batch(x.cuda(), cfg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
    rt = Runtime(torch.device("cuda"), InputSpec(32), torch.bfloat16, True)
    xb = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    torch.cuda.set_sync_debug_mode("error")  # any host<->device synchronisation raises
    try:
        batch = rt.to_input(rt.gather(xb, torch.arange(8)), cfg, torch.Generator().manual_seed(5))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.is_cuda and batch.is_contiguous(memory_format=torch.channels_last)
    for loader, workers in (("memory", None), ("stream", 0), ("stream", 2)):
        run = train(orl_faces, model="lenet5", image_size=32, epochs=3, batch_size=32, lr=5e-3, device="cuda",
                    loader=loader, loader_workers=workers, shard_rows=64, progress=False, tensorboard=False,
                    out=str(tmp_path), name=f"cuda-{loader}-{workers}")
        resolved = json.loads((run / "config.json").read_text())["resolved"]
        assert resolved["device"].startswith("cuda") and resolved["amp"] == str(amp_dtype(torch.device("cuda")))
        losses = [float(r["train_loss"]) for r in _rows(run)]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], (loader, losses)
        assert B.load(run).predict_crops([np.full((32, 32, 3), 128, np.uint8)]).shape == (1, 40)
