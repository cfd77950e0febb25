"""Logging for every selfplay process: structlog, a readable console on stderr, optional JSON lines.

    configure_logging(level="info", json_path=run_dir / "logs" / "hub.jsonl", max_bytes=50 << 20, backups=3)

Library code only calls `structlog.get_logger(__name__)`; processes call this once at start. stdout
stays free for a command's own output (e.g. `selfplay keys list | cut -f1`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import structlog


def rotate(path: Path, backups: int) -> None:
    """path -> path.1 -> path.2 ... -> path.BACKUPS (the oldest is dropped), so disk stays bounded."""
    for i in range(backups, 0, -1):
        older = path.with_name(f"{path.name}.{i - 1}") if i > 1 else path
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i}"))
    if backups == 0:
        path.unlink(missing_ok=True)


class _JsonLines:
    """Processor that appends each event to a file as one JSON object, then passes it on unchanged.
    Past `max_bytes` the file is rotated (`backups` older files kept). A write that fails (a full disk) drops
    the line, never the process: the count of dropped lines is written once the file takes lines again."""

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None, backups: int = 3) -> None:
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 — lives as long as the process
        self.dropped = 0

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps(event, default=str) + "\n"
        try:
            if self.dropped:
                self._write(json.dumps({"event": "log lines dropped", "dropped": self.dropped}) + "\n")
                self.dropped = 0
            self._write(line)
            if self.max_bytes is not None and self.file.tell() >= self.max_bytes:
                self.file.close()
                rotate(self.path, self.backups)
                self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except (OSError, ValueError):  # ValueError: a file closed by a failed rotation
            self.dropped += 1
        return event

    def _write(self, text: str) -> None:
        if self.file.closed:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            self.file.write(text)
            self.file.flush()
        except OSError:  # the buffer keeps what failed: start afresh rather than grow it
            with contextlib.suppress(OSError):
                self.file.close()
            raise


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (not when logging was configured): a test's captured
    stream, or a redirect made later, is never written to after it is closed."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except OSError:  # stderr is a file on a full disk: the line is lost, the process goes on
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            sys.stderr.flush()


def configure_logging(level: str = "info", json_path: str | os.PathLike | None = None, *,
                      max_bytes: int | None = None, backups: int = 3) -> None:
    """Console lines to stderr at `level`; with `json_path`, every event also as one JSON object per line
    (rotated past `max_bytes`, keeping `backups` older files)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
        structlog.processors.format_exc_info,
    ]
    if json_path is not None:
        processors.append(_JsonLines(json_path, max_bytes, backups))
    processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
