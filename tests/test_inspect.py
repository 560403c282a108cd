"""facelab inspect on the real sets and on folders of real photos with planted problems."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelab.data import load_source
from facelab.inspect import InspectConfig, inspect

PEOPLE = {"anna": "1496", "ben": "1535"}  # celeba-mini person ids used as two classes
STRANGER = "1611"                          # a third person, for the mislabelled photo


def _photos_of(celeba_mini: Path) -> dict[str, list[Path]]:
    t = load_source(celeba_mini)
    out: dict[str, list[Path]] = {}
    for p, ident in zip(t.paths, t.identities):
        out.setdefault(ident, []).append(p)
    return out


def _build(root: Path, celeba_mini: Path, n_train: int = 16, n_valid: int = 8) -> Path:
    """train/ and valid/ folders of two real people, 24 photos each, no problems."""
    photos = _photos_of(celeba_mini)
    for cls, person in PEOPLE.items():
        files = photos[person]
        for split, chosen in (("train", files[:n_train]), ("valid", files[n_train:n_train + n_valid])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, root / split / cls / f.name)
    return root


def _plant(root: Path, celeba_mini: Path) -> dict[str, Path]:
    """Plant one of each problem; return the planted files."""
    photos = _photos_of(celeba_mini)
    # 1. the same picture (re-encoded, resized) in train and valid
    src = sorted((root / "train" / "anna").glob("*.jpg"))[0]
    leak = root / "valid" / "anna" / "leak.jpg"
    img = Image.open(src)
    img.resize((img.width * 4 // 5, img.height * 4 // 5)).save(leak, quality=70)
    # 2. one class photographed in the dark
    for f in root.glob("*/ben/*.jpg"):
        dark = (np.asarray(Image.open(f)).astype(np.float32) * 0.5).astype(np.uint8)
        Image.fromarray(dark).save(f, quality=95)
    # 3. a photo of somebody else filed under anna
    wrong = root / "train" / "anna" / "stranger.jpg"
    shutil.copy(photos[STRANGER][0], wrong)
    # 4. a truncated JPEG
    broken = root / "train" / "anna" / "broken.jpg"
    data = photos[STRANGER][1].read_bytes()
    broken.write_bytes(data[: len(data) // 4])
    return {"leak": leak, "source": src, "wrong": wrong, "broken": broken}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, celeba_mini: Path):
    root = _build(tmp_path_factory.mktemp("planted") / "data", celeba_mini)
    files = _plant(root, celeba_mini)
    report = inspect(root, root.parent / "report", InspectConfig(embed=True, samples=4), progress=False)
    return report, files


def test_planted_problems_are_all_found(planted) -> None:
    report, files = planted
    assert {"unreadable", "leakage-duplicate", "shortcut", "label-error"} <= report.checks()

    (unreadable,) = report.find("unreadable")
    assert len(unreadable.files) == 1 and str(files["broken"]) in unreadable.files[0]
    assert "truncated" in unreadable.files[0]

    (leak,) = report.find("leakage-duplicate")
    assert len(leak.files) == 1
    assert str(files["leak"]) in leak.files[0] and str(files["source"]) in leak.files[0]

    (shortcut,) = report.find("shortcut")
    assert any("'ben' has lower brightness" in h for h in shortcut.files)
    assert not any("anna" in h and "brightness" not in h and "contrast" not in h for h in shortcut.files)

    (label,) = report.find("label-error")
    assert [f.split(":")[0] for f in label.files] == [str(files["wrong"])]


def test_report_files_are_written_and_self_contained(planted) -> None:
    report, files = planted
    html = report.html.read_text()
    assert "leakage-duplicate" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # opens offline
    data = json.loads(report.json.read_text())
    assert data["summary"]["unreadable"] == 1 and data["summary"]["photos"] == 51
    assert {f["check"] for f in data["findings"]} >= {"unreadable", "leakage-duplicate"}
    assert (report.out / "counts.png").is_file() and (report.out / "properties.png").is_file()
    assert data["summary"]["image_properties"]["ben"]["brightness"] < \
        data["summary"]["image_properties"]["anna"]["brightness"] * 0.7


def test_clean_control_gets_no_flags(tmp_path: Path, celeba_mini: Path) -> None:
    root = _build(tmp_path / "data", celeba_mini)
    report = inspect(root, tmp_path / "report", InspectConfig(embed=True, samples=2), progress=False)
    assert report.findings == []
    assert report.summary["counts"]["per_split"] == {"train": {"anna": 16, "ben": 16},
                                                     "valid": {"anna": 8, "ben": 8}}
    assert "No problems found" in report.html.read_text()


def test_celeba_mini_real_duplicates_and_rare_attributes(celeba_mini: Path, tmp_path: Path) -> None:
    report = inspect(celeba_mini, tmp_path, InspectConfig(samples=0), progress=False)
    # celeba-mini keeps people within one partition: no identity leakage ...
    assert "leakage-identity" not in report.checks() and "leakage-duplicate" not in report.checks()
    assert report.summary["identity"]["identities"] == 30
    # ... but CelebA itself holds the same picture twice (186574 and 197961 are byte-identical).
    groups = [sorted(Path(p).name for p in g["rows"]) for g in report.summary["duplicate_groups"]]
    assert ["186574.jpg", "197961.jpg"] in groups
    exact = [g for g in report.summary["duplicate_groups"] if g["kind"] == "exact"]
    assert len(exact) == 1
    (rare,) = report.find("rare-attribute")
    assert "Bald (0.9%)" in rare.message and "Smiling" not in rare.message
    assert (tmp_path / "attributes.png").is_file()


def test_identity_leakage_in_a_csv_split_by_photo(celeba_mini: Path, tmp_path: Path) -> None:
    """A random photo-level split puts the same people in train and test."""
    t = load_source(celeba_mini, attrs=["Smiling"])
    rows = [(str(p), int(y[0]), ident, ("train", "test")[i % 2])
            for i, (p, y, ident) in enumerate(zip(t.paths, t.labels, t.identities)) if i < 120]
    csv_path = tmp_path / "smiling.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "Smiling", "identity", "split"])
        w.writerows(rows)
    report = inspect(csv_path, tmp_path / "r", InspectConfig(samples=0, duplicates=False), progress=False)
    (leak,) = report.find("leakage-identity")
    people = {r[2] for r in rows}
    crossing = {p for p in people if {r[3] for r in rows if r[2] == p} == {"train", "test"}}
    assert len(crossing) > len(people) // 2
    assert leak.message.startswith(f"{len(crossing)} of {len(people)} people")
    assert sorted(f.split(":")[0] for f in leak.files) == sorted(f"person {p}" for p in crossing)


def test_orl_greyscale_pgm(orl_faces: Path, tmp_path: Path) -> None:
    report = inspect(orl_faces, tmp_path, InspectConfig(samples=2), progress=False)
    assert report.summary["greyscale"] == 400 and report.summary["formats"] == {"PPM": 400}
    assert report.summary["sizes"] == {"92x112": 400}
    assert not {"duplicate", "leakage-duplicate", "unreadable", "imbalance"} & report.checks()


def test_face_detection_outcome_per_label(celeba_wild: Path, tmp_path: Path) -> None:
    pytest.importorskip("facelab.prepare")
    report = inspect(celeba_wild, tmp_path, InspectConfig(faces=True, samples=0, duplicates=False),
                     attrs=["Male"], progress=False)
    faces = report.summary["faces"]["Male"]
    assert sum(faces.values()) == sum(report.summary["counts"]["total"].values())
    assert faces.get("kept", 0) + faces.get("several_faces", 0) >= 1


def test_cli_inspect_strict_exits_1_on_leakage(planted, tmp_path: Path) -> None:
    _, files = planted
    root = files["leak"].parents[2]
    proc = subprocess.run([sys.executable, "-m", "facelab", "inspect", str(root), "--out", str(tmp_path),
                           "--samples", "0", "--strict"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "[leakage-duplicate]" in proc.stdout and "report:" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "facelab", "inspect", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr


def test_unreadable_only_and_single_class_folders(tmp_path: Path, orl_faces: Path) -> None:
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "1.jpg").write_text("not a photo")
    (tmp_path / "bad" / "x" / "2.png").write_bytes(b"")
    report = inspect(tmp_path / "bad", tmp_path / "r1", progress=False)
    (bad,) = report.find("unreadable")
    assert [f.split(": ", 1)[1] for f in bad.files] == ["not an image (unknown or corrupt format)",
                                                        "empty file (0 bytes)"]
    (tmp_path / "one" / "s1").mkdir(parents=True)
    shutil.copy(orl_faces / "s1" / "1.pgm", tmp_path / "one" / "s1")
    assert inspect(tmp_path / "one", tmp_path / "r2", progress=False).checks() == {"single-class"}


def test_label_error_from_a_trained_run(tmp_path: Path, celeba_mini: Path) -> None:
    """A face-embed run trained on the clean photos flags a photo of ben filed under anna."""
    from facelab.people import train_face_embed

    clean = _build(tmp_path / "clean", celeba_mini, n_train=10, n_valid=2)
    run = train_face_embed(load_source(clean), run_dir=tmp_path / "run", progress=False)
    data = _build(tmp_path / "data", celeba_mini, n_train=10, n_valid=2)
    ben = sorted((data / "valid" / "ben").glob("*.jpg"))[0]
    wrong = data / "train" / "anna" / "filed_wrong.jpg"
    shutil.move(ben, wrong)
    report = inspect(data, tmp_path / "report", InspectConfig(run=str(run), samples=0), progress=False)
    (label,) = report.find("label-error")
    assert [f.split(":")[0] for f in label.files] == [str(wrong)]
    assert "model says ['ben']" in label.files[0]


def test_link_loops_flat_pictures_and_several_faces(tmp_path: Path, orl_faces: Path, celeba_mini: Path) -> None:
    """A symbolic link loop is reported as such (not as an empty file); two flat pictures of
    different colours are not 'the same picture'; a group photo is flagged under the default
    multi-face policy (which keeps the largest face, so its status is 'kept')."""
    from test_prepare_faults import _group_photo

    root = tmp_path / "data"
    for person in ("s1", "s2"):
        (root / person).mkdir(parents=True)
        for k in range(1, 5):
            shutil.copy(orl_faces / person / f"{k}.pgm", root / person / f"{k}.pgm")
    (root / "s1" / "loop.jpg").symlink_to("loop.jpg")
    Image.new("RGB", (120, 120), (255, 255, 255)).save(root / "s1" / "white.png")  # these two hash alike
    Image.new("RGB", (120, 120), (128, 128, 128)).save(root / "s2" / "grey.png")
    _group_photo(celeba_mini, root / "s2" / "group.jpg", 3)
    report = inspect(root, tmp_path / "r", InspectConfig(faces=True, samples=0), progress=False)
    (bad,) = report.find("unreadable")
    assert bad.files == [f"{root / 's1' / 'loop.jpg'}: symbolic link loop (the link leads back to itself)"]
    assert not report.find("duplicate") and not report.find("leakage-duplicate")
    (several,) = report.find("several-faces")
    assert several.files == [str(root / "s2" / "group.jpg")] and "s2: 1" in several.message
    assert "keeps one face (multi_face=largest)" in several.fix
    assert report.summary["faces"]["s2"]["kept"] >= 5  # the group photo is kept, and flagged all the same
