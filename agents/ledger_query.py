"""Read-only questions to a run's ledger, for reports, progress lines and benchmarks.

    with LedgerReader.for_run("runs/demo/dpo") as ledger:     # RUN/ledger.sqlite (or its PostgreSQL), read-only
        scores = ledger.eval_scores()                         # version -> held-out prompt -> (difficulty, score)
        done = ledger.tasks_by_state().get("done", 0)

The hub owns the ledger and is its one writer (agents/ledger.py); a reader opens the file with SQLite's
`mode=ro`, so it can sit beside a running hub (WAL mode: it sees the last committed state and never blocks
the hub's commits) and can never change a run by mistake. Every query returns plain values, named tuples or
small dataclasses: callers do not learn the schema, and the SQL stays in agents/ next to the one that writes it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack

from agents.blobs import open_blobs
from agents.database import DatabaseError, open_database
from agents.ledger import (
    ARCHIVED_PROMPTS,
    TASK_ADAPTER,
    URL_FILE,
    LedgerError,
    PromptSet,
    restores,
    reward_by_version,
    stored_result,
)
from protocol.messages import ResultPayload, TrainTask


class Answer(NamedTuple):
    """A held-out prompt's difficulty and the score of its first judged answer."""

    difficulty: int | None
    score: float


@dataclass(frozen=True)
class SampleSpan:
    """How many samples the run recorded, and when the first and last were recorded (time.time(); None when none)."""

    count: int
    first: float | None
    last: float | None

    @property
    def seconds(self) -> float:
        return self.last - self.first if self.count and self.first is not None and self.last is not None else 0.0


@dataclass(frozen=True)
class TaskRow:
    """A task's record without its payload; `has_result` says whether a result is stored (DONE tasks)."""

    task_id: str
    kind: str
    state: str
    attempt: int
    reason: str | None
    has_result: bool
    created: float
    updated: float


class LedgerReader:
    """Named read-only queries on one ledger file; a context manager that closes its connection."""

    def __init__(self, where: str | os.PathLike) -> None:
        """A SQLite ledger file (opened with mode=ro; a query waits up to 10 s on the hub checkpointing its WAL), or a
        postgresql:// URL (a read-only session)."""
        self.where = str(where)
        try:
            self.db = open_database(where, read_only=True)
        except DatabaseError as e:
            raise LedgerError(str(e)) from None
        try:
            self.blobs = open_blobs(where, read_only=True)
        except DatabaseError as e:
            self.db.close()
            raise LedgerError(str(e)) from None

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> LedgerReader:
        """The ledger of a run directory: RUN/ledger.sqlite, or the PostgreSQL database RUN/ledger.url names."""
        url = Path(run_dir) / URL_FILE
        if url.exists():
            return cls(url.read_text().strip())
        path = Path(run_dir) / "ledger.sqlite"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no ledger here (is {run_dir} a run directory?)")
        return cls(path)

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.blobs.close()
        self.db.close()

    # ------------------------------------------------------------------ scores and rewards
    def eval_scores(self, prompts: PromptSet = "eval") -> dict[int, dict[str, Answer]]:
        """policy version -> held-out prompt id -> Answer (difficulty, score of its first judged answer); of the
        held-out test prompts, or with prompts="validation" of the validation prompts."""
        rows = self.db.execute(
            "SELECT s.policy_version, p.prompt_id, p.difficulty, v.score FROM samples s "
            "JOIN prompts p ON p.prompt_id = s.prompt_id JOIN verdicts v ON v.sample_id = s.sample_id "
            "WHERE p.source = ? ORDER BY s.created", (prompts,))
        out: dict[int, dict[str, Answer]] = {}
        for version, prompt_id, difficulty, score in rows:
            out.setdefault(version, {}).setdefault(prompt_id, Answer(difficulty, score))  # a re-dispatched task may answer twice
        return out

    def reward_by_version(self, prompts: PromptSet = "train") -> dict[int, tuple[float, int]]:
        """policy version -> (mean verdict score, samples judged) of the samples it produced, on the training
        prompts (a round's reward), the held-out test prompts ("eval") or the validation prompts."""
        return reward_by_version(self.db, prompts)

    def restores(self) -> dict[int, int]:
        """policy version -> the version it restored (rollbacks of a run with promotion)."""
        return restores(self.db)

    def train_tasks(self) -> list[TrainTask]:
        """Every train task's payload, oldest first (with promotion, `best` names the best version at the time)."""
        return [TASK_ADAPTER.validate_python(msgpack.unpackb(blob, raw=False)) for (blob,)
                in self.db.execute("SELECT payload FROM tasks WHERE kind = 'train' ORDER BY created, task_id")]

    # ------------------------------------------------------------------ prompts, policies, samples
    def prompts_by_source(self) -> dict[str, int]:
        """source ('seed', 'evolved', 'eval', 'validation') -> prompts recorded, archived ones too; sources without
        prompts are absent."""
        live, archived = self._prompt_counts("source")
        counts = Counter(live)
        for (source, _), n in archived.items():
            counts[source] += n
        return dict(sorted(counts.items()))

    def evolved_by_mutation(self) -> dict[str | None, int]:
        """mutation kind -> evolved prompts it produced, archived ones too."""
        live, archived = self._prompt_counts("mutation", "WHERE source = 'evolved'")
        counts = Counter(live)
        for (source, mutation), n in archived.items():
            if source == "evolved":
                counts[mutation] += n
        return dict(counts)

    def _prompt_counts(self, column: str, where: str = "") -> tuple[dict, dict[tuple[str, str | None], int]]:
        """The prompt rows by `column`, and (source, mutation) -> prompts retention archived (agents/retention.py),
        read in one statement: a retention pass that commits meanwhile is in both or in neither."""
        live, archived = {}, {}
        for table, key, n in self.db.execute(
                f"SELECT 'live', {column}, COUNT(*) FROM prompts {where} GROUP BY {column}"
                " UNION ALL SELECT 'archived', name, value FROM totals WHERE name LIKE ?", (ARCHIVED_PROMPTS + "%",)):
            if table == "live":
                live[key] = n
            else:
                source, mutation = key.removeprefix(ARCHIVED_PROMPTS).split("/", 1)
                archived[source, mutation or None] = n
        return live, archived

    def policy_versions(self) -> list[int]:
        """Every published policy version, in order (a gap means one was lost)."""
        return [version for (version,) in self.db.execute("SELECT version FROM policies ORDER BY version")]

    def sample_span(self) -> SampleSpan:
        count, first, last = self.db.execute("SELECT COUNT(*), MIN(created), MAX(created) FROM samples").fetchone()
        return SampleSpan(count, first, last)

    def sample_tasks(self) -> list[tuple[str, str]]:
        """(sample id, id of the task that produced it) of every sample."""
        return self.db.execute("SELECT sample_id, task_id FROM samples ORDER BY sample_id").fetchall()

    # ------------------------------------------------------------------ tasks
    def tasks_by_state(self) -> dict[str, int]:
        """state ('queued', 'leased', 'done', 'dead') -> tasks in it; states without tasks are absent."""
        return dict(self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"))

    def tasks(self, kind: str | None = None) -> list[TaskRow]:
        """Every task (or every one of `kind`: 'generate', 'judge', 'train', 'create'), oldest first."""
        query, args = ("SELECT task_id, kind, state, attempt, reason, result_bytes IS NOT NULL, created, updated"
                       " FROM tasks"), ()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        return [TaskRow(task_id, kind_, state, attempt, reason, bool(has_result), created, updated)
                for task_id, kind_, state, attempt, reason, has_result, created, updated
                in self.db.execute(query + " ORDER BY created, task_id", args)]

    def result(self, task_id: str) -> ResultPayload | None:
        """A task's stored result, decoded; None for an unknown task or one without a result."""
        row = self.db.execute("SELECT result, result_blob FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None or (row[0] is None and row[1] is None):
            return None
        return stored_result(row[0], row[1], self.blobs)


def has_ledger(run_dir: str | os.PathLike) -> bool:
    """Whether a run directory has a ledger to read (a SQLite file, or a PostgreSQL database's URL)."""
    return (Path(run_dir) / "ledger.sqlite").exists() or (Path(run_dir) / URL_FILE).exists()
