"""Training a face-embed run: embed the people's photos, measure held-out accuracy, put
every photo in the gallery, calibrate the threshold, write the run folder and its bundle."""
from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._io import write_json, write_text
from facelab.bundle.spec import InputSpec
from facelab.data import SampleTable
from facelab.embed import EMBEDDING_DIM, EMBEDDING_ID, embed_paths, identity_prepare, template_landmarks
from facelab.errors import DataError, RunExists
from facelab.people.calibration import (
    SCORE_TEXT,
    Calibration,
    _calibration_fields,
    _save_calibration_plot,
    calibrate_threshold,
    open_set_scores,
    pair_scores,
)
from facelab.people.config import BACKEND, BUNDLE_DIR, UNKNOWN, FaceEmbedConfig
from facelab.people.gallery import Gallery
from facelab.people.identities import _held_out_mask, identity_table
from facelab.people.model import IdentityModel, _photo_counts, _save_head
from facelab.prepare import as_config, prepare_table
from facelab.tasks import Task

log = logging.getLogger(__name__)


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if is_dataclass(config) and not isinstance(config, type):
        return asdict(config)
    return dict(config)

def _embed_table(table: SampleTable, prepare_config: Any, progress: bool,
                 cache_dir: str | Path | None = None) -> tuple[SampleTable, np.ndarray, dict]:
    """Prepare (cached) and embed every photo of ``table``: (table of crops, (N, 128), prepare dict)."""
    if table.prepared is not None:
        prep = as_config(table.prepared.get("config"))
        crops = table
        if prep.format != "png":
            log.warning("%s: crops prepared as %s: predict embeds crops cut in memory, so a photo's "
                        "embedding differs slightly between training and prediction; train on the raw "
                        "photos (or prepare with --format png) for identical crops", table.root, prep.format)
    else:
        prep = identity_prepare(prepare_config)
        crops = prepare_table(table, prep, cache_dir, progress=progress)
    if len(crops) == 0:
        raise DataError(f"{table.root}: no face found in any photo; check the photos or try "
                        f"another detector (facelab prepare --detector ...)")
    emb = embed_paths(crops.paths, template_landmarks(prep), progress=progress)
    return crops, emb, prep.to_dict()


def train_face_embed(table: SampleTable, config: Any = None, run_dir: str | Path = "runs/face-embed",
                     progress: bool = True) -> Path:
    """Train the face-embed identity model on ``table`` (a folder per person, or a source
    with identities) and write a run folder (config.json, metrics.csv, bundle/).

    Args:
        table: the photos (raw or prepared); people = classes (or identities).
        config: the train stage's TrainConfig (seed, prepare config, head options are
            read from it, see :meth:`FaceEmbedConfig.from_train_config`), a
            FaceEmbedConfig, or None for the defaults.
        run_dir: the run folder to write.
    Returns:
        ``run_dir``.
    """
    t0 = time.perf_counter()
    cfg = FaceEmbedConfig.from_train_config(config)
    run_dir = Path(run_dir)
    progress = bool(getattr(config, "progress", progress))
    if (run_dir / "config.json").exists() and not cfg.overwrite:
        raise RunExists(f"{run_dir} already holds a run; pass --overwrite to replace it, "
                              f"or choose another --name")
    people = identity_table(table)
    if len(people.label_names) < 2:
        raise DataError(f"{table.root}: face-embed needs at least 2 people (found "
                        f"{people.label_names}); to compare two photos use `facelab verify`")
    crops, emb, prep = _embed_table(people, getattr(config, "prepare", None), progress,
                                    getattr(config, "cache_dir", None))
    labels = crops.labels
    held = _held_out_mask(crops, cfg)
    names = [str(crops.source_of(i)) for i in range(len(crops))]  # the enrolled photos
    gallery = Gallery(emb, labels, names)
    metrics = _held_out_metrics(people.label_names, gallery, held, cfg)
    # The model itself: every photo in the gallery, the threshold calibrated leave-one-out.
    genuine, impostor = open_set_scores(gallery, cfg.unknown_score)
    cal = calibrate_threshold(genuine, impostor, cfg.target_far)
    same, diff = pair_scores(emb, labels)
    pair = calibrate_threshold(same, diff, None)
    model = IdentityModel.fit(people.label_names, gallery, cfg, cal.threshold)
    metrics.update(far=cal.far, frr=cal.frr, threshold=cal.threshold)
    seconds = time.perf_counter() - t0
    metrics.update(images_per_second=len(crops) / max(seconds, 1e-9), time=seconds)
    bundle = _bundle_dict(model, prep, _calibration_fields(cal, genuine, impostor), pair, cfg, run_dir,
                          len(crops) / max(seconds, 1e-9))
    bundle["train"]["metrics"] = metrics
    _write_run(run_dir, config, cfg, model, bundle, metrics)
    _save_calibration_plot(run_dir / "open_set.png", genuine, impostor, cal)
    log.info("face-embed: %d people, %d photos, all in the gallery; held-out accuracy %s; unknown "
             "threshold %.3f (leave-one-out: strangers let in %.1f%%, known photos turned away %.1f%%); %s",
             len(model.labels), len(crops), _fmt(metrics["accuracy"]), cal.threshold, 100 * cal.far,
             100 * cal.frr, run_dir)
    if bundle["open_set"]["tradeoff"]:
        log.info("trade-off (-M target_far=...): %s", _tradeoff_text(bundle["open_set"]["tradeoff"]))
    return run_dir


def _tradeoff_text(rows: list[dict]) -> str:
    return "; ".join(f"strangers <= {100 * r['target_far']:g}%: threshold {r['threshold']:.3f}, "
                     f"known turned away {100 * r['frr']:.1f}%" for r in rows)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN: nothing was held out


def _held_out_metrics(labels: Sequence[str], everything: Gallery, held: np.ndarray,
                      cfg: FaceEmbedConfig) -> dict:
    """Accuracy of a model fitted WITHOUT the held-out photos, on them: top name, and the
    open-set decision (its threshold calibrated leave-one-out on its own gallery) - the
    share of known people's new photos called unknown. Only measured; the final model then
    uses every photo."""
    keep = ~held
    part = Gallery(everything.embeddings[keep], everything.labels[keep],
                   [n for n, k in zip(everything.names, keep) if k])
    measured = IdentityModel.fit(labels, part, cfg)
    out = _metrics(measured, everything.embeddings, everything.labels, held)
    out["valid_unknown_rate"] = out["open_set_accuracy"] = float("nan")
    if held.any():
        measured.threshold = calibrate_threshold(*open_set_scores(part, cfg.unknown_score), cfg.target_far,
                                                 quiet=True).threshold
        names = measured.identify(everything.embeddings[held])[0]
        truth = [labels[i] for i in everything.labels[held]]
        out["valid_unknown_rate"] = float(np.mean([n == UNKNOWN for n in names]))
        out["open_set_accuracy"] = float(np.mean([n == t for n, t in zip(names, truth)]))
    return out


def _metrics(model: IdentityModel, emb: np.ndarray, labels: np.ndarray, held: np.ndarray) -> dict:
    out: dict[str, float] = {}
    for name, acc, mask in (("train", "train_accuracy", ~held), ("valid", "accuracy", held)):
        if mask.any():
            probs = np.clip(model.probs(emb[mask]), 1e-7, 1.0)
            y = labels[mask]
            out[f"{name}_loss"] = float(-np.log(probs[np.arange(len(y)), y]).mean())
            out[acc] = float((probs.argmax(1) == y).mean())
        else:
            out[f"{name}_loss"] = out[acc] = float("nan")
    return out

def _bundle_dict(model: IdentityModel, prep: dict, calibration: dict, pair: Calibration,
                 cfg: FaceEmbedConfig, run_dir: Path, images_per_second: float) -> dict:
    return {
        "format": 1,
        "model": {"backend": BACKEND, "name": EMBEDDING_ID, "head": model.head,
                  "kwargs": {"knn_k": cfg.knn_k, "C": cfg.C}, "embedding_dim": EMBEDDING_DIM,
                  "files": {"head": "weights.pt", "gallery": "gallery.npz"}, "weights": "weights.pt"},
        "task": Task("multiclass", tuple(model.labels)).to_dict(),
        # No pixel normalisation of ours: the crops go to dlib, which cuts and normalises its own chip.
        "input": {**InputSpec(prep["size"], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).to_dict(),
                  "note": "crops go to dlib's embedding, which normalises itself"},
        "prepare": prep,
        "open_set": {"unknown_label": UNKNOWN, "rule": cfg.unknown_score, "score": SCORE_TEXT[cfg.unknown_score],
                     **calibration, "target_far": cfg.target_far,
                     "verify_threshold": pair.threshold, "verify_far": pair.far, "verify_frr": pair.frr},
        "people": {"photos": _photo_counts(model)},
        "train": {"run": str(run_dir), "epochs": 0, "images_per_second": round(images_per_second, 2)},
    }

def _write_run(run_dir: Path, config: Any, cfg: FaceEmbedConfig, model: IdentityModel,
               bundle: dict, metrics: dict) -> None:
    bdir = run_dir / BUNDLE_DIR
    bdir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**_config_dict(config), "model": BACKEND,
                                         "resolved": {"face_embed": asdict(cfg)}})
    # the train stage's columns (epoch .. time), then face-embed's own
    row = {"epoch": 1, "phase": "fit", "train_loss": metrics["train_loss"], "valid_loss": metrics["valid_loss"],
           "accuracy": metrics["accuracy"], "lr": "", "images_per_second": metrics["images_per_second"],
           "time": metrics["time"], **metrics}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    _save_head(bdir / bundle["model"]["files"]["head"], model)
    model.gallery.save(bdir / bundle["model"]["files"]["gallery"])
    write_json(bdir / "bundle.json", bundle)  # last: the bundle is complete when this exists
