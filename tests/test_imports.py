"""The packages' import graph and every module's import.

- no cycles: every `import` counts, inside functions too (only `if TYPE_CHECKING:` blocks do not), because a lazy
  import puts off loading a module, not depending on it; a cycle hidden in a function is still two modules that
  cannot be read, tested or moved one without the other;
- floors: protocol < trainer < agents < launch < studies; a module imports from its own package or one below,
  except the few lazy entry points named in LAZY_UP (the CLI runs a study when asked);
- each module imports on its own in a fresh interpreter (catches undefined names at import time, broken extras,
  and a module that works only because another one was imported first);
- the benchmark scripts import.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("protocol", "trainer", "agents", "launch", "studies")  # lowest first
LAZY_UP = {("launch.cli", "studies.methods_table")}  # (importer, imported): allowed upward, inside a function only


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of FLOORS (found on disk: nothing is imported here)."""
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """(imported project module, line, inside a function) for each import statement of one module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0  # function nesting

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):  # never runs: annotations only
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
            parts = self.package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        for alias in node.names:  # `from pkg import name` is pkg.name when that is a module
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno)

    def _add(self, name: str, line: int) -> None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):  # the longest project module the name starts with
            if (candidate := ".".join(parts[:end])) in MODULES:
                self.found.append((candidate, line, self.depth > 0))
                return


@functools.cache
def import_graph() -> dict[str, dict[str, tuple[int, bool]]]:
    """importer -> imported -> (first line, lazy: every import of it is inside a function), parsed in a fresh
    interpreter: CPython 3.11 keeps ast.parse's recursion count in state the threads share, so a thread left
    running by an earlier test that parses too (torch, pydantic) can make ours fail with "SystemError: AST
    constructor recursion depth mismatch"."""
    out = subprocess.run([sys.executable, "-c", "import json, tests.test_imports as t; print(json.dumps(t.parse_graph()))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return {module: {target: (line, lazy) for target, (line, lazy) in edges.items()}
            for module, edges in json.loads(out.stdout).items()}


def parse_graph() -> dict[str, dict[str, tuple[int, bool]]]:
    graph: dict[str, dict[str, tuple[int, bool]]] = {}
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges: dict[str, tuple[int, bool]] = {}
        for target, line, lazy in visitor.found:
            if target != module:
                first, was_lazy = edges.get(target, (line, True))
                edges[target] = (min(first, line), was_lazy and lazy)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, tuple[int, bool]]]) -> list[list[str]]:
    """One cycle for each back edge a depth-first search meets, each written from its smallest module."""
    cycles: set[tuple[str, ...]] = set()
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif target in on_path:
                cycle = path[path.index(target):]
                first = cycle.index(min(cycle))
                cycles.add(tuple(cycle[first:] + cycle[:first]))
            elif target not in done:
                path.append(target)
                on_path.add(target)
                stack.append(iter(sorted(graph[target])))
    return [list(c) for c in sorted(cycles)]


def describe(cycle: list[str], graph: dict[str, dict[str, tuple[int, bool]]]) -> str:
    steps = [f"{a} (line {graph[a][b][0]}{', lazy' if graph[a][b][1] else ''})"
             for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)]
    return " -> ".join([*steps, cycle[0]])


def test_the_graph_sees_every_kind_of_import():
    """The parser itself, on the known shapes: relative, `from pkg import module`, lazy, TYPE_CHECKING."""
    visitor = _Imports("agents.hub", is_package=False)
    visitor.visit(ast.parse("from . import ledger\nfrom .worlds import arithmetic\nimport protocol.messages as m\n"
                            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from launch import cli\n"
                            "def f():\n    from trainer.config import TrainConfig\n"))
    assert visitor.found == [("agents.ledger", 1, False), ("agents.worlds.arithmetic", 2, False),
                             ("protocol.messages", 3, False), ("trainer.config", 8, True)]
    assert find_cycles({"a": {"b": (1, False)}, "b": {"c": (1, True)}, "c": {"a": (1, False)}, "d": {}}) \
        == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, graph) for c in cycles)


def test_imports_go_down_the_floors():
    floor = {package: i for i, package in enumerate(FLOORS)}
    wrong = []
    for module, edges in import_graph().items():
        for target, (line, lazy) in edges.items():
            if floor[target.split(".")[0]] <= floor[module.split(".")[0]]:
                continue
            if (module, target) not in LAZY_UP:
                wrong.append(f"{module} imports {target} (line {line}): a higher floor")
            elif not lazy:
                wrong.append(f"{module} imports {target} at module level (line {line}): only inside a function")
    assert not wrong, "\n".join(wrong)


# Imports each module named in argv[1] in a child forked from an interpreter that has loaded only the third-party
# libraries in argv[2] (loading torch takes seconds; a project module, a fraction of one). A child sees no project
# module its parent did not load: none.
_FORKED_IMPORTS = r"""
import importlib, os, sys
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in ("protocol", "trainer", "agents", "launch", "studies")]
for module in sys.argv[1].split(","):
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            os._exit(0)
        except BaseException as e:
            os.write(write, f"{module}: {type(e).__name__}: {e}"[:2000].encode())
            os._exit(1)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        why = pipe.read().decode()
    _, status = os.wait()
    if status:
        print(why or f"{module}: exit status {status}", flush=True)
"""
PRELOADED = ("torch", "transformers", "peft", "pydantic", "zmq", "msgpack", "structlog", "numpy")


def _import_each(modules: list[str]) -> list[str]:
    """Why each of `modules` that does not import on its own fails (one line each)."""
    out = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, ",".join(modules), ",".join(PRELOADED)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_every_module_imports_on_its_own():
    """Each module in a fresh child process, as many at once as there are cores. agents/backends/vllm.py imports
    vllm only when it starts an engine, so it is checked without the gpu extra too."""
    names = sorted(MODULES)
    workers = min(os.cpu_count() or 1, 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        failures = [f for part in pool.map(_import_each, [names[i::workers] for i in range(workers)]) for f in part]
    assert not failures, "\n".join(failures)


def test_a_module_that_needs_another_imported_first_is_caught(tmp_path):
    """The check itself: a module that reaches agents.ledger through the package, without importing it, works only
    where agents.ledger was imported before; imported after it in the same parent, its child still fails."""
    (tmp_path / "leaning.py").write_text("import agents\nLedger = agents.ledger.Ledger\n")
    out = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, "agents.ledger,leaning", ",".join(PRELOADED)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert out.stdout.splitlines() == ["leaning: AttributeError: module 'agents' has no attribute 'ledger'"], \
        out.stdout + out.stderr


def test_benchmark_scripts_import():
    for path in sorted((ROOT / "bench").glob("*.py")):
        runpy.run_path(str(path), run_name="not_main")
