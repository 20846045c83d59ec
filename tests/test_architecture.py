"""mlsv's layers: which module may import which, no import circles, mlsv's own imports at the top.

The folders read as the data flow (audio and manifests -> loader and augmentation -> models ->
training -> embeddings and scoring -> using a trained model -> publishing); imports go one way, from
a layer to the layers below it in ``LAYERS`` (docs/architecture.md draws the same picture). Training
sits above scoring because validation embeds and scores; it imports neither the user-facing API
(``inference``, ``api``) nor the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlsv"

# Lowest first. A module may import modules of its own layer and of the layers below it, nothing above.
LAYERS = [
    ("extras", ["mlsv.extras"]),  # which extra installs an optional package, and the error naming it
    ("files", ["mlsv.locks"]),  # output folders one process writes at a time: any layer that writes runs
    ("config", ["mlsv.config"]),
    ("data", ["mlsv.data"]),
    ("models", ["mlsv.models"]),
    ("scoring", ["mlsv.scoring"]),
    ("train", ["mlsv.train"]),
    ("inference", ["mlsv.inference"]),
    ("publish", ["mlsv.publish"]),
    ("edges", ["mlsv.recipe", "mlsv.launch", "mlsv.api", "mlsv.cli", "mlsv.commands", "mlsv.__main__", "mlsv"]),
]
# Exceptions to "the layers below": layers that must not see some layer below them.
FORBIDDEN = {
    # the model code is saved beside a model for trust_remote_code: it imports only torch and transformers
    "models": {"extras", "files", "config", "data"},
    # scoring works on embeddings and trial lists; it needs no training config
    "scoring": {"config"},
    # using a trained model needs nothing of training
    "inference": {"train", "config"},
    "publish": {"train", "config"},
}
# Function-local imports of mlsv's own modules are allowed only here: each CLI command imports what it
# runs when it runs, so that `mlsv --help` and the parser (built from every command) do not import torch.
LOCAL_IMPORTS_ALLOWED = ("mlsv.commands.",)
# ... and, by name, the imports of PyTorch's runtime where the ONNX runtime must run without torch
LOCAL_IMPORT_EXCEPTIONS = {
    "mlsv.inference.verifier": {"mlsv.inference.torch_runtime"},
    "mlsv.api": {"mlsv.inference.torch_runtime"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> tuple[set[str], list[tuple[str, int]]]:
    """(mlsv modules imported at module level, [(mlsv module, line)] imported inside functions)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top: set[str] = set()
    local: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(anchor + ([base] if base else []))
                    # `from mlsv.models import runtime` names a module: count the submodule
                    targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in child.names]
                else:
                    targets = [a.name for a in child.names]
                for t in targets:
                    if t == "mlsv" or t.startswith("mlsv."):
                        (local.append((t, child.lineno)) if in_function else top.add(t))
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, local


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _layer(module: str) -> str:
    best, best_len = None, -1
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
RANK = {layer: i for i, (layer, _) in enumerate(LAYERS)}


def _violations(module: str, top: set[str], local: list[tuple[str, int]]) -> list[str]:
    """What breaks the rules in ``module``'s imports (empty when nothing does)."""
    mine, found = _layer(module), []
    for target in sorted(top | {t for t, _ in local} - {"mlsv"}):  # "mlsv" itself: __version__
        theirs = _layer(target)
        if RANK[theirs] > RANK[mine]:
            found.append(f"{module} ({mine}) imports {target} ({theirs}), a higher layer")
        if theirs in FORBIDDEN.get(mine, ()):
            found.append(f"{module} ({mine}) must not import {target} ({theirs})")
    local = [(t, line) for t, line in local if t not in LOCAL_IMPORT_EXCEPTIONS.get(module, ())]
    if local and not module.startswith(LOCAL_IMPORTS_ALLOWED) and module != "mlsv":  # mlsv: lazy mlsv.Verifier
        found.append(f"{module} imports mlsv modules inside functions: {local}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers_and_sit_at_the_top(module):
    assert _violations(module, *_imports(MODULES[module])) == []


def test_no_import_circles():
    graph = {m: {t for t in _imports(p)[0] if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t) :] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                walk(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def test_the_rules_can_fail(tmp_path):
    """The checks see an upward import, a forbidden one and a function-local one."""
    bad = tmp_path / "fake.py"
    bad.write_text(
        "from mlsv.inference.verifier import Verifier\nfrom mlsv.data import audio\n\n\n"
        "def f():\n    import mlsv.train.loop\n"
    )
    top, local = _imports(bad, name="mlsv.scoring.fake")
    assert top == {"mlsv.inference.verifier", "mlsv.data.audio"} and local == [("mlsv.train.loop", 6)]
    found = _violations("mlsv.scoring.fake", top, local)
    assert len(found) == 3 and "a higher layer" in found[0] and "inside functions" in found[2]
    assert _violations("mlsv.models.fake", {"mlsv.config"}, []) == [
        "mlsv.models.fake (models) must not import mlsv.config (config)"
    ]
