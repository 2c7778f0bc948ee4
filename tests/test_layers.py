"""The package's shape, checked from the source: layers import downward only, no cycles.

Layers, lowest first: the base modules (errors, workspace, progress, parallel) <- io <- core
<- nets <- the stage packages <- pipeline <- cli. Between stages only the imports listed in
``STAGE_IMPORTS`` are allowed. Imports inside functions count like any other: a lazy import
hides a cycle from Python, not from this test. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "toolkit"

BASE = {"toolkit", "errors", "workspace", "progress", "parallel"}
STAGES = {
    "convert",
    "verify",
    "fingerprint",
    "planning",
    "preprocessing",
    "inference",
    "training",
    "evaluation",
    "container",
    "modelzip",
    "synthetic",
}
LAYER = {
    "io": 1,
    "core": 2,
    "nets": 3,
    **{s: 4 for s in STAGES},
    "pipeline": 5,
    "cli": 6,
    "__main__": 6,
}
# stage -> the stages it may import (the flow's direction, plus the two stages that reuse
# prediction: training validates with it, evaluation ensembles with it)
STAGE_IMPORTS = {
    "convert": {"verify"},
    "inference": {"preprocessing"},
    "training": {"preprocessing", "inference", "evaluation"},
    "evaluation": {"inference"},
    "container": {"inference"},
    "modelzip": {"inference"},  # export-model --format onnx loads networks as predict does
}
# what the CLI may import besides the pipeline: each stage's entry point
CLI_ALLOWED_PREFIXES = ("toolkit.cli", "toolkit.pipeline")
CLI_ALLOWED = {
    "toolkit",
    "toolkit.errors",
    "toolkit.workspace",
    "toolkit.progress",
    "toolkit.core.constants",  # option defaults: plain numbers, cheap to import
    "toolkit.io.lock",  # the dataset's writer lock, held by each writing command
}
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the toolkit that ``name`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` imports the module; `from pkg import Name` the package
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "toolkit"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "toolkit.core.plans" in edges["toolkit.nets.unet"]
    assert len(edges) > 80


def test_no_module_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_package_import_cycle():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph().items():
        for target in targets:
            if area(module) != area(target):
                packages[area(module)].add(area(target))
    cycle = find_cycle(packages)
    assert cycle is None, " -> ".join(cycle or [])


def test_layers_import_downward_only():
    upward = []
    for module, targets in graph().items():
        source = area(module)
        for target in targets:
            dest = area(target)
            if source == dest or dest in BASE:
                continue
            if source in BASE:
                upward.append(f"{module} -> {target}")
            elif LAYER[dest] > LAYER[source]:
                upward.append(f"{module} -> {target}")
            elif (
                source in STAGES and dest in STAGES and dest not in STAGE_IMPORTS.get(source, set())
            ):
                upward.append(f"{module} -> {target} (stage to stage)")
    assert not upward, "\n".join(sorted(upward))


def test_the_cli_imports_stage_entry_points_and_the_pipeline_only():
    wrong = []
    for module, targets in graph().items():
        if area(module) != "cli":
            continue
        for target in targets:
            if (
                target in CLI_ALLOWED
                or target.startswith(CLI_ALLOWED_PREFIXES)
                or (area(target) in STAGES and target.endswith(".stage"))
                or target == "toolkit.synthetic"
            ):
                continue
            wrong.append(f"{module} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def public_names(path: Path) -> set[str]:
    """The names in a module's ``__all__``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {elt.value for elt in node.value.elts}  # type: ignore[attr-defined]
    return set()


@pytest.mark.parametrize("stage", sorted(STAGES - {"synthetic"}))
def test_every_stage_has_its_entry_point_in_stage_py(stage):
    entry = ROOT / stage / "stage.py"
    assert entry.is_file()
    assert public_names(entry), f"{entry} declares no __all__"


def test_the_cli_and_pipeline_use_what_a_stage_declares_public():
    undeclared = []
    for name, path in modules().items():
        if area(name) not in ("cli", "pipeline"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(".stage"):
                public = public_names(ROOT.parent / (node.module.replace(".", "/") + ".py"))
                undeclared += [
                    f"{name}: {node.module}.{a.name}" for a in node.names if a.name not in public
                ]
    assert not undeclared, "\n".join(undeclared)


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert not {name: n for name, n in sizes.items() if n > MAX_LINES}


def test_a_cycle_and_an_upward_import_are_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_architecture_notes_name_every_package_and_core_module():
    notes = (ROOT.parent / "docs" / "ARCHITECTURE.md").read_text()
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    core = {p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__"}
    missing = sorted(f"{p}/" for p in packages if f"{p}/" not in notes)
    missing += sorted(f"core/{m}.py" for m in core if f"core/{m}.py" not in notes)
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"
