"""The report's pictures (bar charts, property boxes, thumbnail grids) and report.html
(templates/inspect_report.html)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from facelab import _html, templates
from facelab._io import write_bytes
from facelab.data import SPLITS, SampleTable
from facelab.images import ImageError, read_image
from facelab.inspect.checks import groups_of_rows
from facelab.inspect.config import PROPERTIES, SEVERITIES, Finding, ImageStats, InspectConfig


def _bar_png(title: str, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
             horizontal: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * n)) if horizontal else (max(5, 0.35 * n + 2), 3.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(n)
    for k, (label, vals) in enumerate(series.items()):
        pos = x + (k - (len(series) - 1) / 2) * width
        (ax.barh if horizontal else ax.bar)(pos, vals, width, label=label)
    if horizontal:
        ax.set_yticks(x, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(x, names, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center", fontsize=8)
        ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return _html.figure_png(fig)


def _property_png(table: SampleTable, stats: Sequence[ImageStats | None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups_ = {n: m for n, m in groups_of_rows(table).items()}
    if len(groups_) > 12:  # too many to draw one box each: keep the largest
        groups_ = dict(sorted(groups_.items(), key=lambda kv: -kv[1].sum())[:12])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    for ax, prop in zip(axes, ("brightness", "contrast", "saturation", "height")):
        data = [[s.value(prop) for s, m in zip(stats, mask) if m and s is not None] for mask in groups_.values()]
        ax.boxplot([d or [np.nan] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(groups_) + 1), list(groups_), rotation=45, ha="right", fontsize=7)
        ax.set_title(prop)
    return _html.figure_png(fig)


def _thumb(path: Path, side: int = 96) -> np.ndarray | None:
    try:
        rgb = read_image(path)
    except ImageError:
        return None
    step = max(1, max(rgb.shape[:2]) // (2 * side))
    return rgb[::step, ::step]


def _grid_png(table: SampleTable, rows: Sequence[int], captions: Sequence[str], cols: int = 8) -> bytes:
    return _html.png_bytes(_html.image_grid([_thumb(table.paths[i]) for i in rows], captions, cols=cols, tile=96))


def _sample_grids(table: SampleTable, cfg: InspectConfig, errors: dict[int, str]) -> list[tuple[str, bytes]]:
    if cfg.samples == 0:
        return []
    rng = np.random.default_rng(0)
    grids = []
    masks = groups_of_rows(table) if table.kind == "classes" else {"all photos": np.ones(len(table), bool)}
    for name, mask in list(masks.items())[:40]:
        idx = [i for i in np.flatnonzero(mask) if i not in errors]
        pick = sorted(rng.choice(idx, size=min(cfg.samples, len(idx)), replace=False)) if idx else []
        caps = [f"{table.paths[i].name} {table.splits[i] or ''}" for i in pick]
        grids.append((name, _grid_png(table, pick, caps)))
    return grids


def _dup_grid(table: SampleTable, dups: list[tuple[list[int], str]], max_groups: int = 12) -> bytes | None:
    leaking_first = sorted(dups, key=lambda d: -len({table.splits[i] for i in d[0]}))[:max_groups]
    rows, caps = [], []
    for members, how in leaking_first:
        for i in members[:4]:
            rows.append(i)
            caps.append(f"{how} {table.splits[i] or '-'} {table.label_text(i)[:14]}")
    return _grid_png(table, rows, caps) if rows else None


def _identity_grid(table: SampleTable, crossing: Sequence[str], max_people: int = 6) -> bytes | None:
    rows, caps = [], []
    for ident in crossing[:max_people]:
        for s in SPLITS:
            idx = [i for i, (p, sp) in enumerate(zip(table.identities, table.splits)) if p == ident and sp == s]
            if idx:
                rows.append(idx[0])
                caps.append(f"person {ident} {s}")
    return _grid_png(table, rows, caps, cols=6) if rows else None


def make_plots(table: SampleTable, stats: Sequence[ImageStats | None], counts: dict, out: Path) -> dict[str, bytes]:
    plots: dict[str, bytes] = {}
    names = list(table.label_names)
    per_split = counts["per_split"]
    if table.kind == "classes":
        plots["counts.png"] = _bar_png("photos per class", names,
                                       {s: [per_split[s][n] for n in names] for s in per_split}, "photos")
    else:
        n = {s: max(1, sum(1 for x in table.splits if str(x) == s)) for s in per_split}
        plots["attributes.png"] = _bar_png("positive rate per attribute", names,
                                           {s: [per_split[s][a] / n[s] for a in names] for s in per_split},
                                           "positive rate", horizontal=True)
    if any(s is not None for s in stats):
        plots["properties.png"] = _property_png(table, stats)
    if table.has_identities:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(list(Counter(i for i in table.identities if i).values()), bins=20)
        ax.set_xlabel("photos per person")
        ax.set_ylabel("people")
        plots["identities.png"] = _html.figure_png(fig)
    for name, png in plots.items():
        write_bytes(out / name, png)
    return plots


def write_html(out: Path, table: SampleTable, cfg: InspectConfig, findings: list[Finding], summary: dict,
               plots: dict[str, bytes], dups: list, errors: dict[int, str], identity: dict) -> Path:
    """report.html (templates/inspect_report.html): the rows and pictures are made here."""
    per_split = summary["counts"]["per_split"]
    props = summary["image_properties"]
    suspects = [i for f in findings if f.check == "label-error" for i in f.rows][:32]
    statuses = sorted({s for c in summary["faces"].values() for s in c})
    return templates.write(
        out / "report.html", "inspect_report.html", title="facelab inspect", root=table.root, source=table.source,
        n_photos=len(table), n_labels=len(table.label_names), kind=table.kind, plots=plots, identity=identity,
        findings=[] if not any(f.severity != "info" for f in findings)
        else sorted(findings, key=lambda f: SEVERITIES.index(f.severity)),
        splits=list(per_split), properties=list(PROPERTIES), face_statuses=statuses,
        count_rows=[(n, *[per_split[s][n] for s in per_split], summary["counts"]["total"][n]) for n in table.label_names],
        identity_grid=_identity_grid(table, identity["crossing"]) if "identities.png" in plots else None,
        dup_grid=_dup_grid(table, dups) if dups else None,
        prop_rows=[(n, *[v[p] for p in PROPERTIES], ", ".join(f"{k}: {c}" for k, c in v["formats"].items()))
                   for n, v in props.items()],
        suspects_grid=_grid_png(table, suspects, [f"labelled {table.label_text(i)}" for i in suspects]) if suspects
        else None,
        unreadable=[(str(table.paths[i]), r) for i, r in errors.items()],
        face_rows=[(n, *[c.get(s, 0) for s in statuses]) for n, c in summary["faces"].items()],
        samples=_sample_grids(table, cfg, errors))
