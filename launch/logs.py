"""Logging for every selfplay process: structlog, a readable console on stderr, optional JSON lines.

    configure_logging(level="info", json_path=run_dir / "logs" / "hub.jsonl")

Library code only calls `structlog.get_logger(__name__)`; processes call this once at start. stdout
stays free for a command's own output (e.g. `selfplay keys list | cut -f1`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import structlog


class _JsonLines:
    """Processor that appends each event to a file as one JSON object, then passes it on unchanged."""

    def __init__(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 — lives as long as the process

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        self.file.write(json.dumps(event, default=str) + "\n")
        self.file.flush()
        return event


def configure_logging(level: str = "info", json_path: str | os.PathLike | None = None) -> None:
    """Console lines to stderr at `level`; with `json_path`, every event also as one JSON object per line."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
        structlog.processors.format_exc_info,
    ]
    if json_path is not None:
        processors.append(_JsonLines(json_path))
    processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
