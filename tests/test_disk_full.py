"""A full disk in prepare, train and export: one clear line, a folder that is complete or
marked incomplete, and a run that resumes once there is room again (issue 13).

The real tests fill a small tmpfs mounted in a private user + mount namespace
(``unshare -rm``: no root needed); where the kernel does not allow that they are skipped,
and the injected test (ENOSPC raised at facelab's write layer) still runs.
(collect's test is in test_collect.py, beside its HTTP server.)
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import facelab._io as fio
from facelab._io import DiskFullError
from facelab.data import INCOMPLETE_MARKER, PREPARED_MANIFEST, DataError, load_source
from facelab.prepare import prepare

PYTHON = sys.executable


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_namespace = pytest.mark.skipif(not _unshare_works(), reason="no user namespaces (unshare -rm) here: "
                                     "the real full-disk tests need them; the injected test still runs")

DRIVER = '''
import json, os, shutil, subprocess, sys
DISK = sys.argv[1]
RESULT = sys.argv[2]
STEPS = json.loads(sys.argv[3])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "facelab-test", DISK], check=True)

def leave_free(kb):
    filler = os.path.join(DISK, "filler")
    if os.path.exists(filler):
        os.remove(filler)
    free = shutil.disk_usage(DISK).free
    with open(filler, "wb") as f:
        f.write(bytes(max(0, free - kb * 1024)))

CHECK = """
import json, sys
from facelab.data import load_source
try:
    load_source(sys.argv[1]); print(json.dumps({"loads": True}))
except Exception as exc:
    print(json.dumps({"loads": False, "error": str(exc)}))
"""
out = []
for step in STEPS:
    if step[0] == "free":
        leave_free(step[1])
        out.append({"free": step[1]})
    elif step[0] == "unfill":
        os.remove(os.path.join(DISK, "filler"))
        out.append({"unfill": True})
    elif step[0] == "load":
        p = subprocess.run([sys.executable, "-c", CHECK, step[1]], capture_output=True, text=True)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    elif step[0] == "files":
        root = step[1]
        files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
        manifest = os.path.join(root, "facelab_prepared.json")
        rows = json.load(open(manifest))["rows"] if os.path.exists(manifest) else None
        out.append({"files": files, "rows": rows})
    else:
        p = subprocess.run([sys.executable, "-m", "facelab", *step], capture_output=True, text=True,
                           env={**os.environ, "FACELAB_LOG": "WARNING"})
        out.append({"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout})
json.dump(out, open(RESULT, "w"))
'''


def _on_small_disk(tmp_path: Path, steps: list[list]) -> tuple[Path, list[dict]]:
    """Run ``steps`` (facelab commands, and ["free", KB] / ["unfill"] / ["load", path] /
    ["files", path]) with a fresh 16 MB tmpfs mounted at the returned folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    steps = json.loads(json.dumps(steps).replace("$DISK", str(disk)))
    result = tmp_path / "result.json"
    proc = subprocess.run(["unshare", "-rm", PYTHON, str(driver), str(disk), str(result), json.dumps(steps)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return disk, json.loads(result.read_text())


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("facelab: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _photos(orl_faces: Path, dst: Path, people: int = 4, each: int = 10) -> Path:
    for k in range(1, people + 1):
        skip = shutil.ignore_patterns(*[f"{i}.pgm" for i in range(each + 1, 11)])
        shutil.copytree(orl_faces / f"s{k}", dst / f"s{k}", ignore=skip)
    return dst


@needs_namespace
def test_prepare_on_a_full_disk_stops_marked_incomplete_and_resumes(tmp_path: Path, orl_faces: Path) -> None:
    src = _photos(orl_faces, tmp_path / "src")
    cmd = ["prepare", str(src), "$DISK/faces", "--workers", "1", "--no-html", "--cache-dir", str(tmp_path / "cache")]
    _, (_, full, loaded, _, again, files) = _on_small_disk(tmp_path, [
        ["free", 150], cmd, ["load", "$DISK/faces"], ["unfill"], cmd, ["files", "$DISK/faces"]])
    assert full["rc"] == 3, full["stderr"]
    line = _one_line(full["stderr"])
    assert "disk full writing to" in line and "/disk/faces" in line and "run the same prepare again" in line
    assert not loaded["loads"] and "incomplete" in loaded["error"] and INCOMPLETE_MARKER in loaded["error"]
    assert again["rc"] == 0, again["stderr"]
    crops = [f for f in files["files"] if f.endswith(".jpg")]
    kept = int(re.search(r"kept (\d+)", again["stdout"]).group(1))
    assert files["rows"] == len(crops) == kept >= 30  # every kept photo has its crop, no more
    assert INCOMPLETE_MARKER not in files["files"] and PREPARED_MANIFEST in files["files"]


@needs_namespace
def test_train_and_export_on_a_full_disk_stop_with_one_line_and_resume(tmp_path: Path, orl_faces: Path) -> None:
    src = _photos(orl_faces, tmp_path / "src", people=3, each=6)
    train = ["train", str(src), "--model", "lenet5", "--size", "32", "--epochs", "2", "--no-tensorboard",
             "--out", "$DISK/runs", "--name", "r", "--cache-dir", str(tmp_path / "cache")]
    export = ["export", "$DISK/runs/r"]
    _, results = _on_small_disk(tmp_path, [["free", 40], train, ["unfill"], [*train, "--resume"],
                                           ["free", 20], export, ["unfill"], export, ["files", "$DISK/runs/r"]])
    full, resumed, full_export, exported, files = (results[i] for i in (1, 3, 5, 7, 8))
    assert full["rc"] == 3, full["stderr"][-2000:]
    line = _one_line(full["stderr"])
    assert "disk full writing to" in line and "/disk/runs/r" in line and "--resume" in line
    assert resumed["rc"] == 0, resumed["stderr"][-2000:]
    assert full_export["rc"] == 3, full_export["stderr"][-2000:]
    assert "disk full writing to" in _one_line(full_export["stderr"])
    assert exported["rc"] == 0, exported["stderr"][-2000:]
    assert "bundle/model.onnx" in files["files"] and "checkpoints/last.pt" in files["files"]
    assert not [f for f in files["files"] if f.endswith(".tmp")]


def test_injected_enospc_in_prepare_leaves_a_marked_folder_that_resumes(
        tmp_path: Path, orl_faces: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC raised by facelab's write layer (_io) for every file of the output folder but
    its marker: the crops (hard links from the cache) are in place, the report and the
    manifest cannot be written. Runs where the namespaces of the real tests are missing."""
    src = _photos(orl_faces, tmp_path / "src", people=2, each=10)
    out = tmp_path / "faces"
    real_write = fio._write_new

    def disk_full_in_out(tmp: Path, path: Path, data: bytes) -> None:
        if Path(path).is_relative_to(out) and Path(path).name != INCOMPLETE_MARKER:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        real_write(tmp, path, data)

    monkeypatch.setattr(fio, "_write_new", disk_full_in_out)
    with pytest.raises(DiskFullError) as err:
        prepare(src, out, workers=1, cache_dir=tmp_path / "cache", progress=False, report_html=False)
    assert str(err.value).startswith(f"disk full writing to {out} ") and INCOMPLETE_MARKER in str(err.value)
    assert (out / INCOMPLETE_MARKER).is_file() and not (out / PREPARED_MANIFEST).exists()
    placed = sorted(out.rglob("*.jpg"))
    assert len(placed) >= 15  # crops without a manifest ...
    with pytest.raises(DataError, match="incomplete"):  # ... are not read as raw photos
        load_source(out)
    monkeypatch.setattr(fio, "_write_new", real_write)
    report = prepare(src, out, workers=1, cache_dir=tmp_path / "cache", progress=False, report_html=False)
    assert report.counts["kept"] == len(placed) and report.counts["cached"] == 20
    assert not (out / INCOMPLETE_MARKER).exists() and len(load_source(out)) == len(placed)
    assert load_source(out).prepared is not None
