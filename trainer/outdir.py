"""One run per output folder: what `selfplay train` checks before it loads anything.

    prepare_out(config, resume=False, overwrite=False)   # OutDirError names the problem and the way out

- A folder that already holds a run (checkpoints, metrics, a saved adapter) is refused unless the run is
  resumed (`--resume`) or replaced (`--overwrite`, which removes those files and nothing else), so two
  runs never mix their metrics and checkpoints and a later `--resume` never picks up another run's step.
  `--overwrite` removes only what a run wrote: the folder must hold a selfplay run (a checkpoint's
  state.json or metrics.jsonl), and the model and data being trained on must not lie in what it removes.
- A resumed run must be the same run: every setting of the checkpoint's config but those that say how long,
  where and how it logs (RESUMABLE) must match, and the differences are named (settings the checkpoint's
  version of selfplay did not have are not compared).
- After a resume, metrics.jsonl keeps only the steps up to the checkpoint: the interrupted run's later
  steps are trained again and logged once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trainer.checkpoint import latest_checkpoint
from trainer.config import TrainConfig

RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "adapter", "model", "generated.jsonl")
# settings a resumed run may change: how long it trains, how often it saves and logs, where it runs
RESUMABLE = frozenset({"max_steps", "epochs", "save_every", "keep_checkpoints", "log_every", "tensorboard", "device",
                       "out", "nproc"})


class OutDirError(ValueError):
    """The output folder cannot be used as asked (the message says why and what to pass instead)."""


def prepare_out(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> None:
    out = Path(config.out)
    if resume and overwrite:
        raise OutDirError("--resume continues the run in --out and --overwrite replaces it: choose one")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resume or overwrite):
        raise OutDirError(f"{out} already holds a run ({', '.join(found)}): --resume continues it, --overwrite "
                          "replaces it, or choose another --out")
    if overwrite and found:
        _check_overwrite(out, found, config)
        for name in found:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if resume:
        checkpoint = latest_checkpoint(out / "checkpoints")
        if checkpoint is not None:
            saved = json.loads((checkpoint / "state.json").read_text())["config"]
            changed = config_changes(saved, json.loads(config.model_dump_json()))
            if changed:
                raise OutDirError(f"--resume: {checkpoint} was trained with other settings: {'; '.join(changed)}. "
                                  "Resume with the same settings, or start another --out")


def _check_overwrite(out: Path, found: list[str], config: TrainConfig) -> None:
    """Refuse --overwrite on a folder that is not a selfplay run, or whose removal takes the inputs with it."""
    is_run = any((out / "checkpoints").glob("step-*/state.json")) or _has_metrics(out / "metrics.jsonl")
    if not is_run:
        raise OutDirError(f"--overwrite: {out} holds {', '.join(found)} but no selfplay run (no checkpoint and no "
                          "metrics.jsonl), so nothing is removed: choose another --out")
    removed = [(out / name).resolve() for name in found]
    for field, value in (("model", config.model), ("data", config.data)):
        path = Path(value).expanduser().resolve()
        if any(path == r or r in path.parents for r in removed):
            raise OutDirError(f"--overwrite would remove {field} {value} (it lies in {out}): move it, or choose "
                              "another --out")


def _has_metrics(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return "step" in json.loads(f.readline())
    except (OSError, ValueError, TypeError):
        return False


def config_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """'name: saved -> now' for every setting that differs, sections by their dotted names; RESUMABLE ones aside,
    and those only one side has (a setting added or dropped by another version of selfplay)."""
    changes = []
    for key in sorted(set(saved) & set(now)):
        if not prefix and key in RESUMABLE:
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key} {old!r} -> {new!r}")
    return changes


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps up to `step` (the checkpoint a run resumes from); drop a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)
