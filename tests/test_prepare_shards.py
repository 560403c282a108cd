"""prepare --shard K/N: N processes prepare disjoint slices into one cache; a plain prepare
then writes the output from the cache, the same bytes as one process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facelab.prepare import PREPARED_MANIFEST, REPORT_DIR, parse_shard, prepare

PEOPLE = [f"s{i}" for i in range(1, 7)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and REPORT_DIR not in p.parts and p.name != PREPARED_MANIFEST}


def test_two_shard_processes_then_merge_equal_one_process(orl_faces: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for person in PEOPLE:
        shutil.copytree(orl_faces / person, src / person)
    shared = tmp_path / "cache-shared"
    cmd = [sys.executable, "-m", "facelab", "prepare", str(src), str(tmp_path / "unused"),
           "--cache-dir", str(shared), "--workers", "1", "--threads"]
    runs = [subprocess.Popen(cmd + ["--shard", f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for k in (0, 1)]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert all("photo(s)" in o and "no --shard) writes the output" in o for o in outputs)
    assert not (tmp_path / "unused").exists()  # a shard writes only to the cache

    merged = prepare(src, tmp_path / "merged", cache_dir=shared, workers=1, progress=False)
    assert merged.counts["cached"] == len(merged.results) == 60  # every photo came from a shard
    single = prepare(src, tmp_path / "single", cache_dir=tmp_path / "cache-single", workers=1, progress=False)
    assert single.counts["cached"] == 0
    assert _files(tmp_path / "merged") == _files(tmp_path / "single")
    a, b = (json.loads((tmp_path / d / PREPARED_MANIFEST).read_text()) for d in ("merged", "single"))
    for m in (a, b):
        m.pop("created")
        m["counts"].pop("cached")
    assert a["rows"] == b["rows"] and {k: v for k, v in a.items() if k != "source"} == \
        {k: v for k, v in b.items() if k != "source"}


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_bad_shard_is_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="expected K/N with 0 <= K < N"):
        parse_shard(text)
    assert parse_shard("1/3") == (1, 3)
