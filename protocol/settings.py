"""What every process's configuration shares: the strict base model, reading TOML or JSON, one-line errors.

    class MySettings(Strict):
        beta: float = Field(0.1, gt=0, description="...")

    data = read_config_file("run.toml")          # ConfigError names the file and what is wrong
    MySettings.model_validate(data)               # a typo is refused: "bta: Extra inputs are not permitted"
    format_validation_error(error, "run.toml")    # "run.toml: trainer.lr: Input should be greater than 0"

Every config model (the trainer's, the hub's, the creator's, the topology's sections) derives from `Strict`,
so an unknown key is an error naming it, never a setting silently dropped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Strict(BaseModel):
    """A configuration model: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A configuration problem, in one line naming the file and the field."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file (by its suffix) or a JSON file, as a dict; ConfigError says which file and why not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(data).__name__}")
    return data


def format_validation_error(e: ValidationError, source: str | Path | None = None, section: str = "") -> str:
    """Every problem pydantic found, each as `dotted.field: message` (under `section`, if the model validated is
    one), on one line."""
    where = f"{source}: " if source else ""
    parts = [f"{'.'.join(map(str, (*filter(None, [section]), *err['loc']))) or '<root>'}: {err['msg']}"
             for err in e.errors(include_url=False)]
    return where + "; ".join(parts)
