"""The checks that need only the table and the photos' statistics: label counts, unreadable
files, the same person in several splits, image properties that give a class away."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from facelab import metrics as M
from facelab.data import SPLITS, SampleTable
from facelab.inspect.config import PROPERTIES, Finding, ImageStats, InspectConfig


def groups_of_rows(table: SampleTable) -> dict[str, np.ndarray]:
    """Label group name -> boolean row mask (one per class, or positives per attribute)."""
    if table.kind == "classes":
        return {n: table.labels == i for i, n in enumerate(table.label_names)}
    return {n: table.labels[:, i].astype(bool) for i, n in enumerate(table.label_names)}


def check_counts(table: SampleTable, cfg: InspectConfig) -> tuple[list[Finding], dict]:
    """Counts per label and split; imbalance, rare attributes, classes missing from a split."""
    findings: list[Finding] = []
    splits: list[str | None] = [s for s in SPLITS if s in table.splits] or [None]
    counts = {str(s): {n: int(m[np.array([x == s for x in table.splits])].sum())
                       for n, m in groups_of_rows(table).items()} for s in splits}
    total = {n: int(m.sum()) for n, m in groups_of_rows(table).items()}
    if table.kind == "classes" and len(total) < 2:
        findings.append(Finding("single-class", "error", f"only one class ({table.label_names[0]!r}): "
                                f"a classifier needs at least two", "add a folder of photos for each other class"))
    elif table.kind == "classes":
        big, small = max(total, key=lambda n: total[n]), min(total, key=lambda n: total[n])
        ratio = total[big] / max(1, total[small])
        if ratio >= cfg.imbalance_ratio:
            findings.append(Finding(
                "imbalance", "warning",
                f"classes are imbalanced: '{big}' has {total[big]} photos, '{small}' {total[small]} ({ratio:.1f}x)",
                f"collect more photos of '{small}' (facelab collect), or train with class weights / a "
                f"balanced sampler, and judge the model by balanced accuracy and per-class recall"))
        for s in splits:
            missing = [n for n, c in counts[str(s)].items() if c == 0]
            if s is not None and missing:
                findings.append(Finding("missing-class", "warning", f"split '{s}' has no photos of {missing}",
                                        f"move some photos of {missing} into '{s}' so it is measured"))
    else:
        n = max(1, len(table))
        rare = [f"{a} ({c / n:.1%})" for a, c in total.items() if not cfg.rare_rate <= c / n <= 1 - cfg.rare_rate]
        if rare:
            findings.append(Finding(
                "rare-attribute", "warning",
                f"{len(rare)} attribute(s) are almost always on or off: {', '.join(rare)}",
                "train with pos_weight (the loss's positive weight), tune each threshold on the "
                "validation split, and report per-attribute AUC / F1 rather than accuracy"))
    return findings, {"per_split": counts, "total": total}


def check_unreadable(table: SampleTable, errors: dict[int, str]) -> list[Finding]:
    if not errors:
        return []
    files = [f"{table.paths[i]}: {r}" for i, r in sorted(errors.items())]
    return [Finding("unreadable", "error", f"{len(errors)} file(s) cannot be read as images",
                    "delete or replace them (facelab prepare skips them and lists them in its report)", files)]


def check_identity_leakage(table: SampleTable) -> tuple[list[Finding], dict]:
    if not table.has_identities:
        return [], {}
    splits_of: dict[str, set[str]] = defaultdict(set)
    count = Counter(i for i in table.identities if i is not None)
    for ident, s in zip(table.identities, table.splits):
        if ident is not None and s is not None:
            splits_of[ident].add(s)
    crossing = sorted(i for i, s in splits_of.items() if len(s) > 1)
    per = np.array(list(count.values()))
    summary = {"identities": len(count), "photos_per_identity": {
        "min": int(per.min()), "median": float(np.median(per)), "max": int(per.max())}, "crossing": crossing}
    if not crossing:
        return [], summary
    files = [f"person {i}: " + ", ".join(sorted(splits_of[i])) for i in crossing]
    return [Finding("leakage-identity", "error",
                    f"{len(crossing)} of {len(count)} people have photos in more than one split: scores "
                    f"measure recognising these people, not generalising to new ones",
                    "split by person (all photos of one person in one split), unless the task is to "
                    "recognise exactly these people", files)], summary

def check_shortcuts(table: SampleTable, stats: Sequence[ImageStats | None], cfg: InspectConfig) -> tuple[list[Finding], dict]:
    """Image properties that alone tell a class apart (lighting, background, camera, size)."""
    ok = np.array([s is not None for s in stats])
    props = {p: np.array([s.value(p) if s is not None else np.nan for s in stats]) for p in PROPERTIES}
    formats = Counter(s.format for s in stats if s is not None)
    for fmt in formats if len(formats) > 1 else []:
        props[f"format={fmt}"] = np.array([float(s.format == fmt) if s is not None else np.nan for s in stats])
    table_aucs: dict[str, dict[str, float]] = {}
    hits: list[str] = []
    label_groups = list(groups_of_rows(table).items())
    if table.kind == "classes" and len(label_groups) == 2:
        label_groups = label_groups[1:]  # with two classes, "B vs the rest" already says "A vs B"
    for name, mask in label_groups:
        pos, neg = mask & ok, ~mask & ok
        if min(pos.sum(), neg.sum()) < cfg.min_group:
            continue
        row = {}
        for prop, vals in props.items():
            a = M.roc_auc(pos[ok], vals[ok])
            row[prop] = round(a, 3)
            if max(a, 1 - a) >= cfg.shortcut_auc:
                side = "higher" if a > 0.5 else "lower"
                hits.append(f"'{name}' has {side} {prop} than the rest (AUC {max(a, 1 - a):.2f}; "
                            f"mean {np.nanmean(vals[pos]):.3g} vs {np.nanmean(vals[neg]):.3g})")
        table_aucs[name] = row
    if not hits:
        return [], table_aucs
    return [Finding("shortcut", "warning",
                    f"{len(hits)} image propert{'y' if len(hits) == 1 else 'ies'} alone tell labels apart: a "
                    f"model can learn the lighting, background or camera instead of the face",
                    "photograph every class under the same conditions, or reduce the cue: "
                    "facelab prepare's light balancing (CLAHE) and background suppression, colour/brightness "
                    "augmentation, the same file format and size for all", hits)], table_aucs
