"""A progress line per round on the `up` console, read from the creator's event log as it grows.

    progress = CreatorProgress(run_dir / "logs" / "creator-0.jsonl")
    for line in progress.poll():   # the lines for the events written since the last poll (or since it was made)
        print(line)

Only the creator's round events become lines (rounds submitted, trained and failed, held-out and
validation scores, versions rejected, rollbacks, the end); the supervisor logs them as `progress` events. A rotated log (the file
shrank) is read again from its start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _submitted(e: dict[str, Any]) -> str:
    return (f"round {e['round']}: {e['trained']} prompt groups to train ({e['evolved']} evolved prompts, pool "
            f"{e['pool']})")


def _trained(e: dict[str, Any]) -> str:
    return f"round {e['round']}: trained v{e['policy_version']} on {e['examples']} examples"


def _evaluated(e: dict[str, Any]) -> str:
    return f"v{e['policy_version']}: held-out test {e['eval_reward']:.4f} ({e['prompts']} prompts)"


def _validated(e: dict[str, Any]) -> str:
    verdict = "best so far" if e["best_version"] == e["policy_version"] else (
        f"{e['below_best_se']:.1f} se below v{e['best_version']}")
    return f"v{e['policy_version']}: validation {e['validation']:.4f} ({verdict})"


def _rejected(e: dict[str, Any]) -> str:
    return (f"v{e['policy_version']}: validation {e['validation']:.4f}, {e['below_best_se']:.1f} se below "
            f"v{e['best_version']} (tolerance {e['tolerance_se']:g}): rejected, not served")


def _failed(e: dict[str, Any]) -> str:
    return f"round {e['round']} failed ({e['failed_in_a_row']} in a row): {str(e['reason'])[:300]}"


def _rolled_back(e: dict[str, Any]) -> str:
    return f"rolled back: v{e.get('replaced')} not served; training resumes from v{e.get('restored')}"


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "round submitted": _submitted, "round trained": _trained, "evaluated": _evaluated, "validated": _validated,
    "rejected on validation": _rejected, "rolled back": _rolled_back, "round failed": _failed,
    "stopping: wall time reached": lambda e: f"stopping: wall time reached after {e.get('rounds')} rounds",
    "stopping: target reached": lambda e: f"stopping: target reached after {e.get('rounds')} rounds",
}


class CreatorProgress:
    def __init__(self, path: Path) -> None:
        """Lines for events written from now on: a continued run's earlier rounds are not shown again."""
        self.path, self.partial = Path(path), b""
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self) -> list[str]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # rotated: a new file
                self.offset, self.partial = 0, b""
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        out = []
        for line in lines:
            try:
                event = json.loads(line)
                out.append(FORMATS[event["event"]](event))
            except (ValueError, KeyError, TypeError):  # not a round event, or not one of ours
                continue
        return out
