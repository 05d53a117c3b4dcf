"""The shape of the code: one-way imports, a thin CLI, a training module that only trains."""

from __future__ import annotations

import ast
import re
import subprocess

from conftest import REPO

PACKAGE = REPO / "cnnctl"


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """cnnctl module -> the cnnctl modules it imports, at module level or inside functions."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_cnnctl_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_flow_goes_one_way():
    """Lower layers never import the ones that use them: config knows no data, data knows no run."""
    graph = import_graph()
    later = {"cnnctl.train", "cnnctl.cli", "cnnctl.results", "cnnctl.rundata", "cnnctl.runs", "cnnctl.render"}
    for lower in ("cnnctl.config", "cnnctl.schema", "cnnctl.layers", "cnnctl.shapes", "cnnctl.model",
                  "cnnctl.runtime", "cnnctl.evaluation", "cnnctl.history", "cnnctl.plots", "cnnctl.files",
                  "cnnctl.rundir", "cnnctl.data"):
        assert not graph[lower] & later, (lower, graph[lower] & later)
    for name, imported in graph.items():
        if name.startswith("cnnctl.data"):
            assert all(t.startswith("cnnctl.data") or t in ("cnnctl.errors", "cnnctl.schema", "cnnctl.files")
                       for t in imported), (name, imported)
    assert "cnnctl.cli" not in {t for imported in graph.values() for t in imported} - graph["cnnctl.__main__"]


def test_the_evaluation_report_and_the_run_listing_need_no_tensorflow():
    for module in ("evaluation", "runs", "history", "rundir", "files"):
        text = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from) (tensorflow|keras)\b", text, re.M), module


def test_module_sizes():
    lines = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    assert lines["cli.py"] < 350 and lines["train.py"] < 250


def test_no_function_is_long_without_a_reason():
    """Functions over 60 lines say why next to their definition (a comment containing 'long:')."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                header = "\n".join(source[max(0, node.lineno - 3):node.lineno + 3])
                if "long:" not in header:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert long == []


def test_no_absolute_machine_paths_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"(?<![\w.$])/(work|root|home|Users)/[\w.-]+|/tmp/cnnctl-bench-\w+")
    found = []
    for name in tracked.splitlines():
        path = REPO / name
        if path.suffix in (".png", ".npz", ".keras", ".gz") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert found == []
