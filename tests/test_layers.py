"""docs/ARCHITECTURE.md's rule "a stage imports only stages before it", checked on every
internal import, the ones inside functions included (most of facelab imports lazily)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facelab"

#: Layers, first to last: a module may import its own layer and earlier ones.
LAYERS: list[set[str]] = [
    {"_io", "_deps", "_progress", "_phash", "_html", "errors", "templates", "folders"},  # plumbing
    {"data", "images", "tasks", "metrics", "splits"},    # sample tables, pictures, tasks, held-out split
    {"detect", "align"},
    {"prepare"},                                         # faces -> crops
    {"embed", "groups", "augment", "collect"},
    {"models"},                                          # backbones
    {"bundle"},                                          # the contract: Bundle, InputSpec, Predictor
    {"people"},                                          # the face-embed backend
    {"ensemble", "store"},                               # many runs as one; crops on disk
    {"export"},                                          # the onnx backend
    {"backends"},                                        # load(run): every backend
    {"inspect"},                                         # label-error hints from a trained run
    {"train"},
    {"evaluate", "compare"},
    {"explain"},
    {"predict"},
    {"serve"},
    {"cli", "demo", "__main__", "__init__"},             # entry points
]
#: Import cycles between two stages of one layer that are tolerated (none since #14). No new ones.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _stage(module: str) -> str:
    """facelab.serve.app -> serve; facelab.cli.train -> cli; facelab -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """stage -> the stages it imports (anywhere in its files)."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        stage = _stage(".".join(p for p in rel.parts if p != "__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("facelab"):
                names = [node.module] if node.module != "facelab" else [f"facelab.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("facelab")]
            out.setdefault(stage, set()).update(_stage(n) for n in names)
        out[stage].discard(stage)
    return out


def _layer(stage: str) -> int:
    found = [i for i, layer in enumerate(LAYERS) if stage in layer]
    assert found, f"facelab/{stage}: not in any layer of tests/test_layers.py (add it where it belongs)"
    return found[0]


def test_every_import_goes_to_the_same_or_an_earlier_layer() -> None:
    graph = _imports()
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if b in graph and _layer(b) > _layer(a))
    assert not upward, f"imports of a later stage: {upward}"


def test_no_import_cycles_beyond_the_known_ones() -> None:
    graph = _imports()
    cycles = {frozenset({a, b}) for a, deps in graph.items() for b in deps if a in graph.get(b, set())}
    assert cycles <= KNOWN_CYCLES, f"new import cycles: {sorted(map(sorted, cycles - KNOWN_CYCLES))}"
