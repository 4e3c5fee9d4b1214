"""The package layout as rules that fail when broken: the DAG is the folder tree.

- ``cxr/data`` imports neither torch nor mlflow, not even through the project modules it imports;
- nothing in ``cxr/`` imports ``flows`` or ``tasks`` except ``cxr/cli/pipeline.py``;
- nothing in the library imports ``cxr.services`` (only the command line and the tests use it);
- no import cycle among the project's modules.

Imports are read from the source (``ast``), at module level and inside functions alike, so a lazy
import cannot hide a cycle; imports under ``if TYPE_CHECKING:`` are for type checkers only and are
left out. Each rule also runs on a deliberately broken copy of the tree, where it must fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cxr", "flows", "tasks")
HEAVY = ("torch", "torchvision", "mlflow")


def modules(root: Path) -> dict[str, Path]:
    """Every module of the project under ``root``: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _import_nodes(node)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """What a module imports: project modules by dotted name, other packages by their top-level name."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # "from cxr.learn import checkpoint" imports the module cxr.learn.checkpoint
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]  # cxr.storage.join -> cxr.storage
            out.add(target if target in known else target.split(".")[0])
    return out


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def heavy_imports_of_data(g: dict[str, set[str]]) -> list[str]:
    """``module -> ... -> torch`` chains that start in cxr.data."""
    problems = []
    for start in sorted(m for m in g if m == "cxr.data" or m.startswith("cxr.data.")):
        seen, stack = {start: [start]}, [start]
        while stack:
            current = stack.pop()
            for target in g.get(current, ()):
                if target in HEAVY:
                    problems.append(" -> ".join([*seen[current], target]))
                elif target in g and target not in seen:
                    seen[target] = [*seen[current], target]
                    stack.append(target)
    return problems


def orchestration_imports(g: dict[str, set[str]]) -> list[str]:
    """Library modules that import flows or tasks (only cxr.cli.pipeline may)."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in g.items()
        if m.startswith("cxr") and m != "cxr.cli.pipeline"
        for t in targets
        if t.split(".")[0] in ("flows", "tasks")
    )


def service_imports(g: dict[str, set[str]]) -> list[str]:
    """Library modules that import cxr.services (the command line and the services themselves may)."""
    allowed = ("cxr.cli", "cxr.services")
    return sorted(
        f"{m} -> {t}"
        for m, targets in g.items()
        if not m.startswith(allowed)
        for t in targets
        if t.startswith("cxr.services")
    )


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in g[v]:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def project() -> dict[str, set[str]]:
    return graph(ROOT)


def test_the_data_package_imports_neither_torch_nor_mlflow(project):
    assert heavy_imports_of_data(project) == []


def test_only_the_pipeline_commands_import_flows_or_tasks(project):
    assert orchestration_imports(project) == []


def test_nothing_in_the_library_imports_the_services(project):
    assert service_imports(project) == []


def test_there_is_no_import_cycle(project):
    assert cycles(project) == []


def test_the_checker_sees_the_project():
    g = graph(ROOT)
    assert {"cxr.data.ingest", "cxr.learn.train", "cxr.tracking.loggers", "cxr.cli.pipeline", "flows.retrain"} <= set(g)
    assert "cxr.learn.checkpoint" in g["cxr.learn.train"] and "flows.retrain" in g["cxr.cli.pipeline"]
    assert "torch" in g["cxr.learn.train"] and "cxr.storage" in g["cxr.data.ingest"]


def loaded_after_import(*names: str) -> list[str]:
    """Which of torch, mlflow and prefect a fresh interpreter has loaded after importing ``names``."""
    code = (
        f"import sys, {', '.join(names)}; print(sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip())


def test_importing_the_data_package_loads_no_torch_mlflow_or_prefect():
    assert loaded_after_import("cxr.data.ingest", "cxr.data.stats", "cxr.data.manifest", "cxr.data.synth") == []


def test_the_command_line_starts_without_torch_mlflow_or_prefect():  # `cxr --help` in under a second
    assert loaded_after_import("cxr.cli") == []


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A copy of the tree with one violation of each rule."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))

    def append(relative: str, line: str) -> None:
        path = tmp_path / relative
        path.write_text(path.read_text() + f"\n\ndef _broken() -> None:\n    {line}\n")

    append("cxr/data/splits.py", "import torch")  # a lazy import counts too
    append("cxr/learn/evaluate.py", "from flows.retrain import retrain")
    append("cxr/data/ingest.py", "from cxr.services import stack")
    append("cxr/learn/inference.py", "from cxr.learn import train")  # train imports inference
    return tmp_path


def test_each_rule_fails_on_a_broken_copy(broken):
    g = graph(broken)
    assert any(chain.endswith("cxr.data.splits -> torch") for chain in heavy_imports_of_data(g))
    assert "cxr.learn.evaluate -> flows.retrain" in orchestration_imports(g)
    assert "cxr.data.ingest -> cxr.services.stack" in service_imports(g)
    assert any({"cxr.learn.inference", "cxr.learn.train"} <= set(group) for group in cycles(g))
