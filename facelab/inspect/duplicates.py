"""Exact and near-identical pictures (:mod:`facelab._phash`), and what they mean: leakage
across splits, conflicting labels, or plain copies."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from facelab._phash import groups, near_pairs
from facelab.data import SampleTable
from facelab.inspect.config import Finding, ImageStats, InspectConfig


def duplicate_groups(stats: Sequence[ImageStats | None], cfg: InspectConfig) -> list[tuple[list[int], str]]:
    """Groups of row indices showing the same picture, each with ``"exact"`` or ``"near"``."""
    ok = {i: s for i, s in enumerate(stats) if s is not None}
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, s in ok.items():
        by_sha[s.sha256].append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    # Near-identical pictures among one representative per exact group. A flat picture (one
    # colour, no detail) hashes like every other flat picture: only its exact copies count.
    reps = [g[0] for g in by_sha.values() if not _flat(ok[g[0]])]
    pairs = near_pairs([ok[i].fp for i in reps], cfg.hash_threshold, cfg.diff_threshold)
    rep_of = {g[0]: g for g in by_sha.values()}
    out: list[tuple[list[int], str]] = []
    near_members: set[int] = set()
    for grp in groups(len(reps), pairs):
        rows = sorted(r for k in grp for r in rep_of[reps[k]])
        near_members.update(rows)
        out.append((rows, "near"))
    out += [(sorted(g), "exact") for g in exact if g[0] not in near_members]
    return sorted(out)


FLAT_CONTRAST = 2.0
"""A picture whose brightness varies less than this (std of 0-255 luma) has no detail to
compare: flat single-colour images are not "near-identical" to one another."""


def _flat(s: ImageStats) -> bool:
    return s.contrast < FLAT_CONTRAST


def check_duplicates(table: SampleTable, dups: list[tuple[list[int], str]]) -> list[Finding]:
    findings: list[Finding] = []
    leaks: list[tuple[list[int], str]] = []
    conflicts: list[tuple[list[int], str]] = []
    plain: list[tuple[list[int], str]] = []
    for rows, how in dups:
        splits = {table.splits[i] for i in rows} - {None}
        labels = {table.label_text(i) for i in rows}
        item = (rows, how)
        (leaks if len(splits) > 1 else conflicts if len(labels) > 1 else plain).append(item)
        if len(splits) > 1 and len(labels) > 1:
            conflicts.append(item)

    def where(i: int) -> str:
        label = f": {table.label_text(i)}" if table.kind == "classes" else ""
        return f"{table.paths[i]} [{table.splits[i] or '-'}{label}]"

    def files(items: list) -> list[str]:
        return [" = ".join(where(i) for i in rows) + f" ({how})" for rows, how in items]

    if leaks:
        findings.append(Finding(
            "leakage-duplicate", "error",
            f"{len(leaks)} picture(s) appear in more than one split: validation/test scores are inflated",
            "keep one copy of each picture, in one split only, before training", files(leaks)))
    if conflicts:
        findings.append(Finding("conflicting-labels", "warning",
                                f"{len(conflicts)} picture(s) appear more than once with different labels",
                                "decide the right label and delete the other copies",
                                [f"{f}; labels differ in: {_label_difference(table, rows)}"
                                 for f, (rows, _) in zip(files(conflicts), conflicts)]))
    if plain:
        findings.append(Finding("duplicate", "warning",
                                f"{len(plain)} picture(s) appear more than once (same split, same label)",
                                "delete the extra copies: they weigh those photos double", files(plain)))
    return findings


def _label_difference(table: SampleTable, rows: Sequence[int]) -> str:
    labels = table.labels[list(rows)]
    if table.kind == "classes":
        return ", ".join(sorted({table.label_names[int(v)] for v in labels}))
    differ = np.flatnonzero(labels.min(axis=0) != labels.max(axis=0))
    return ", ".join(table.label_names[j] for j in differ)
