"""Methods live in one place: no module outside the registry (trainer/methods/) names one.

A method named in code elsewhere (`if algo == "cut"`, a list of names, a default) is a second place to edit
when a method is added. Docstrings and comments may mention methods; string literals in code may not.
"""

import ast
from pathlib import Path

from trainer.methods import names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["protocol", "trainer", "agents", "launch", "studies", "bench"]
REGISTRY = ROOT / "trainer" / "methods"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (of the module, a class or a function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def method_literals(path: Path, methods: set[str], root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in methods
            and id(node) not in docs]


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if REGISTRY not in path.parents:
                yield path


def test_no_module_outside_the_registry_names_a_method():
    found = [hit for path in modules() for hit in method_literals(path, set(names()))]
    assert not found, "method names outside trainer/methods/ (ask the registry instead):\n" + "\n".join(found)


def test_the_check_finds_a_named_method(tmp_path):
    """The check itself: a literal in code is found, a docstring's mention is not."""
    path = tmp_path / "probe.py"
    path.write_text('"""Mentions dpo and "dpo" in a docstring."""\n\nif algo == "cut":\n    pass\n')
    assert method_literals(path, set(names()), root=tmp_path) == ["probe.py:3: 'cut'"]
