"""The checks that cost more and are asked for: face detection per label (``faces``), and
suspected label errors from face embeddings (``embed``) or a trained run (``run``)."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from facelab.backends import load
from facelab.data import SampleTable
from facelab.embed import embed_crops
from facelab.images import ImageError, read_image
from facelab.inspect.checks import groups_of_rows
from facelab.inspect.config import Finding, ImageStats, InspectConfig
from facelab.prepare import PrepareConfig, run_files
from facelab.tasks import infer_task, targets_from_table


def check_faces(table: SampleTable, cfg: InspectConfig, progress: bool) -> tuple[list[Finding], dict]:
    """Face detection outcome per label, through facelab.prepare (its cache makes re-runs fast)."""
    pcfg = PrepareConfig(detector=cfg.detector) if cfg.detector else PrepareConfig()
    results = run_files(table.paths, pcfg, workers=cfg.workers, progress=progress, desc="inspect faces")
    per: dict[str, Counter] = {}
    several: dict[str, Counter] = {}
    for name, mask in groups_of_rows(table).items():
        per[name] = Counter(results[i].status for i in np.flatnonzero(mask))
        # under the default policy (keep the largest) a photo of several people is "kept":
        # flagged all the same, since which face speaks for the label is a guess
        several[name] = Counter(no_face=per[name]["no_face"],
                                several=sum(results[i].n_faces > 1 for i in np.flatnonzero(mask)))
    fixes = {"no-face": "check these photos; facelab prepare drops them",
             "several-faces": f"check these photos; facelab prepare {_several_faces_policy(pcfg)}: crop them "
                              "to the labelled person, or remove them"}
    findings = []
    for key, check, test in (("no_face", "no-face", lambda r: r.status == "no_face"),
                             ("several", "several-faces", lambda r: r.n_faces > 1)):
        bad = [r.path for r in results if test(r)]
        if bad:
            by = ", ".join(f"{n}: {c[key]}" for n, c in several.items() if c[key])
            what = "without a face" if check == "no-face" else "with several faces"
            findings.append(Finding(check, "warning", f"{len(bad)} photo(s) {what} ({by})", fixes[check], bad))
    return findings, {n: dict(c) for n, c in per.items()}


def _several_faces_policy(pcfg: Any) -> str:
    return {"skip": "drops them", "all": "keeps every face, each with the photo's label"}.get(
        pcfg.multi_face, f"keeps one face (multi_face={pcfg.multi_face})")


def check_label_errors_embedding(table: SampleTable, stats: Sequence[ImageStats | None],
                                 k: int = 5, progress: bool = True) -> list[Finding]:
    """Photos whose face embedding sits with another class (kNN majority and nearest centroid)."""
    if table.kind != "classes":
        return [Finding("label-error", "info", "the embedding check needs classes (not attributes)")]
    rows = [i for i, s in enumerate(stats) if s is not None]
    emb = embed_crops([read_image(table.paths[i]) for i in rows], progress=progress)
    labels = table.labels[rows]
    d = np.sqrt(np.maximum(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    suspects, where = [], []
    for r in range(len(rows)):
        nn = np.argsort(d[r])[:k]
        votes = Counter(labels[nn].tolist())
        other, n_other = votes.most_common(1)[0]
        if other == labels[r] or n_other < (k + 1) // 2 + 1:
            continue
        own = d[r, labels == labels[r]]
        own = own[np.isfinite(own)]
        if own.size and d[r, labels == other].mean() < own.mean():
            i = rows[r]
            suspects.append(f"{table.paths[i]}: labelled '{table.label_text(i)}', looks like "
                            f"'{table.label_names[other]}' ({n_other} of {k} nearest faces)")
            where.append(i)
    return _label_errors(suspects, where, "look like another class",
                         "look at each one and move it to the right folder (or delete it)")


def _load_run(run: str) -> Any:
    """``facelab.load(run)``: any backend (a CNN run, a face-embed run, an export, an ensemble)."""
    return load(run)


def _run_crops(table: SampleTable, bundle: dict, cfg: InspectConfig, progress: bool) -> dict[int, np.ndarray]:
    """Row -> the aligned crop the run would see (prepared folders are crops already;
    otherwise the run's own face preparation, through facelab.prepare's cache)."""
    if table.prepared:
        crops = {}
        for i, p in enumerate(table.paths):
            try:
                crops[i] = read_image(p)
            except ImageError:
                continue
        return crops
    results = run_files(table.paths, PrepareConfig.from_dict(bundle.get("prepare")), workers=cfg.workers,
                        progress=progress, desc="inspect run")
    return {i: read_image(r.crops[0]) for i, r in enumerate(results) if r.crops}


def check_label_errors_run(table: SampleTable, cfg: InspectConfig, progress: bool = True) -> list[Finding]:
    """Photos where a trained model confidently disagrees with the label: it gives the
    labelled class at most ``1 - cfg.disagree`` (multilabel: is off by more than
    ``cfg.disagree`` on an attribute)."""
    predictor = _load_run(str(cfg.run))
    task = infer_task(table)
    if list(predictor.labels) != list(task.labels):
        return [Finding("label-error", "info", f"run {cfg.run} predicts {list(predictor.labels)}, "
                                               f"not this source's labels {list(task.labels)}; skipped")]
    crops = _run_crops(table, predictor.bundle, cfg, progress)
    rows = sorted(crops)
    probs = np.concatenate([predictor.predict_crops([crops[i] for i in rows[s:s + 64]])
                            for s in range(0, len(rows), 64)]) if rows else np.zeros((0, len(task.labels)))
    y = targets_from_table(table, task)
    suspects, where = [], []
    for i, p in zip(rows, probs):
        if task.kind == "multilabel":
            wrong = [task.labels[j] for j in range(len(task.labels)) if abs(float(p[j]) - y[i, j]) > cfg.disagree]
        else:
            wrong = [task.labels[int(p.argmax())]] if p[int(y[i])] <= 1 - cfg.disagree else []
        if wrong:
            suspects.append(f"{table.paths[i]}: labelled '{table.label_text(i)}', model says {wrong} "
                            f"(p={float(p.max()):.2f})")
            where.append(i)
    return _label_errors(suspects, where, "where the model confidently disagrees",
                         "look at each one: a wrong label, or a hard case worth more examples")


def _label_errors(suspects: list[str], rows: list[int], what: str, fix: str) -> list[Finding]:
    if not suspects:
        return []
    return [Finding("label-error", "warning", f"{len(suspects)} photo(s) {what}", fix, suspects, rows)]
