"""docs/ARCHITECTURE.md's rules that are not about the layer order (tests/test_layers.py has
that one), each checked on the code itself."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facelab"
MAX_LINES = 450
#: Entry points import stages inside functions on purpose: `facelab -h` and `import facelab`
#: must not load torch, OpenCV or dlib.
LAZY_ENTRY_POINTS = {"__init__.py", "__main__.py", "cli"}
#: (module, facelab module it imports inside a function): why it cannot be at the top.
ALLOWED_LAZY = {
    ("facelab/bundle/predictor.py", "facelab.models"):
        "facelab.models imports torch at its top; the ONNX backend (same package) must load without torch",
    ("facelab/serve/app.py", "facelab.serve.routes"):
        "routes declares its endpoints with FastAPI at its top; `import facelab.serve` (ServeConfig, serve) loads no fastapi",
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_no_module_is_over_450_lines() -> None:
    long = {_rel(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern: {long}"


def test_internal_imports_sit_at_module_top() -> None:
    """A stage's own imports of facelab are at module top, where they show its dependencies
    (heavy third-party libraries stay inside functions)."""
    inside = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in LAZY_ENTRY_POINTS:
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [mod or ""]
                mine = [n for n in names if n.startswith("facelab") and (_rel(path), n) not in ALLOWED_LAZY]
                if isinstance(node, (ast.Import, ast.ImportFrom)) and mine:
                    inside.append(f"{_rel(path)}:{node.lineno}")
    assert not inside, f"move these facelab imports to the module top: {inside}"


def test_importing_facelab_and_its_cli_loads_no_heavy_library() -> None:
    code = ("import sys, facelab, facelab.cli; heavy = {'torch', 'cv2', 'dlib', 'onnxruntime', 'fastapi', 'matplotlib'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"imported at `import facelab` / `facelab -h`: {out}"


#: (x - mean) / std in any spelling: the pixel normalisation.
_NORMALISE = re.compile(r"-\s*(self\.|spec\.|inp\[\"|bundle\[\"input\"\]\[\")?mean\W*\)?\s*\)?\s*/\s*\(?\s*(self\.|spec\.)?std")


def test_inputspec_is_the_only_pixel_normalisation() -> None:
    found = [f"{_rel(p)}:{i}" for p in _modules() if p != PACKAGE / "bundle" / "spec.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if _NORMALISE.search(line)]
    assert not found, f"normalise with facelab.bundle.InputSpec instead: {found}"


def test_every_backend_is_a_predictor_and_predict_image_is_written_once() -> None:
    from facelab.backends import BACKENDS
    from facelab.bundle import Predictor
    from facelab.ensemble import EnsemblePredictor

    for cls in [*BACKENDS.values(), EnsemblePredictor]:
        assert issubclass(cls, Predictor), cls
        assert cls.predict_image is Predictor.predict_image, f"{cls.__name__} overrides predict_image"


def test_every_error_kind_is_a_facelab_error_and_the_builtin_it_replaces() -> None:
    from facelab import errors

    kinds = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(k, errors.FacelabError) for k in kinds)
    assert all(k is errors.FacelabError or len(k.__mro__) > 3 for k in kinds)  # each also a built-in


@pytest.mark.parametrize("exc,code,traceback", [
    ("facelab.errors.ConfigError('bad --thing; valid: a, b')", 2, False),
    ("facelab.errors.NotFound('runs/x: no bundle.json')", 2, False),
    ("facelab.images.ImageError('a.jpg', 'not an image')", 2, False),
    ("ValueError('an internal shape bug')", 1, True),
    ("KeyError('internal')", 1, True),
])
def test_only_facelab_errors_become_one_line(exc: str, code: int, traceback: bool) -> None:
    """The CLI prints a FacelabError as one line and exits 2; anything else is a bug and
    keeps its traceback."""
    script = ("import typer, facelab.errors, facelab.images\nfrom facelab.cli._errors import run_app\n"
              "app = typer.Typer()\n@app.command()\ndef boom() -> None:\n"
              f"    raise {exc}\n@app.command()\ndef other() -> None: pass\nrun_app(app)\n")
    res = subprocess.run([sys.executable, "-c", script, "boom"], capture_output=True, text=True)
    assert res.returncode == code, res.stderr
    assert ("Traceback" in res.stderr) is traceback, res.stderr
    if not traceback:
        assert res.stderr.startswith("facelab: error: ") and res.stderr.count("\n") == 1, res.stderr


def test_architecture_doc_names_real_stages_and_checks() -> None:
    """docs/ARCHITECTURE.md's layer table is tests/test_layers.py's LAYERS, and every check
    it cites exists."""
    import importlib.util

    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    spec = importlib.util.spec_from_file_location("layers", Path(__file__).with_name("test_layers.py"))
    assert spec is not None and spec.loader is not None
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    table = doc[doc.index("| layer | stages |"):doc.index("\n\n", doc.index("| layer | stages |"))]
    rows = [line.split("|")[2] for line in table.splitlines()[2:]]
    assert [set(re.findall(r"`(\w+)`", row)) for row in rows] == layers.LAYERS
    for stage in set().union(*layers.LAYERS):
        assert (PACKAGE / f"{stage}.py").is_file() or (PACKAGE / stage).is_dir(), stage
    cited = re.findall(r"(test_\w+\.py)(?:::(\w+))?", doc)
    assert len(cited) >= 20
    for file, name in cited:
        text = (Path(__file__).parent / file).read_text()
        assert not name or f"def {name}(" in text, f"docs/ARCHITECTURE.md cites {file}::{name}, which does not exist"
