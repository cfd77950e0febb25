"""A user's own code named in a topology as `module:name` (a task world's checker or mutator)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def load_object(spec: str) -> Any:
    """`module:name` -> the object; ValueError says what is wrong. Modules are found as the processes
    find them (`python -m` puts the working directory on the path)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{spec!r} is not module:name")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {spec!r}: {e}") from None
