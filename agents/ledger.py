"""The hub's ledger: tasks and their leases, prompts with lineage, samples, verdicts, policies, metrics.

SQLite in WAL mode, one connection owned by the hub's loop. Every method that changes state commits
before it returns, so the hub can acknowledge right after: an acknowledged result is on disk.

Task life: QUEUED -> LEASED(attempt k, deadline) -> DONE, or back to QUEUED when the lease expires or
its agent dies, or DEAD after `max_attempts` leases (or a non-retryable failure), with the reason.
A result counts only for the task's latest attempt: a late result from a superseded lease is
"stale" and ignored; the same result twice is a "duplicate". After a hub restart every LEASED task is
QUEUED again with its attempt kept, so an agent replaying its outbox still lands its result if nobody
has leased the task again meanwhile.

    ledger = Ledger("run/ledger.sqlite")
    [task_id] = ledger.submit([GenerateTask(prompts=[...])])
    leases = ledger.lease("generate", agent="solver-0", limit=1, lease_s=30, now=time.time())
    ledger.complete(task_id, leases[0].attempt, GenerateResult(samples=[...]), now=time.time())

The SQL is plain (no SQLite-only types or upserts beyond INSERT OR IGNORE), so a server database can
take its place later.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgpack
from pydantic import TypeAdapter

from protocol.messages import (
    TASK_KIND_OF,
    CreateResult,
    GenerateResult,
    JudgeResult,
    Prompt,
    QueueStats,
    ResultPayload,
    TaskKind,
    TaskPayload,
    TrainingReport,
)

TASK_ADAPTER: TypeAdapter[TaskPayload] = TypeAdapter(TaskPayload)
RESULT_ADAPTER: TypeAdapter[ResultPayload] = TypeAdapter(ResultPayload)
Outcome = Literal["accepted", "duplicate", "stale", "unknown"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, agent TEXT, deadline REAL, priority INTEGER NOT NULL,
    payload BLOB NOT NULL, result BLOB, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (kind, state, priority, created);
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (state, deadline);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL, parent_id TEXT, mutation TEXT,
    difficulty INTEGER, round INTEGER, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    sample_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, task_id TEXT NOT NULL, policy_version INTEGER NOT NULL,
    text TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_prompt ON samples (prompt_id);
CREATE TABLE IF NOT EXISTS verdicts (
    sample_id TEXT PRIMARY KEY, score REAL NOT NULL, judgment TEXT, task_id TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submits (
    key TEXT PRIMARY KEY, task_ids TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY, parent_version INTEGER NOT NULL, path TEXT, num_bytes INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    name TEXT NOT NULL, value REAL NOT NULL, step INTEGER, policy_version INTEGER, task_id TEXT,
    created REAL NOT NULL);
"""
SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Lease:
    task_id: str
    attempt: int
    deadline: float
    task: TaskPayload


class Ledger:
    def __init__(self, path: str | os.PathLike, *, max_attempts: int = 3, durable: bool = False) -> None:
        """`durable=True` also fsyncs every commit (synchronous=FULL): survives power loss, not just crashes."""
        self.path, self.max_attempts = Path(path), max_attempts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One owner at a time (the hub opens it in start() and hands it to its loop thread), so the
        # same-thread check would only forbid that hand-over; transactions are explicit below.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self._tx():  # statement by statement: executescript would commit outside the transaction
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(statement)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if found != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: ledger schema {found}, this selfplay reads {SCHEMA_VERSION}")

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def _any(self, query: str, args: tuple) -> bool:
        """Whether a read finds a row. The hub is the ledger's one writer, so what it reads outside a
        transaction still holds when its next transaction starts."""
        return self.db.execute(query, args).fetchone() is not None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ tasks
    def submit(self, tasks: list[TaskPayload], *, priority: int = 0, key: str | None = None,
               now: float | None = None) -> list[str]:
        """Queue `tasks`; their new ids. With a `key` seen before: that submission's ids, and nothing queued."""
        now = time.time() if now is None else now
        ids = [os.urandom(8).hex() for _ in tasks]
        with self._tx():
            if key is not None:
                row = self.db.execute("SELECT task_ids FROM submits WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    first = row[0].split(",")
                    if len(first) != len(tasks):
                        raise ValueError(f"submit key {key[:64]!r} was used for {len(first)} tasks, not {len(tasks)}")
                    return first
                self.db.execute("INSERT INTO submits VALUES (?, ?, ?)", (key, ",".join(ids), now))
            for task_id, task in zip(ids, tasks, strict=True):
                self.db.execute(
                    "INSERT INTO tasks (task_id, kind, state, attempt, max_attempts, priority, payload, created, updated)"
                    " VALUES (?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                    (task_id, TASK_KIND_OF[task.kind], self.max_attempts, priority, _pack(task), now, now))
                if task.kind == "generate_task":
                    self._record_prompts(task.prompts, now)
        return ids

    def lease(self, kind: TaskKind, agent: str, limit: int, lease_s: float, now: float) -> list[Lease]:
        """Up to `limit` queued tasks of `kind` (highest priority, then oldest) leased to `agent`."""
        if limit <= 0 or not self._any("SELECT 1 FROM tasks WHERE kind = ? AND state = 'queued' LIMIT 1", (kind,)):
            return []  # the hub asks on every turn of its loop: an empty queue costs a read, not a write lock
        with self._tx():
            rows = self.db.execute(
                "SELECT task_id, attempt, payload FROM tasks WHERE kind = ? AND state = 'queued'"
                " ORDER BY priority DESC, created, task_id LIMIT ?", (kind, limit)).fetchall()
            leases = []
            for task_id, attempt, payload in rows:
                self.db.execute("UPDATE tasks SET state = 'leased', attempt = ?, agent = ?, deadline = ?, updated = ?"
                                " WHERE task_id = ?", (attempt + 1, agent, now + lease_s, now, task_id))
                leases.append(Lease(task_id, attempt + 1, now + lease_s, TASK_ADAPTER.validate_python(_unpack(payload))))
        return leases

    def queued(self, kind: TaskKind) -> int:
        return self.db.execute("SELECT COUNT(*) FROM tasks WHERE kind = ? AND state = 'queued'", (kind,)).fetchone()[0]

    def renew(self, task_id: str, attempt: int, agent: str, lease_s: float, now: float) -> float | None:
        """New deadline, or None when the lease is no longer this agent's (expired and re-leased, done)."""
        with self._tx():
            changed = self.db.execute(
                "UPDATE tasks SET deadline = ?, updated = ? WHERE task_id = ? AND attempt = ? AND agent = ?"
                " AND state = 'leased'", (now + lease_s, now, task_id, attempt, agent)).rowcount
        return now + lease_s if changed else None

    def unlease(self, task_id: str, attempt: int, now: float) -> None:
        """A lease whose assignment never left the hub (the agent was gone or full): back to the queue,
        and the attempt it would have used is given back."""
        with self._tx():
            self.db.execute("UPDATE tasks SET state = 'queued', attempt = attempt - 1, agent = NULL, deadline = NULL,"
                            " updated = ? WHERE task_id = ? AND attempt = ? AND state = 'leased'",
                            (now, task_id, attempt))

    def reclaim(self, task_id: str, attempt: int, agent: str, lease_s: float, now: float) -> bool:
        """Give a requeued lease back to the agent that holds its result (same attempt), if nobody
        else has leased it since. Used when an agent reconnects after a hub restart."""
        with self._tx():
            changed = self.db.execute(
                "UPDATE tasks SET state = 'leased', agent = ?, deadline = ?, updated = ? WHERE task_id = ?"
                " AND attempt = ? AND state = 'queued'", (agent, now + lease_s, now, task_id, attempt)).rowcount
        return bool(changed)

    def complete(self, task_id: str, attempt: int, result: ResultPayload, now: float) -> Outcome:
        """Record a result: committed (with its samples, verdicts, prompts or metrics) before returning."""
        with self._tx():
            row = self.db.execute("SELECT state, attempt FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                return "unknown"
            state, current = row
            if state == "done":
                return "duplicate" if current == attempt else "stale"
            if attempt != current or state not in ("leased", "queued"):
                return "stale"
            self.db.execute("UPDATE tasks SET state = 'done', result = ?, deadline = NULL, updated = ?"
                            " WHERE task_id = ?", (_pack(result), now, task_id))  # agent kept: who did it
            self._record_result(task_id, result, now)
        return "accepted"

    def fail(self, task_id: str, attempt: int, reason: str, retryable: bool, now: float) -> str | None:
        """An agent gives up: back to the queue (retryable, attempts left) or DEAD. Returns the new state."""
        with self._tx():
            row = self.db.execute("SELECT attempt, max_attempts FROM tasks WHERE task_id = ? AND state = 'leased'",
                                  (task_id,)).fetchone()
            if row is None or row[0] != attempt:
                return None
            state = "queued" if retryable and row[0] < row[1] else "dead"
            self._set_state(task_id, state, reason, now)
        return state

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Leases past their deadline go back to the queue, or DEAD once out of attempts."""
        if not self._any("SELECT 1 FROM tasks WHERE state = 'leased' AND deadline < ? LIMIT 1", (now,)):
            return []  # the usual case, checked on every turn of the hub's loop without taking the write lock
        with self._tx():
            rows = self.db.execute("SELECT task_id, attempt, max_attempts FROM tasks WHERE state = 'leased'"
                                   " AND deadline < ?", (now,)).fetchall()
            return [(task_id, self._requeue_or_bury(task_id, attempt, limit, "lease expired", now))
                    for task_id, attempt, limit in rows]

    def release_agent(self, agent: str, now: float) -> list[tuple[str, str]]:
        """Every lease of a dead agent goes back to the queue (or DEAD once out of attempts)."""
        with self._tx():
            rows = self.db.execute("SELECT task_id, attempt, max_attempts FROM tasks WHERE state = 'leased'"
                                   " AND agent = ?", (agent,)).fetchall()
            return [(task_id, self._requeue_or_bury(task_id, attempt, limit, f"agent {agent} died", now))
                    for task_id, attempt, limit in rows]

    def recover(self, now: float) -> int:
        """At hub start: leases held by the previous incarnation return to the queue, attempts kept."""
        with self._tx():
            return self.db.execute("UPDATE tasks SET state = 'queued', agent = NULL, deadline = NULL, updated = ?"
                                   " WHERE state = 'leased'", (now,)).rowcount

    def _requeue_or_bury(self, task_id: str, attempt: int, max_attempts: int, reason: str, now: float) -> str:
        state = "queued" if attempt < max_attempts else "dead"
        self._set_state(task_id, state, f"{reason} (attempt {attempt} of {max_attempts})", now)
        return state

    def _set_state(self, task_id: str, state: str, reason: str, now: float) -> None:
        self.db.execute("UPDATE tasks SET state = ?, reason = ?, agent = NULL, deadline = NULL, updated = ?"
                        " WHERE task_id = ?", (state, reason, now, task_id))

    # ------------------------------------------------------------------ domain records
    def _record_prompts(self, prompts: list[Prompt], now: float, round_: int | None = None) -> None:
        for p in prompts:
            self.db.execute("INSERT OR IGNORE INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (p.prompt_id, p.text, p.source, p.parent_id, p.mutation, p.difficulty, round_,
                             _pack(p), now))

    def _record_result(self, task_id: str, result: ResultPayload, now: float) -> None:
        if isinstance(result, GenerateResult):
            for s in result.samples:
                self.db.execute("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (s.sample_id, s.prompt_id, task_id, s.policy_version, s.text, _pack(s), now))
        elif isinstance(result, JudgeResult):
            for v in result.verdicts:
                self.db.execute("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?)",
                                (v.sample_id, v.score, v.judgment, task_id, now))
        elif isinstance(result, CreateResult):
            self._record_prompts(result.prompts, now, result.round)
        elif isinstance(result, TrainingReport):
            for name, value in result.metrics.items():
                self.db.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                                (name, value, result.step, result.policy_version, task_id, now))

    def record_policy(self, version: int, parent_version: int, path: str | None, num_bytes: int, now: float) -> None:
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO policies VALUES (?, ?, ?, ?, ?)",
                            (version, parent_version, path, num_bytes, now))

    # ------------------------------------------------------------------ queries
    def policy_version(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM policies").fetchone()[0]

    def reward_by_version(self, eval_prompts: bool = False) -> dict[int, tuple[float, int]]:
        """Mean verdict score and count of the samples each policy version produced: on training prompts
        (a round's reward), or on the held-out evaluation prompts."""
        rows = self.db.execute(
            "SELECT s.policy_version, AVG(v.score), COUNT(*) FROM verdicts v JOIN samples s ON s.sample_id = v.sample_id"
            " JOIN prompts p ON p.prompt_id = s.prompt_id WHERE (p.source = 'eval') = ?"
            " GROUP BY s.policy_version ORDER BY s.policy_version", (eval_prompts,))
        return {version: (mean, count) for version, mean, count in rows}

    def queue_stats(self) -> dict[str, QueueStats]:
        stats: dict[str, dict[str, int]] = {}
        for kind, state, count in self.db.execute("SELECT kind, state, COUNT(*) FROM tasks GROUP BY kind, state"):
            stats.setdefault(kind, {})[state] = count
        return {kind: QueueStats(**counts) for kind, counts in stats.items()}

    def states(self, task_ids) -> dict[str, str]:
        """task id -> state, for those of `task_ids` the ledger has."""
        ids = list(task_ids)
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):  # SQLite caps bound parameters per statement
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found |= dict(self.db.execute(f"SELECT task_id, state FROM tasks WHERE task_id IN ({marks})", chunk))
        return found

    def task(self, task_id: str) -> dict | None:
        row = self.db.execute("SELECT task_id, kind, state, attempt, agent, deadline, reason, result FROM tasks"
                              " WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        keys = ("task_id", "kind", "state", "attempt", "agent", "deadline", "reason", "result")
        record = dict(zip(keys, row, strict=True))
        record["result"] = RESULT_ADAPTER.validate_python(_unpack(record["result"])) if record["result"] else None
        return record

    def prompts(self, source: str | None = None) -> list[Prompt]:
        query, args = "SELECT payload FROM prompts", ()
        if source is not None:
            query, args = query + " WHERE source = ?", (source,)
        return [Prompt.model_validate(_unpack(p)) for (p,) in self.db.execute(query + " ORDER BY created", args)]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer, nothing half-applied."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _pack(model: object) -> bytes:
    return msgpack.packb(model.model_dump(mode="python"))  # type: ignore[attr-defined]


def _unpack(blob: bytes) -> object:
    return msgpack.unpackb(blob, raw=False)
