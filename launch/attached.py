"""Agents started with `selfplay attach` on this machine, so that the run's end and `selfplay stop` end them
too (instead of leaving them reconnecting to a hub that is gone).

    with attached(run_dir, "solver-9"):      # RUN/attached/solver-9.json holds this process's pid meanwhile
        worker.main([...])
    terminate_attached(run_dir)              # SIGTERM each one still running; their pids

Agents attached from another machine are not in this folder: stop them there.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


@contextmanager
def attached(run_dir: str | Path, name: str) -> Iterator[Path]:
    folder = Path(run_dir) / "attached"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"pid": os.getpid(), "name": name}))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def attached_pids(run_dir: str | Path) -> dict[str, int]:
    """name -> pid of the attached agents still running (a stale file, of a process gone, is removed)."""
    found = {}
    for path in sorted((Path(run_dir) / "attached").glob("*.json")):
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _is_attach(pid):
            found[path.stem] = pid
        else:
            path.unlink(missing_ok=True)
    return found


def terminate_attached(run_dir: str | Path) -> list[int]:
    pids = list(attached_pids(run_dir).values())
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return pids


def _is_attach(pid: int) -> bool:
    """A running process whose command line is an attach (not another process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().split(") ", 1)[1][0] == "Z"
    except OSError:
        return False
    return not zombie and b"attach" in argv
