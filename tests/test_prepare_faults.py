"""prepare under awkward names, failing workers, plain scripts and logs (issue 13)."""
from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from html import escape
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from facelab.cli import app
from facelab.data import PREPARED_MANIFEST
from facelab.prepare import REPORT_DIR, PrepareConfig, WorkerError, prepare

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _faces(celeba_mini: Path, n: int) -> list[Path]:
    return sorted((celeba_mini / "img_align_celeba").glob("*.jpg"))[:n]


def _group_photo(celeba_mini: Path, path: Path, n: int = 3) -> Path:
    """``n`` real faces side by side, each smaller than the one before."""
    files = _faces(celeba_mini, n)
    scales = [1.0, 0.8, 0.65][:n]
    tiles = [Image.open(f).convert("RGB").resize((int(178 * s), int(218 * s))) for f, s in zip(files, scales)]
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 20 * n, 218), (90, 90, 90))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, (218 - t.height) // 2))
        x += t.width + 20
    canvas.save(path, quality=95)
    return path


def _crop_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and REPORT_DIR not in p.parts
                  and p.name != PREPARED_MANIFEST)


def _photos(celeba_mini: Path, dst: Path, n: int) -> Path:
    """``n`` real photos in two class folders (celeba-mini has 900; copies past that)."""
    files = _faces(celeba_mini, 900)
    for i in range(n):
        folder = dst / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[i % len(files)], folder / f"{i:04d}.jpg")
    return dst


# --------------------------------------------------------------------------- names

def test_long_file_names_are_prepared(tmp_path: Path, celeba_mini: Path) -> None:
    src = tmp_path / "src" / "p"
    src.mkdir(parents=True)
    long_a = "a" * 240 + ".jpg"            # 244 characters: legal, its temp name beside it is not
    long_b = "b" * 249 + ".jpeg"           # 254 characters; its crop name keeps .jpg
    long_c = "é" * 120 + ".png"            # 244 bytes in UTF-8
    for name, photo in zip((long_a, long_b, long_c), _faces(celeba_mini, 3)):
        shutil.copy(photo, src / name)
    report = prepare(tmp_path / "src", tmp_path / "out", workers=1, cache_dir=tmp_path / "cache", progress=False)
    assert report.counts["kept"] == 3
    crops = _crop_files(tmp_path / "out")
    assert len(crops) == 3 and all(len(p.name.encode()) <= 255 for p in crops)
    assert (tmp_path / "out" / "p" / ("a" * 240 + ".jpg")).is_file()  # fits: the name is kept
    assert not list((tmp_path / "out").rglob("*.tmp"))
    manifest = json.loads((tmp_path / "out" / PREPARED_MANIFEST).read_text())
    assert manifest["rows"] == 3


def test_output_names_never_collide(tmp_path: Path, celeba_mini: Path) -> None:
    """x.jpg beside x.png, and a three-face photo.jpg beside photo_1.jpg (multi_face=all)."""
    src = tmp_path / "src" / "p"
    src.mkdir(parents=True)
    a, b, c = _faces(celeba_mini, 30)[10:13]
    shutil.copy(a, src / "x.jpg")
    Image.open(b).save(src / "x.png")
    _group_photo(celeba_mini, src / "photo.jpg", 3)
    shutil.copy(c, src / "photo_1.jpg")
    report = prepare(tmp_path / "src", tmp_path / "out", {"multi_face": "all"}, workers=1,
                     cache_dir=tmp_path / "cache", progress=False)
    kept = {Path(r.path).name: len(r.crops) for r in report.results}
    assert kept == {"x.jpg": 1, "x.png": 1, "photo.jpg": 3, "photo_1.jpg": 1}
    out = tmp_path / "out"
    files = _crop_files(out)
    manifest = json.loads((out / PREPARED_MANIFEST).read_text())
    assert manifest["rows"] == len(files) == 6  # no photo lost, no crop overwritten
    assert len({p.read_bytes() for p in files}) == 6
    assert {p.name for p in files} == {"x.jpg", "x.png.jpg", "photo.jpg", "photo_1.jpg", "photo_1~2.jpg",
                                       "photo_2.jpg"}
    with report.csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_output = {r["output"]: Path(r["file"]).name for r in rows}
    assert by_output["p/photo_1.jpg"] == "photo_1.jpg" and by_output["p/photo_1~2.jpg"] == "photo.jpg"
    assert by_output["p/x.png.jpg"] == "x.png"
    # a re-run names every crop the same way (and writes nothing new)
    again = prepare(tmp_path / "src", out, {"multi_face": "all"}, workers=1, cache_dir=tmp_path / "cache",
                    progress=False)
    assert again.counts["cached"] == 4 and _crop_files(out) == files


# --------------------------------------------------------------------------- detectors and workers

def test_detector_options_are_checked_before_any_work(tmp_path: Path, celeba_mini: Path) -> None:
    src = _photos(celeba_mini, tmp_path / "src", 240)
    runner = CliRunner()
    for option, message in (("min_neighbour=3", "unknown option 'min_neighbour' (did you mean min_neighbors?)"),
                            ("scale_factor=0.9", "scale_factor must be > 1"),
                            ("min_size=tiny", "min_size must be one number or [width, height]")):
        t0 = time.perf_counter()
        res = runner.invoke(app, ["prepare", str(src), str(tmp_path / "out"), "--detector", "haar", "-D", option,
                                  "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code != 0 and message in str(res.exception), (option, res.output, res.exception)
        assert time.perf_counter() - t0 < 10 and not (tmp_path / "out").exists()
    config = PrepareConfig(detector="haar", detector_options={"minNeighbors": 3, "scaleFactor": 1.1})
    assert config.detector_options == {"min_neighbors": 3, "scale_factor": 1.1}  # OpenCV's spelling accepted


def test_haar_runs_with_opencv_spellings_in_threads(tmp_path: Path, celeba_mini: Path) -> None:
    """A fresh interpreter, so that the worker threads import OpenCV themselves (the race
    that made cv2.data vanish)."""
    src = _photos(celeba_mini, tmp_path / "src", 12)
    proc = subprocess.run([PYTHON, "-m", "facelab", "prepare", str(src), str(tmp_path / "out"), "--detector", "haar",
                           "-D", "minNeighbors=5", "--threads", "--workers", "2", "--no-html", "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(re.search(r"kept (\d+)", proc.stdout).group(1)) >= 10 and "AttributeError" not in proc.stderr
    manifest = json.loads((tmp_path / "out" / PREPARED_MANIFEST).read_text())
    assert manifest["config"]["detector_options"] == {"min_neighbors": 5}


def test_a_killed_worker_process_stops_the_run_at_once(tmp_path: Path, celeba_mini: Path) -> None:
    src = _photos(celeba_mini, tmp_path / "src", 400)
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            for child in multiprocessing.active_children():
                if "Process" in type(child).__name__ and child.pid:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    t0 = time.perf_counter()
    with pytest.raises(WorkerError, match=r"\.jpg: a prepare worker process died"):
        prepare(src, tmp_path / "out", workers=2, cache_dir=tmp_path / "cache", progress=False, processes=True)
    killer.join()
    assert killed and time.perf_counter() - t0 < 60


# --------------------------------------------------------------------------- the Python API from a plain script

README_TRAIN = 'run = facelab.train("faces/")'


def test_readme_example_runs_as_a_plain_script(tmp_path: Path, celeba_mini: Path) -> None:
    """The README's Python example, top-level code without a main guard, on 250 photos (so
    prepare uses worker processes). Only the training budget is cut for the test."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(import facelab\n.*?)```", text, re.S).group(1)
    assert README_TRAIN in example and "__main__" not in example
    script = example.replace(README_TRAIN, 'run = facelab.train("faces/", model="lenet5", image_size=32, '
                                           'epochs=1, tensorboard=False)')
    _photos(celeba_mini, tmp_path / "photos", 250)
    shutil.copy(_faces(celeba_mini, 1)[0], tmp_path / "me.jpg")
    (tmp_path / "my_script.py").write_text(script)
    env = {**os.environ, "FACELAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([PYTHON, "my_script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_crop_files(tmp_path / "faces")) == 250
    assert (tmp_path / "faces" / PREPARED_MANIFEST).is_file()
    assert re.search(r"\(\d.*\) \{'a': .*'b': ", proc.stdout)  # the face's box and probabilities


# --------------------------------------------------------------------------- logs and the report

def test_progress_in_a_log_and_box_sizes_in_the_report(tmp_path: Path, celeba_wild: Path) -> None:
    proc = subprocess.run([PYTHON, "-m", "facelab", "prepare", str(celeba_wild), str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr  # stderr is a pipe here: log lines, not a redrawn bar
    done = re.search(r"prepare: (\d+)/\1 \(100%\)", proc.stderr)
    assert done, proc.stderr
    with (tmp_path / "out" / REPORT_DIR / "report.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["output"]]
    assert 0 < len(rows) <= int(done.group(1))
    smallest = min(rows, key=lambda r: float(r["box_width"]))
    assert 0 < float(smallest["box_width"]) < max(float(r["box_width"]) for r in rows)
    assert all(0 < float(r["score"]) <= 1 and float(r["box_height"]) > 0 for r in rows)
    html = (tmp_path / "out" / REPORT_DIR / "report.html").read_text()
    assert "Smallest detections" in html and escape(smallest["file"]) in html


def test_log_progress_lines_are_few(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from facelab import _progress

    monkeypatch.setattr(_progress, "MIN_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="facelab.progress"):
        bar = _progress.LogProgress(1000, "work")
        for _ in range(1000):
            bar.update()
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and lines[-1].startswith("work: 1000/1000 (100%)"), lines  # a line per 10 %


def test_a_photo_that_breaks_the_detector_stops_the_run_naming_it(
        tmp_path: Path, celeba_mini: Path, orl_faces: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector registered by the caller (a plugin) that fails on greyscale photos: the
    run stops at once with the photo and the reason, in threads (worker processes would not
    know the plugin, so prepare does not use them for it)."""
    from facelab import detect

    monkeypatch.setattr(detect, "_REGISTRY", dict(detect._REGISTRY))  # the plugin leaves with the test

    @detect.register_detector("colour-only", "yuface on colour photos only")
    class ColourOnly(detect.YuFaceDetector):
        def detect(self, rgb):  # noqa: ANN001, ANN202
            if (rgb[..., 0] == rgb[..., 2]).all():
                raise RuntimeError("this detector needs a colour photo")
            return super().detect(rgb)

    src = _photos(celeba_mini, tmp_path / "src", 240)
    grey = src / "a" / "0013.pgm"
    shutil.copy(orl_faces / "s1" / "1.pgm", grey)
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as err:
        prepare(src, tmp_path / "out", {"detector": "colour-only"}, workers=2, cache_dir=tmp_path / "cache",
                progress=False, processes=True)
    assert str(err.value) == f"{grey}: prepare failed (RuntimeError: this detector needs a colour photo)"
    assert time.perf_counter() - t0 < 60
