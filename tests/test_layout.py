"""The code's shape: no module of the project imports, directly or through others, one that imports
it back (imports inside functions count too)."""
from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("study", "trainables", "analysis", "search_spaces")


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    # "from study import preflight" imports the module study.preflight
                    deps |= ({node.module} if "." in node.module else {f"{node.module}.{a.name}" for a in node.names})
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
            graph[f"{package}.{path.stem}"] = deps - {f"{package}.{path.stem}"}
    return graph


def test_no_import_cycles():
    graph = _imports()
    assert {"study.course", "study.lottery", "study.confirm"} <= set(graph)
    cycles = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                done.add(dep)
                visit(dep, path + [dep], done)
    for module in sorted(graph):
        visit(module, [module], {module})
    assert not cycles, cycles
