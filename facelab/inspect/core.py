"""``inspect()``: read the photos, run the checks, write report.html, report.json and plots."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facelab._io import write_json
from facelab.data import SampleTable, load_source
from facelab.inspect.checks import (check_counts, check_identity_leakage, check_shortcuts, check_unreadable,
                                    groups_of_rows)
from facelab.inspect.config import PROPERTIES, ImageStats, InspectConfig, InspectReport
from facelab.inspect.duplicates import check_duplicates, duplicate_groups
from facelab.inspect.optional import check_faces, check_label_errors_embedding, check_label_errors_run
from facelab.inspect.report import make_plots, write_html
from facelab.inspect.scan import scan

log = logging.getLogger(__name__)


def inspect(data: str | Path | SampleTable, out: str | Path, config: InspectConfig | None = None,
            attrs: Sequence[str] | None = None, progress: bool = True, **overrides: Any) -> InspectReport:
    """Inspect a data source and write ``report.html``, ``report.json`` and plots to ``out``.

    Args:
        data: anything :func:`facelab.data.load_source` reads (or a loaded SampleTable).
        out: report folder (created).
        config: checks and thresholds; ``**overrides`` replace single fields.
        attrs: keep only these attributes (CelebA / attribute CSV).
        progress: show progress bars.
    """
    cfg = config or InspectConfig()
    if overrides:
        cfg = InspectConfig(**{**asdict(cfg), **overrides})
    table = data if isinstance(data, SampleTable) else load_source(data, attrs=attrs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats, errors = scan(table.paths, cfg.workers, progress)

    findings = check_unreadable(table, errors)
    f, counts = check_counts(table, cfg)
    findings += f
    dups = duplicate_groups(stats, cfg) if cfg.duplicates else []
    findings += check_duplicates(table, dups)
    f, identity = check_identity_leakage(table)
    findings += f
    f, shortcut_aucs = check_shortcuts(table, stats, cfg)
    findings += f
    faces: dict = {}
    if cfg.faces:
        f, faces = check_faces(table, cfg, progress)
        findings += f
    if cfg.embed:
        findings += check_label_errors_embedding(table, stats, progress=progress)
    if cfg.run:
        findings += check_label_errors_run(table, cfg, progress)
    for x in findings:
        (log.warning if x.severity != "info" else log.info)("[%s] %s", x.check, x.message)

    summary = _summary(table, stats, errors, counts, identity, shortcut_aucs, faces, dups)
    plots = make_plots(table, stats, counts, out)
    html_path = write_html(out, table, cfg, findings, summary, plots, dups, errors, identity)
    json_path = write_json(out / "report.json", {
        "source": str(table.root), "kind": table.kind, "labels": table.label_names,
        "config": asdict(cfg), "findings": [asdict(x) for x in findings], "summary": summary,
        "plots": sorted(plots)})
    log.info("inspect report: %s", html_path)
    return InspectReport(out=out, html=html_path, json=json_path, findings=findings, summary=summary)


def _summary(table: SampleTable, stats: Sequence[ImageStats | None], errors: dict[int, str], counts: dict,
             identity: dict, shortcut_aucs: dict, faces: dict, dups: list) -> dict[str, Any]:
    good = [s for s in stats if s is not None]
    per_label: dict[str, dict[str, Any]] = {}
    for name, mask in groups_of_rows(table).items():
        sel = [s for s, m in zip(stats, mask) if m and s is not None]
        if sel:
            per_label[name] = {p: round(float(np.mean([s.value(p) for s in sel])), 3) for p in PROPERTIES}
            per_label[name]["formats"] = dict(Counter(s.format for s in sel))
    return {
        "photos": len(table), "readable": len(good), "unreadable": len(errors),
        "source": table.source, "skipped_while_listing": table.skipped,
        "counts": counts, "identity": identity, "image_properties": per_label,
        "formats": dict(Counter(s.format for s in good)),
        "sizes": dict(Counter(f"{s.width}x{s.height}" for s in good).most_common(10)),
        "greyscale": sum(s.greyscale for s in good),
        "shortcut_auc": shortcut_aucs, "faces": faces,
        "duplicate_groups": [{"rows": [str(table.paths[i]) for i in g], "kind": how} for g, how in dups],
    }
