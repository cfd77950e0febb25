"""What `selfplay up` checks before it starts a process: each problem found here would otherwise be a process
that fails on start, is restarted, and fails the same way again.

    problems = preflight(topo, roles=("hub", "creator", "judge"))   # [] when the run can start

- the creator's prompt files (seed, test, validation): readable JSON lines with a text `prompt`, the
  optional fields of the right types, the three sets disjoint (read_prompts is also what the creator uses);
- model paths that name a local folder (a path that does not exist is named here, not after a hub's
  retries), and hub ids while HF_HUB_OFFLINE is set (they must be in the local cache);
- the judge's checker, called once on a seed prompt as the judge will call it;
- evolved prompts an answer checker cannot judge: eva without a mutator writes new prompts with a model,
  and they carry no answer.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from protocol.messages import Prompt

OPTIONAL_TEXT = ("id", "answer", "demonstration")


class PromptFileError(ValueError):
    """A prompts file that cannot be read (the message names the file and the row)."""


def read_prompts(path: str | Path, prefix: str, source: str, chat: bool = False) -> list[Prompt]:
    """The prompts of a JSON lines file: one object per line with a `prompt`, as text or as chat messages
    ([{"role": "system" | "user" | "assistant", "content": text}, ...], ending with a user turn); `id`, `answer`
    (text or a number), `demonstration` and `difficulty` (an integer) are optional. With `chat`, a text prompt
    becomes one user turn, so every prompt reaches the model through its chat template. Also .jsonl.gz, and
    (with the `datasets` extra) parquet, a folder saved with save_to_disk, or a hub id: the same fields."""
    prompts = []
    for where, row in _rows(path):
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: expected an object with a 'prompt', got {type(row).__name__}")
        if "prompt" not in row:
            raise PromptFileError(f"{where}: missing 'prompt' (fields: {', '.join(sorted(row)) or 'none'})")
        messages = _messages(row["prompt"], where) if isinstance(row["prompt"], list) else None
        if messages is None and (not isinstance(row["prompt"], str) or not row["prompt"].strip()):
            raise PromptFileError(f"{where}: 'prompt' must be non-empty text or chat messages, got "
                                  f"{repr(row['prompt'])[:40]}")
        text = messages[-1]["content"] if messages else row["prompt"]
        if chat and messages is None:
            messages = [{"role": "user", "content": text}]
        fields: dict[str, Any] = {}
        for name in OPTIONAL_TEXT:
            value = row.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise PromptFileError(f"{where}: '{name}' must be text, got {type(value).__name__}")
            fields[name] = str(value)
        try:
            difficulty = _integer(row.get("difficulty"))
        except ValueError:
            raise PromptFileError(f"{where}: 'difficulty' must be an integer, got {row['difficulty']!r}") from None
        prompts.append(Prompt(prompt_id=fields.pop("id", f"{prefix}{len(prompts)}"), text=text,
                              messages=messages or [], difficulty=difficulty, source=source, **fields))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (JSON lines with a 'prompt' each)")
    return prompts


def _rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, row) of a prompts source: JSON lines by line number (plain or .gz), datasets' rows by index."""
    from trainer.dataset_files import SourceError, is_datasets_source, rows_from_datasets

    if is_datasets_source(path):
        try:
            rows = rows_from_datasets(path)
        except SourceError as e:
            raise PromptFileError(str(e)) from None
        yield from ((f"{path} row {i}", row) for i, row in enumerate(rows))
        return
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise PromptFileError(f"{path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path} line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path} line {number}: not JSON ({e.msg})") from None


def _messages(turns: list, where: str) -> list[dict[str, str]]:
    """Chat messages as the prompt of a row: roles and text contents, the last turn the user's."""
    if not turns:
        raise PromptFileError(f"{where}: 'prompt' is an empty list of messages")
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and turn.get("role") in ("system", "user", "assistant")
                and isinstance(turn.get("content"), str) and set(turn) <= {"role", "content"}):
            raise PromptFileError(f"{where}: message {i} of 'prompt' must be {{'role': 'system' | 'user' | "
                                  f"'assistant', 'content': text}}, got {repr(turn)[:80]}")
    if turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise PromptFileError(f"{where}: the last message of 'prompt' must be the user's, with text: the model "
                              "answers it")
    return turns


def _integer(value: Any) -> int | None:
    """An integer written as one, as 3.0, or as "3" (None for none); ValueError when it is not one."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())  # ValueError for "hard"
    raise ValueError(value)


def preflight(topo: Any, roles: tuple[str, ...]) -> list[str]:
    """One line per problem that would stop a process of `roles` from running (empty: none found)."""
    problems: list[str] = []
    seeds: list[Prompt] = []
    if "creator" in roles:
        sets = {}
        for field, source in (("prompts", "seed"), ("eval_prompts", "eval"), ("validation_prompts", "validation")):
            path = getattr(topo.creator, field)
            if path is None:
                continue
            try:
                sets[source] = read_prompts(path, source, source, topo.creator.chat)
            except PromptFileError as e:
                problems.append(f"creator.{field}: {e}")
        seeds = sets.get("seed", [])
        problems += _overlaps(sets)
    replay = topo.trainer.replay.data
    if "trainer" in roles and replay and not Path(replay).is_file():
        problems.append(f"trainer.replay.data: {replay}: no such file")
    for role, field, path in _models(topo):
        if role in roles:
            problem = model_problem(path)
            if problem:
                problems.append(f"{field}: {problem}")
    if topo.judge is not None and topo.judge.backend == "verifier" and ("creator" in roles or "judge" in roles):
        settings = topo.creator.settings
        if settings.evolve and topo.creator.mutator is None and not topo.judge.checkers():
            problems.append("creator.settings.evolve with no creator.mutator: eva would write new prompts with a model, "
                            "and they carry no answer for the verifier judge to check. Set creator.mutator (a task "
                            "world's mutator that keeps answers), a checker that scores without an answer "
                            "(judge.checker or judge.rewards), or creator.settings.evolve = false")
        if seeds and "judge" in roles:
            problems += _checker_problems(topo, seeds[0])
    return problems


def model_problem(path: str) -> str | None:
    """Why `path` cannot be loaded without a network, or None. A path that looks local must exist; a hub id is
    checked only while HF_HUB_OFFLINE is set (it must be in the cache)."""
    if Path(path).expanduser().exists():
        return None
    if path.startswith((".", "/", "~")) or path.count("/") > 1:  # a hub id is NAME or OWNER/NAME
        return f"{path} does not exist"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            return f"{path} is not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
    return None


def _models(topo: Any) -> list[tuple[str, str, str]]:
    found = [("solver", "solver.model", topo.solver.model), ("trainer", "trainer.model", topo.trainer.model)]
    if topo.judge is not None and topo.judge.model:
        found.append(("judge", "judge.model", topo.judge.model))
    return found


def _overlaps(sets: dict[str, list[Prompt]]) -> list[str]:
    from agents.creator import check_disjoint

    try:
        check_disjoint(sets)
    except ValueError as e:
        return [f"creator: {e}"]
    return []


def _checker_problems(topo: Any, prompt: Prompt) -> list[str]:
    """Call the verifier's checkers once as the judge will: one (score, judgment or None) per response."""
    checkers = topo.judge.checkers()
    if not checkers:
        if prompt.answer is None:
            return [f"judge: the default verifier checks answers, and the first seed prompt ({prompt.prompt_id}) "
                    "has none: give each prompt an 'answer', or a judge.checker"]
        return []
    names = ", ".join(spec for spec, _ in checkers)
    # in a process of its own: a checker may load a model or start CUDA, which `up` must not hold for the run
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        problem = pool.submit(_try_checkers, checkers, prompt).result()
    return [f"judge {names}: on the first seed prompt ({prompt.prompt_id}): {problem}"] if problem else []


def _try_checkers(checkers: list[tuple[str, float]], prompt: Prompt) -> str | None:
    from agents.backends.checkers import CheckerError, load_scorer

    try:
        load_scorer(checkers)([prompt], [prompt.answer or prompt.demonstration or "?"], True)
    except CheckerError as e:  # it raised, or returned the wrong thing: the message says which
        return str(e)
    except Exception as e:  # any other error of user code (an import that fails) is the problem to report
        return f"{type(e).__name__}: {e}"
    return None
