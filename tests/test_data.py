"""facelab.data: the real sets in ../shared/data, and generated broken or unusual layouts."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelab.data import (
    CELEBA_ATTR_FILE,
    CELEBA_IDENTITY_FILE,
    CELEBA_PARTITION_FILE,
    DataError,
    SampleTable,
    load_celeba,
    load_csv,
    load_folder,
    load_source,
)
from facelab.errors import ConfigError

# --------------------------------------------------------------------------- the real sets


def test_celeba_mini_official_layout(celeba_mini: Path) -> None:
    t = load_source(celeba_mini)
    assert (t.source, t.kind, len(t)) == ("celeba", "attributes", 900)
    assert t.labels.shape == (900, 40) and t.labels.dtype == np.uint8
    assert set(np.unique(t.labels)) == {0, 1}
    assert t.label_names[0] == "5_o_Clock_Shadow" and t.label_names[-1] == "Young"
    assert all(p.is_absolute() and p.is_file() for p in t.paths)
    assert [t.splits.count(s) for s in ("train", "valid", "test")] == [660, 120, 120]
    assert len(set(t.identities)) == 30 and None not in t.identities
    # Row values match the file (-1 -> 0), read independently here.
    lines = (celeba_mini / CELEBA_ATTR_FILE).read_text().splitlines()
    name, *vals = lines[2].split()
    assert t.paths[0].name == name
    assert t.labels[0].tolist() == [int(v == "1") for v in vals]
    ids = dict(line.split() for line in (celeba_mini / CELEBA_IDENTITY_FILE).read_text().splitlines())
    assert t.identities[0] == ids[name]


def test_celeba_attribute_selection_and_image_folder_path(celeba_mini: Path) -> None:
    full = load_source(celeba_mini)
    t = load_source(celeba_mini / "img_align_celeba", attrs=["Smiling", "Eyeglasses"])
    assert t.label_names == ["Smiling", "Eyeglasses"] and t.labels.shape == (900, 2)
    assert np.array_equal(t.labels[:, 0], full.labels[:, full.label_names.index("Smiling")])
    with pytest.raises(DataError, match="unknown attribute.*Smile.*valid names"):
        load_source(celeba_mini, attrs=["Smile"])
    valid = t.split("valid")
    assert len(valid) == 120 and set(valid.splits) == {"valid"}
    assert t.label_text(0) in ("(none)", "Smiling", "Eyeglasses", "Smiling,Eyeglasses")


def test_celeba_wild_picks_aligned_or_uncropped(celeba_wild: Path) -> None:
    aligned = load_source(celeba_wild)
    assert aligned.paths[0].parent.name == "img_align_celeba" and len(aligned) == 40
    assert aligned.splits == [None] * 40 and not aligned.has_splits  # no partition file
    assert len(set(aligned.identities)) == 6
    wild = load_celeba(celeba_wild, images="img_celeba")
    assert wild.paths[0].parent.name == "img_celeba" and [p.name for p in wild.paths] == [p.name for p in aligned.paths]
    assert load_source(celeba_wild / "img_celeba").paths[0].parent.name == "img_celeba"
    with pytest.raises(ConfigError, match="images must be"):
        load_celeba(celeba_wild, images="thumbnails")


def test_orl_folder_per_person(orl_faces: Path) -> None:
    t = load_source(orl_faces)
    assert (t.source, t.kind, len(t), len(t.label_names)) == ("folder", "classes", 400, 40)
    assert t.label_names == sorted(t.label_names)
    assert np.bincount(t.labels).tolist() == [10] * 40
    assert t.skipped == {"not an image (extension)": 1}  # the README
    assert not t.has_splits and not t.has_identities
    i = t.paths.index(orl_faces / "s7" / "3.pgm")
    assert t.label_text(i) == "s7"


# --------------------------------------------------------------------------- generated layouts


def _save(path: Path, rgb: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    if path.suffix == ".pgm":
        img = img.convert("L")
    if path.suffix == ".gif":
        img = img.convert("P")
    img.save(path, fmt)
    return path


@pytest.fixture(scope="module")
def face(celeba_mini: Path) -> np.ndarray:
    return np.asarray(Image.open(next((celeba_mini / "img_align_celeba").glob("*.jpg"))).convert("RGB"))


def test_folder_with_splits_nesting_formats_and_junk(tmp_path: Path, face: np.ndarray) -> None:
    root = tmp_path / "people"
    for split, cls, name in [("train", "alice", "a.jpg"), ("train", "alice", "sub/deeper/b.png"),
                             ("train", "bob", "c.webp"), ("val", "bob", "d.bmp"),
                             ("Validation", "alice", "e.gif"), ("test", "bob", "f.pgm"),
                             ("test", "alice", "g.JPEG")]:
        _save(root / split / cls / name, face)
    (root / "train" / "alice" / ".hidden.jpg").write_bytes(b"x")
    (root / "train" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "bob" / "notes.txt").write_text("not a photo")
    t = load_source(root)
    assert t.label_names == ["alice", "bob"]
    assert sorted(t.splits) == ["test", "test", "train", "train", "train", "valid", "valid"]
    by_name = {p.name: (t.label_text(i), t.splits[i]) for i, p in enumerate(t.paths)}
    assert by_name["b.png"] == ("alice", "train")  # nested folders belong to their class
    assert by_name["d.bmp"] == ("bob", "valid") and by_name["e.gif"] == ("alice", "valid")
    assert by_name["g.JPEG"] == ("alice", "test")
    assert t.skipped == {"hidden file": 2, "not an image (extension)": 1}
    train = t.split("train")
    assert len(train) == 3 and set(train.splits) == {"train"}
    with pytest.raises(ValueError, match="unknown split"):
        t.split("holdout")


def test_folder_without_classes_is_an_error_loose_images_are_counted(tmp_path: Path, face: np.ndarray) -> None:
    flat = tmp_path / "flat"
    _save(flat / "a.jpg", face)
    with pytest.raises(DataError, match="no images found in class folders"):
        load_source(flat)
    _save(flat / "happy" / "b.jpg", face)
    t = load_folder(flat)
    assert len(t) == 1 and t.skipped == {"image outside any class folder": 1}
    with pytest.raises(DataError, match="attributes can only be selected"):
        t.select_attributes(["happy"])
    with pytest.raises(DataError, match="not a folder"):
        load_folder(flat / "a.jpg")


def test_folder_mixing_split_and_class_folders_is_an_error(tmp_path: Path, face: np.ndarray) -> None:
    _save(tmp_path / "d" / "train" / "alice" / "a.jpg", face)
    _save(tmp_path / "d" / "bob" / "b.jpg", face)
    with pytest.raises(DataError, match=r"mixes split folders \['train'\] with other folders \['bob'\]"):
        load_source(tmp_path / "d")


def test_csv_classes_attributes_relative_paths_identity_split(tmp_path: Path, face: np.ndarray) -> None:
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        _save(tmp_path / "img" / name, face)
    classes = tmp_path / "classes.csv"
    classes.write_text("file,label,person,partition\nimg/x.jpg,cat,p1,0\nimg/y.jpg,dog,p2,2\n"
                       f"{tmp_path / 'img' / 'z.jpg'},cat,,val\n")
    t = load_source(classes)
    assert (t.kind, t.label_names, t.labels.tolist()) == ("classes", ["cat", "dog"], [0, 1, 0])
    assert t.identities == ["p1", "p2", None] and t.splits == ["train", "test", "valid"]
    assert t.paths[0] == (tmp_path / "img" / "x.jpg").resolve()
    attrs = tmp_path / "attrs.csv"
    attrs.write_text("path,Smiling,Eyeglasses\nimg/x.jpg,1,-1\nimg/y.jpg,-1,1\n")
    a = load_source(attrs, attrs=["Eyeglasses"])
    assert (a.kind, a.label_names, a.labels.tolist()) == ("attributes", ["Eyeglasses"], [[0], [1]])
    chosen = load_csv(attrs, label_columns=["Smiling"])
    assert chosen.labels.tolist() == [[1], [0]]


@pytest.mark.parametrize("text, message", [
    ("", r"line 1: empty CSV"),
    ("name,label\nimg/x.jpg,cat\n", r"line 1: no path column"),
    ("path\nimg/x.jpg\n", r"line 1: no label column"),
    ("path,label\n", r"header but no rows"),
    ("path,label\nimg/x.jpg,cat\nimg/missing.jpg,dog\n", r"line 3: image .*missing.jpg does not exist"),
    ("path,label,split\nimg/x.jpg,cat,holdout\n", r"line 2: unknown split 'holdout'"),
    ("path,a,b\nimg/x.jpg,yes,no\n", r"several label columns"),
    ("path,label\nimg/x.jpg,cat\nimg/x.jpg\n", r"line 3: missing value"),
    ("path,label\nimg/x.jpg,\n", r"line 2: missing value"),
])
def test_malformed_csv_names_file_and_line(tmp_path: Path, face: np.ndarray, text: str, message: str) -> None:
    _save(tmp_path / "img" / "x.jpg", face)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_source(path)
    assert str(path) in str(info.value)


def test_csv_from_excel_with_bom_and_non_utf8(tmp_path: Path, face: np.ndarray) -> None:
    _save(tmp_path / "img" / "x.jpg", face)
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffpath,label\nimg/x.jpg,café\n".encode("utf-8"))
    assert load_source(bom).label_names == ["café"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nimg/x.jpg,café\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not a UTF-8 text file"):
        load_source(latin)


def test_load_source_rejects_what_is_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_source(tmp_path / "nothing")
    photo = tmp_path / "a.txt"
    photo.write_text("hi")
    with pytest.raises(DataError, match="folder or a .csv file"):
        load_source(photo)


# --------------------------------------------------------------------------- broken CelebA


@pytest.fixture()
def small_celeba(tmp_path: Path, celeba_mini: Path) -> Path:
    """A 5-photo copy of celeba-mini's layout (real photos and real annotation lines)."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    attr = (celeba_mini / CELEBA_ATTR_FILE).read_text().splitlines()
    rows = attr[2:7]
    names = [r.split()[0] for r in rows]
    for n in names:
        shutil.copy(celeba_mini / "img_align_celeba" / n, root / "img_align_celeba" / n)
    (root / CELEBA_ATTR_FILE).write_text("\n".join(["5", attr[1], *rows]) + "\n")
    for fname in (CELEBA_IDENTITY_FILE, CELEBA_PARTITION_FILE):
        keep = [line for line in (celeba_mini / fname).read_text().splitlines() if line.split()[0] in names]
        (root / fname).write_text("\n".join(keep) + "\n")
    return root


def _edit(path: Path, lineno: int, new: str | None) -> None:
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_small_celeba_copy_loads(small_celeba: Path) -> None:
    t = load_source(small_celeba)
    assert len(t) == 5 and t.labels.shape == (5, 40) and None not in t.identities and None not in t.splits


def test_celeba_windows_line_endings_load(small_celeba: Path) -> None:
    for fname in (CELEBA_ATTR_FILE, CELEBA_IDENTITY_FILE, CELEBA_PARTITION_FILE):
        p = small_celeba / fname
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    assert len(load_source(small_celeba)) == 5


@pytest.mark.parametrize("lineno, new, message", [
    (1, "five", r"list_attr_celeba.txt, line 1: expected the number of images"),
    (1, "7", r"list_attr_celeba.txt, line 1: header says 7 images but the file lists 5"),
    (2, "Smiling Male", r"list_attr_celeba.txt, line 2: expected 40 attribute names, found 2"),
    (4, None, r"list_attr_celeba.txt, line 1: header says 5 images but the file lists 4"),
    (5, "LAST", r"list_attr_celeba.txt, line 5: expected a file name and 40 values, found 0"),
    (6, "ROW:39", r"list_attr_celeba.txt, line 6: expected a file name and 40 values, found 39"),
    (7, "ROW:2", r"list_attr_celeba.txt, line 7: attribute values must be 1 or -1, found '2'"),
    (3, "ROW:missing", r"list_attr_celeba.txt, line 3: .*999999.jpg does not exist \(1 of 5"),
])
def test_malformed_celeba_attribute_file_names_file_and_line(small_celeba: Path, lineno: int,
                                                              new: str | None, message: str) -> None:
    path = small_celeba / CELEBA_ATTR_FILE
    line = path.read_text().splitlines()[lineno - 1]
    if new == "ROW:39":
        new = " ".join(line.split()[:-1])
    elif new == "ROW:2":
        new = line.rsplit(" ", 1)[0] + " 2"
    elif new == "ROW:missing":
        new = "999999.jpg " + line.split(" ", 1)[1]
    elif new == "LAST":
        new = line.split()[0]
    _edit(path, lineno, new)
    with pytest.raises(DataError, match=message):
        load_source(small_celeba)


def test_malformed_identity_and_partition_files_name_the_line(small_celeba: Path) -> None:
    _edit(small_celeba / CELEBA_IDENTITY_FILE, 2, "000444.jpg")
    with pytest.raises(DataError, match=r"identity_CelebA.txt, line 2: expected 'FILE PERSON_ID'"):
        load_source(small_celeba)
    (small_celeba / CELEBA_IDENTITY_FILE).unlink()  # optional: loads without identities
    assert load_source(small_celeba).identities == [None] * 5
    line = (small_celeba / CELEBA_PARTITION_FILE).read_text().splitlines()[3]
    _edit(small_celeba / CELEBA_PARTITION_FILE, 4, line.split()[0] + " 3")
    with pytest.raises(DataError, match=r"list_eval_partition.txt, line 4: partition values must be 0, 1, 2"):
        load_source(small_celeba)


def test_missing_or_unreadable_celeba_annotations(small_celeba: Path) -> None:
    (small_celeba / CELEBA_ATTR_FILE).write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: not a UTF-8 text file"):
        load_source(small_celeba)
    (small_celeba / CELEBA_ATTR_FILE).write_text("")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: expected line 1 = image count"):
        load_source(small_celeba)
    # Without the attribute file the folder is not a class tree with one class "img_align_celeba".
    (small_celeba / CELEBA_ATTR_FILE).unlink()
    with pytest.raises(DataError, match=r"list_attr_celeba.txt.*missing"):
        load_source(small_celeba)
    shutil.rmtree(small_celeba / "img_align_celeba")
    (small_celeba / CELEBA_ATTR_FILE).write_text("0\n" + " ".join(f"a{i}" for i in range(40)) + "\n")
    with pytest.raises(DataError, match="no image folder"):
        load_source(small_celeba)


def test_sample_table_checks_and_prepared_manifest(tmp_path: Path, face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="same length"):
        SampleTable(paths=[Path("a")], labels=np.zeros(2, np.int64), label_names=["x"], kind="classes",
                    identities=[None], splits=[None], root=tmp_path, source="folder")
    with pytest.raises(ValueError, match="kind must be one of"):
        SampleTable(paths=[], labels=np.zeros(0), label_names=[], kind="regression",
                    identities=[], splits=[], root=tmp_path, source="folder")
    _save(tmp_path / "faces" / "alice" / "a.png", face)
    (tmp_path / "faces" / "facelab_prepared.json").write_text('{"config": {"detector": "yuface", "size": 160}}')
    t = load_source(tmp_path / "faces")
    assert t.prepared == {"config": {"detector": "yuface", "size": 160}}
    assert t.skipped == {}  # the manifest is not counted as junk
    sub = t.subset(np.array([True]))
    assert len(sub) == 1 and sub.prepared == t.prepared
