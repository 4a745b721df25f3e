"""The device side stays torch-free: every import a runtime module can reach, lazy ones included.

Walks the source (``ast``), not a live interpreter, so a lazy ``import torch`` inside a function that no
test happens to call is caught too. Also checks that no two edgedeploy modules import each other at
module level (an import cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgedeploy"
FORBIDDEN = ("torch", "torchvision", "timm", "onnxsim", "edgedeploy.host")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def _reach(start: str) -> dict[str, str]:
    """Every module ``start`` can import, directly or through edgedeploy modules, with who imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for name in _imports(MODULES[current]):
            if name in seen:
                continue
            seen[name] = current
            if name in MODULES:
                todo.append(name)
    return seen


def test_runtime_modules_reach_no_torch_and_no_host_side():
    runtime = sorted(m for m in MODULES if m.startswith("edgedeploy.runtime"))
    assert {"edgedeploy.runtime.base", "edgedeploy.runtime.onnxruntime", "edgedeploy.runtime.tensorrt",
            "edgedeploy.runtime.aihub", "edgedeploy.runtime.score", "edgedeploy.runtime.batch"} <= set(runtime)
    problems = []
    for module in runtime + ["edgedeploy.targets.cli"]:
        for name, via in _reach(module).items():
            if _forbidden(name):
                problems.append(f"{module} reaches {name} (imported by {via})")
    assert not problems, "\n".join(problems)


def test_the_walk_finds_a_lazy_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import torch\n")
    assert "torch" in _imports(probe)


def test_no_module_level_import_cycle():
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for other in graph[module]:
            if state.get(other) == 1:
                return path + [module, other]
            if not state.get(other):
                found = visit(other, path + [module])
                if found:
                    return found
        state[module] = 2
        return None

    for module in graph:
        if not state.get(module):
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle)
