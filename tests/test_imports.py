"""Every module of every package imports (catches undefined names at import time and broken extras)."""

import importlib
import pkgutil
import runpy
from pathlib import Path

import pytest

PACKAGES = ["protocol", "agents", "trainer", "launch"]
ROOT = Path(__file__).resolve().parents[1]


def _modules():
    for package in PACKAGES:
        yield package
        mod = importlib.import_module(package)
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"{package}."):
            yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_benchmark_scripts_import(path):
    runpy.run_path(str(ROOT / "bench" / path), run_name="not_main")
