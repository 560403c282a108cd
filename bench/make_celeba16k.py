"""Build ``data/celeba-16k``: 15,723 real CelebA photos in the official layout, for the
CelebA-sized benchmarks (bench/celeba40.py;
bench/scale.py --src data/celeba-16k). Never committed (data/ is git-ignored).

Sources (public snapshots named in ../shared/data/README.md; bring them with the `fetch`
look-up, or `git clone` + `git checkout COMMIT` when online):

- Nikhil4902/CelebA_Dataset @ a578f90f: 6,000 aligned 178x218 photos of 200 people;
- karthikSingireddy/cs389-hw4 @ 702f8f7b: CelebA's first 10,000 aligned photos, halved to 89x109
  (277 of them are also in the first set; the full-size copy is kept);
- awol-rwal/Effects-of-Face-Alignment-on-Facial-Attribute-Classification @ d3109ea8: the full
  official ``list_attr_celeba.txt`` (zipped) and ``list_eval_partition.txt``.

Identities come from the first snapshot's full ``identity_CelebA.txt``. The official partition
of the result: 14,283 train / 780 valid / 660 test photos.

    python bench/make_celeba16k.py --mirrors /work/.mirror [--out data/celeba-16k]
"""
from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = (("Nikhil4902+CelebA_Dataset", "a578f90f4ccc360198eca936376a9c1691ed09be", "Datasets"),
          ("karthikSingireddy+cs389-hw4", "702f8f7bdf59386959872d52879faac800f20ab1", "celebA"))
LABELS = ("awol-rwal+Effects-of-Face-Alignment-on-Facial-Attribute-Classification",
          "d3109ea8977e0217b753bf71e616e318b8b1ea05")


def _git(repo: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"git {' '.join(args)} in {repo} failed: {e.stderr.decode().strip()}\n"
                         f"Fetch the snapshots named in this script's docstring first.") from e


def _repo(mirrors: Path, name: str) -> Path:
    for cand in (mirrors / name / "repo", mirrors / name):
        if (cand / ".git").exists() or (cand / "HEAD").exists():
            return cand
    raise SystemExit(f"{mirrors / name}: no git repository there; fetch {name.replace('+', '/')} first")


def extract_photos(mirrors: Path, images: Path) -> int:
    """Every .jpg of both snapshots into ``images`` (first snapshot wins on a name clash)."""
    images.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, commit, folder in PHOTOS:
        tar = tarfile.open(fileobj=io.BytesIO(_git(_repo(mirrors, name), "archive", commit, folder)))
        for member in tar:
            target = images / Path(member.name).name
            data = tar.extractfile(member) if member.name.endswith(".jpg") and not target.exists() else None
            if data is not None:  # None: not a photo, one already taken, or not a regular file
                target.write_bytes(data.read())
                n += 1
    return n


def write_annotations(mirrors: Path, out: Path) -> dict[str, int]:
    """The official annotation files, restricted to the photos present."""
    have = {p.name for p in (out / "img_align_celeba").glob("*.jpg")}
    labels = _repo(mirrors, LABELS[0])
    attr = zipfile.ZipFile(io.BytesIO(_git(labels, "show", f"{LABELS[1]}:list_attr_celeba.zip")))
    lines = attr.read("list_attr_celeba.txt").decode().splitlines()
    rows = [line for line in lines[2:] if line.split()[0] in have]
    (out / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{lines[1]}\n" + "\n".join(rows) + "\n")
    files = {"list_eval_partition.txt": _git(labels, "show", f"{LABELS[1]}:list_eval_partition.txt"),
             "identity_CelebA.txt": _git(_repo(mirrors, PHOTOS[0][0]), "show", f"{PHOTOS[0][1]}:identity_CelebA.txt")}
    counts: dict[str, int] = {}
    for fname, raw in files.items():
        keep = [line for line in raw.decode().splitlines() if line.split() and line.split()[0] in have]
        (out / fname).write_text("\n".join(keep) + "\n")
        if fname == "list_eval_partition.txt":
            for line in keep:
                split = ("train", "valid", "test")[int(line.split()[1])]
                counts[split] = counts.get(split, 0) + 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"), help="folder holding the fetched snapshots")
    p.add_argument("--out", type=Path, default=REPO / "data" / "celeba-16k")
    args = p.parse_args()
    n = extract_photos(args.mirrors, args.out / "img_align_celeba")
    counts = write_annotations(args.mirrors, args.out)
    total = len(list((args.out / "img_align_celeba").glob("*.jpg")))
    print(f"{args.out}: {total} photos ({n} new); official partition {counts}")


if __name__ == "__main__":
    main()
