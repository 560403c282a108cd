"""predict's inputs: a symbolic link loop, a missing path and a newline in a file name are
reported in the table, and never stop the other photos (issue 13)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facelab.cli import app
from facelab.predict import expand_paths


@pytest.fixture()
def odd_inputs(tmp_path: Path, celeba_wild: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(celeba_wild / "img_celeba" / "003410.jpg", folder / "plain.jpg")
    shutil.copy(celeba_wild / "img_celeba" / "005840.jpg", folder / "two\nlines.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    return folder, tmp_path / "missing.jpg", tmp_path / "also_missing.png"


def test_expand_paths_keeps_what_it_cannot_read(odd_inputs: tuple[Path, Path, Path],
                                                caplog: pytest.LogCaptureFixture) -> None:
    folder, missing, _ = odd_inputs
    paths = expand_paths([folder, missing])
    assert sorted(p.name for p in paths) == ["loop.jpg", "missing.jpg", "plain.jpg", "two\nlines.jpg"]
    assert "symbolic link loop" in caplog.text and "missing.jpg: no such file or folder" in caplog.text
    with pytest.raises(FileNotFoundError, match="no photo to predict"):
        expand_paths([missing])


def test_table_reports_loops_missing_paths_and_odd_names(celeba_run: Path,
                                                         odd_inputs: tuple[Path, Path, Path]) -> None:
    folder, missing, also_missing = odd_inputs
    result = CliRunner().invoke(app, ["predict", str(celeba_run), str(missing), str(folder), str(also_missing)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = lines[1:-1]  # header, one line per face or problem photo, summary
    assert len(rows) == 5, result.stdout
    by_name = {Path(r.split()[0]).name: r for r in rows}
    assert "unreadable: cannot be read (Too many levels of symbolic links)" in by_name["loop.jpg"]
    assert "unreadable: file not found" in by_name["missing.jpg"]
    assert "unreadable: file not found" in by_name["also_missing.png"]
    assert any("two\\nlines.jpg" in r for r in rows)  # the newline shown escaped, on one line
    assert "5 photo(s)" in lines[-1] and "unreadable 3" in lines[-1]
