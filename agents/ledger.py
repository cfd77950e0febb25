"""The hub's ledger: tasks and their leases, prompts with lineage, samples, verdicts, policies, metrics.

SQLite in WAL mode, one connection owned by the hub's loop. Every method that changes state commits
before it returns, so the hub can acknowledge right after: an acknowledged result is on disk.

Task life: QUEUED -> LEASED(attempt k, deadline) -> DONE, or back to QUEUED when the lease expires or
its agent dies, or DEAD after `max_attempts` leases (or a non-retryable failure), with the reason.
A result counts only for the task's latest attempt, and only from the agent that holds it (`agent` is
kept when a lease goes back to the queue): a late result from a superseded lease is "stale" and
ignored; the same result twice is a "duplicate"; another agent's is "forbidden", and a result of the
wrong kind, or whose samples or verdicts are not the task's own, is refused (`InvalidResult`). After a
hub restart every LEASED task is QUEUED again with its attempt and holder kept, so an agent replaying
its outbox still lands its result if nobody has leased the task again meanwhile.

A run directory's ledger is opened with `open_run_ledger`, which refuses to start on a ledger that is
missing or empty where the run had one (RUN/ledger.id names it), damaged (SQLite's quick_check), or
another run's: a hub never starts an empty ledger in place of a lost one without a word.

    ledger = Ledger("run/ledger.sqlite")
    [task_id] = ledger.submit([GenerateTask(prompts=[...])])
    leases = ledger.lease("generate", agent="solver-0", limit=1, lease_s=30, now=time.time())
    ledger.complete(task_id, leases[0].attempt, GenerateResult(samples=[...]), now=time.time())

What it keeps, and what it costs to ask:
- each result's bytes once: in its task row, or for a result over INLINE_BYTES in a content-addressed blob
  store (agents/blobs.py: files in RUN/blobs/ beside SQLite, a table of PostgreSQL); samples and verdicts are
  index rows (ids, version, score) pointing into them, never second copies;
- running tallies, updated in the transaction that changes what they count: tasks by kind and state
  (`queue_stats`) and verdict scores by prompt source and policy version (`reward_by_version`), so the
  questions `status` asks cost the same on a ledger of ten tasks or ten million;
- task ids that grow with time (microseconds, then random digits), so new rows land at the end of every
  index and inserts stay flat as tables grow.

The SQL is plain (standard upserts, ON CONFLICT), so a server database can take its place.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import msgpack
import structlog
from pydantic import TypeAdapter

from agents.blobs import Blobs, open_blobs
from agents.database import Database, DatabaseError, SqliteDatabase, open_database
from protocol.messages import (
    RESULT_KIND_OF,
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

log = structlog.get_logger("agents.ledger")
TASK_ADAPTER: TypeAdapter[TaskPayload] = TypeAdapter(TaskPayload)
RESULT_ADAPTER: TypeAdapter[ResultPayload] = TypeAdapter(ResultPayload)
Outcome = Literal["accepted", "duplicate", "stale", "unknown", "forbidden"]
PromptSet = Literal["train", "eval", "validation"]  # training prompts (seed, evolved), held-out test, validation
MARKER = "ledger.id"  # in the run directory: the id of the run's ledger, written when the ledger is created
URL_FILE = "ledger.url"  # in the run directory of a PostgreSQL ledger: where it is (for reports and status)
INLINE_BYTES = SqliteDatabase.inline_bytes  # a result larger goes to the blob store (both databases alike)
TRAIN_SOURCES = ("seed", "evolved")  # the prompt sources a round's reward is measured on


class LedgerError(RuntimeError):
    """The run's ledger cannot be used as it is (missing, emptied, damaged, another run's); one line says why."""


class InvalidResult(ValueError):
    """A result that does not belong to its task: the wrong kind, or samples and verdicts of other tasks."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, agent TEXT, deadline REAL, priority INTEGER NOT NULL,
    payload BLOB NOT NULL, result BLOB, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    result_bytes INTEGER, result_blob TEXT);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (kind, state, priority DESC, created, task_id);  -- lease order
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (state, deadline);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL, parent_id TEXT, mutation TEXT,
    difficulty INTEGER, round INTEGER, payload BLOB NOT NULL, created REAL NOT NULL, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    sample_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, task_id TEXT NOT NULL, policy_version INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS samples_prompt ON samples (prompt_id);
CREATE TABLE IF NOT EXISTS verdicts (
    sample_id TEXT PRIMARY KEY, score REAL NOT NULL, task_id TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS submits (
    key TEXT PRIMARY KEY, task_ids TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY, parent_version INTEGER NOT NULL, path TEXT, num_bytes INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    name TEXT NOT NULL, value REAL NOT NULL, step INTEGER, policy_version INTEGER, task_id TEXT,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, policy_version);
CREATE TABLE IF NOT EXISTS task_counts (
    kind TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (kind, state));
CREATE TABLE IF NOT EXISTS rewards (
    source TEXT NOT NULL, policy_version INTEGER NOT NULL, total REAL NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (source, policy_version));
"""
LATE_SCHEMA = """
CREATE INDEX IF NOT EXISTS tasks_blob ON tasks (result_blob) WHERE result_blob IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (updated) WHERE state IN ('done', 'dead');
CREATE INDEX IF NOT EXISTS samples_task ON samples (task_id);
CREATE INDEX IF NOT EXISTS verdicts_task ON verdicts (task_id);
CREATE INDEX IF NOT EXISTS submits_created ON submits (created);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS prompts_used ON prompts (used, prompt_id) WHERE source IN ('seed', 'evolved');
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (kind, created);
"""  # after a migration: the columns it indexes are new in schemas 2 and 3
SCHEMA_VERSION = "3"  # 2: results stored once (blobs), index-only samples and verdicts, tallies, metrics index;
#                       3: when each prompt was last submitted (prompts.used), for retention
ARCHIVED_PROMPTS = "archived_prompts/"  # totals: archived_prompts/SOURCE/MUTATION (MUTATION empty for None) -> count


@dataclass(frozen=True)
class Lease:
    task_id: str
    attempt: int
    deadline: float
    task: TaskPayload
    previous: str | None = None  # who held the attempt before it (given back if this lease is never sent)


class Ledger:
    def __init__(self, where: str | os.PathLike, *, max_attempts: int = 3, durable: bool = False,
                 check: bool = True, blobs: str | os.PathLike | None = None) -> None:
        """`where`: a SQLite file, or a postgresql:// URL (agents/database.py). `durable=True` also fsyncs every
        SQLite commit (synchronous=FULL) and every blob: survives power loss, not just crashes. `check` runs
        SQLite's quick_check first (it reads the whole file once): a damaged ledger raises LedgerError. `blobs`:
        the directory where a SQLite ledger's results over its inline size go (default: `blobs` beside the file;
        a PostgreSQL ledger keeps them in its table `blobs`)."""
        self.where, self.max_attempts = str(where), max_attempts
        try:
            self.db = open_database(where, durable=durable, check=check)
        except DatabaseError as e:
            raise LedgerError(str(e)) from None
        self._last_id_us = 0
        try:
            self._setup()
        except BaseException:
            self.db.close()
            raise
        try:  # after the checks: nothing is created in a database that is not this ledger
            self.blobs = open_blobs(where, blobs, durable=durable)
        except DatabaseError as e:
            self.db.close()
            raise LedgerError(str(e)) from None

    def _setup(self) -> None:
        with self._tx():  # statement by statement: executescript would commit outside the transaction
            for statement in self.db.ddl(SCHEMA):
                self.db.execute(statement)
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", (SCHEMA_VERSION,))
            self.created = bool(self.db.execute("INSERT INTO meta VALUES ('ledger_id', ?) ON CONFLICT DO NOTHING",
                                                (os.urandom(8).hex(),)).rowcount)  # a new ledger, not one reopened
            found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            if found == "1" and self.db.kind == "sqlite":
                _migrate_from_1(self.db)
                found = "2"
            if found == "2":
                _migrate_from_2(self.db)
            elif found != SCHEMA_VERSION:
                raise LedgerError(f"{self.where}: ledger schema {found}, this selfplay reads {SCHEMA_VERSION}")
            for statement in self.db.ddl(LATE_SCHEMA):
                self.db.execute(statement)
        self.ledger_id: str = self.db.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]

    def _tx(self) -> AbstractContextManager:
        return self.db.transaction()

    def close(self) -> None:
        self.blobs.close()
        self.db.close()

    def _new_ids(self, n: int, now: float) -> list[str]:
        """Ids that sort by creation: 13 hex digits of microseconds (strictly increasing in this process), then 3
        random ones (another process's ids in the same microsecond)."""
        ids = []
        for _ in range(n):
            self._last_id_us = max(self._last_id_us + 1, int(now * 1e6))
            ids.append(f"{self._last_id_us:013x}{os.urandom(2).hex()[:3]}")
        return ids

    def _move(self, kind: str, before: str | None, after: str, n: int = 1) -> None:
        """Keep the task tally: `n` tasks of `kind` went from state `before` (None: new) to `after`."""
        for state, delta in ((before, -n), (after, n)):
            if state is not None and n:
                self.db.execute("INSERT INTO task_counts VALUES (?, ?, ?)"
                                " ON CONFLICT (kind, state) DO UPDATE SET n = task_counts.n + excluded.n", (kind, state, delta))

    def _add(self, name: str, value: int) -> None:
        self.db.execute("INSERT INTO totals VALUES (?, ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = totals.value + excluded.value", (name, value))

    def totals(self) -> dict[str, int]:
        """Running totals: blob_bytes (results held as blobs), archived_tasks, archived_bytes (results archived),
        archived_prompts, and archived_prompts/SOURCE/MUTATION (by source and mutation)."""
        return dict(self.db.execute("SELECT name, value FROM totals"))

    def size_bytes(self) -> int:
        """The ledger on disk: its file, its WAL and its blobs, or a PostgreSQL ledger's tables and its blobs. The
        blobs are counted by their running total (no directory walk; and a blobs table's size on the server would
        never fall after a retention pass, while the blobs retention holds are most of the ledger)."""
        blob_bytes = self.totals().get("blob_bytes", 0)
        if self.blobs.table is not None:
            return self.db.size_bytes(without=self.blobs.table) + blob_bytes
        return self.db.size_bytes() + blob_bytes

    # ------------------------------------------------------------------ tasks
    def submit(self, tasks: list[TaskPayload], *, priority: int = 0, key: str | None = None,
               now: float | None = None) -> list[str]:
        """Queue `tasks`; their new ids. With a `key` seen before: that submission's ids, and nothing queued."""
        now = time.time() if now is None else now
        ids = self._new_ids(len(tasks), now)
        with self._tx():
            if key is not None:
                row = self.db.execute("SELECT task_ids FROM submits WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    first = row[0].split(",")
                    if len(first) != len(tasks):
                        raise ValueError(f"submit key {key[:64]!r} was used for {len(first)} tasks, not {len(tasks)}")
                    return first
                self.db.execute("INSERT INTO submits VALUES (?, ?, ?)", (key, ",".join(ids), now))
            kinds = Counter(TASK_KIND_OF[task.kind] for task in tasks)
            self.db.executemany(
                "INSERT INTO tasks (task_id, kind, state, attempt, max_attempts, priority, payload, created, updated)"
                " VALUES (?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                [(task_id, TASK_KIND_OF[task.kind], self.max_attempts, priority, _pack(task), now, now)
                 for task_id, task in zip(ids, tasks, strict=True)])
            self._record_prompts([p for task in tasks if task.kind == "generate_task" for p in task.prompts], now)
            for kind, n in kinds.items():
                self._move(kind, None, "queued", n)
        return ids

    def lease(self, kind: TaskKind, agent: str, limit: int, lease_s: float, now: float) -> list[Lease]:
        """Up to `limit` queued tasks of `kind` (highest priority, then oldest) leased to `agent`."""
        if limit <= 0 or not self.queued(kind):
            return []  # the hub asks on every turn of its loop: an empty queue costs a read, not a write lock
        with self._tx():
            rows = self.db.execute(
                "SELECT task_id, attempt, payload, agent FROM tasks WHERE kind = ? AND state = 'queued'"
                " ORDER BY priority DESC, created, task_id LIMIT ?" + self.db.skip_locked, (kind, limit)).fetchall()
            self.db.executemany("UPDATE tasks SET state = 'leased', attempt = ?, agent = ?, deadline = ?, updated = ?"
                                " WHERE task_id = ?", [(attempt + 1, agent, now + lease_s, now, task_id)
                                                       for task_id, attempt, _, _ in rows])
            leases = [Lease(task_id, attempt + 1, now + lease_s, TASK_ADAPTER.validate_python(_unpack(payload)),
                            previous) for task_id, attempt, payload, previous in rows]
            self._move(kind, "queued", "leased", len(leases))
        return leases

    def queued(self, kind: str) -> int:
        """Tasks of `kind` waiting in the queue (a tally: one row read, however long the run)."""
        row = self.db.execute("SELECT n FROM task_counts WHERE kind = ? AND state = 'queued'", (kind,)).fetchone()
        return row[0] if row else 0

    def renew(self, task_id: str, attempt: int, agent: str, lease_s: float, now: float) -> float | None:
        """New deadline, or None when the lease is no longer this agent's (expired and re-leased, done)."""
        with self._tx():
            changed = self.db.execute(
                "UPDATE tasks SET deadline = ?, updated = ? WHERE task_id = ? AND attempt = ? AND agent = ?"
                " AND state = 'leased'", (now + lease_s, now, task_id, attempt, agent)).rowcount
        return now + lease_s if changed else None

    def unlease(self, lease: Lease, now: float) -> None:
        """A lease whose assignment never left the hub (the agent was gone or full): back to the queue, with the
        attempt it would have used and the previous attempt's holder (whose late result still counts) given back."""
        with self._tx():
            changed = self.db.execute(
                "UPDATE tasks SET state = 'queued', attempt = attempt - 1, agent = ?, deadline = NULL,"
                " updated = ? WHERE task_id = ? AND attempt = ? AND state = 'leased'",
                (lease.previous, now, lease.task_id, lease.attempt)).rowcount
            self._move(TASK_KIND_OF[lease.task.kind], "leased", "queued", changed)

    def reclaim(self, task_id: str, attempt: int, agent: str, lease_s: float, now: float) -> bool:
        """Give a requeued lease back to the agent that held it and holds its result (same attempt), if nobody
        else has leased it since. Used when an agent reconnects (after a hub restart, or a partition)."""
        with self._tx():
            row = self.db.execute("SELECT kind FROM tasks WHERE task_id = ? AND attempt = ? AND state = 'queued'"
                                  " AND agent = ?" + self.db.for_update, (task_id, attempt, agent)).fetchone()
            if row is None:
                return False
            self.db.execute("UPDATE tasks SET state = 'leased', deadline = ?, updated = ? WHERE task_id = ?",
                            (now + lease_s, now, task_id))
            self._move(row[0], "queued", "leased")
        return True

    def pack(self, result: ResultPayload, packed: bytes | memoryview | None = None) -> PackedResult:
        """A result in its stored form, a large one already written to the blob store (and pinned there until
        `settle`, so no deletion takes it meanwhile). Touches no table, so it can run on any thread (the hub packs
        large results off its loop) before `complete` commits it; whoever packs it settles it."""
        if packed is None:
            packed = _pack(result)
        inline = self.db.inline_bytes
        blob = self.blobs.put(packed) if inline is not None and len(packed) > inline else None
        return PackedResult(result, None if blob else bytes(packed), len(packed), blob)

    def settle(self, packed: PackedResult, recorded: bool) -> None:
        """Done with a packed result (`pack` pinned its blob): unpin it, and if it was not recorded (refused, stale, a
        repeat) delete its blob, unless a task's row or another packed result still in flight names the same bytes.
        Never raises: a blob left behind is an orphan for `sweep`."""
        if not packed.blob:
            return
        self.blobs.unpin(packed.blob)
        try:
            if not recorded and not self.names_blob(packed.blob):
                self.blobs.delete(packed.blob)
        except Exception as e:
            log.warning("blob not deleted", blob=packed.blob, error=f"{type(e).__name__}: {e}")

    def complete(self, task_id: str, attempt: int, result: ResultPayload | PackedResult, now: float,
                 agent: str | None = None) -> Outcome:
        """Record a result: committed (with its samples, verdicts, prompts or metrics) before returning. With an
        `agent`, only that agent's, if it holds the attempt ("forbidden" otherwise). A result of the wrong kind, or
        whose samples or verdicts are not its task's, raises InvalidResult and changes nothing."""
        [outcome] = self.complete_many([(task_id, attempt, result, agent)], now)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def complete_many(self, results: list[tuple[str, int, ResultPayload | PackedResult, str | None]], now: float
                      ) -> list[Outcome | Exception]:
        """`complete` for several results (task id, attempt, result, agent) in one transaction, one commit: a group
        commit. Each is decided on its own (a savepoint): an invalid one is returned as its InvalidResult (any other
        failure as its exception) and leaves nothing behind, without undoing the others."""
        outcomes: list[Outcome | Exception] = []
        packed_here: list[tuple[PackedResult, bool]] = []  # packed in _complete, and whether it was recorded
        try:
            self._complete_each(results, now, outcomes, packed_here)
        except BaseException:  # the commit failed (a full disk): none was recorded
            packed_here = [(packed, False) for packed, _ in packed_here]
            raise
        finally:
            for packed, recorded in packed_here:  # after the commit (settle never raises)
                self.settle(packed, recorded)
        return outcomes

    def _complete_each(self, results: list[tuple[str, int, ResultPayload | PackedResult, str | None]], now: float,
                       outcomes: list[Outcome | Exception], packed_here: list[tuple[PackedResult, bool]]) -> None:
        with self._tx():
            for task_id, attempt, result, agent in results:
                written: list[PackedResult] = []
                self.db.execute("SAVEPOINT result")
                try:
                    outcome: Outcome | Exception = self._complete(task_id, attempt, result, now, agent, written)
                except Exception as e:  # this result fails alone, the others are recorded
                    self.db.execute("ROLLBACK TO SAVEPOINT result")
                    outcome = InvalidResult(f"cannot be stored: {str(e).strip()[:300]}") if isinstance(
                        e, self.db.DataError) else e  # a value the database cannot hold (PostgreSQL: a NUL in text)
                self.db.execute("RELEASE SAVEPOINT result")
                outcomes.append(outcome)
                packed_here += [(packed, outcome == "accepted") for packed in written]

    def _complete(self, task_id: str, attempt: int, result: ResultPayload | PackedResult, now: float,
                  agent: str | None, written: list[PackedResult]) -> Outcome:
        row = self.db.execute("SELECT state, attempt, agent, kind, payload FROM tasks WHERE task_id = ?"
                              + self.db.for_update, (task_id,)).fetchone()
        if row is None:
            return "unknown"
        state, current, holder, kind, payload = row
        if state == "done":
            return "duplicate" if current == attempt else "stale"
        if attempt != current or state not in ("leased", "queued"):
            return "stale"
        if agent is not None and holder != agent:
            return "forbidden"
        packed = result if isinstance(result, PackedResult) else None
        result = packed.result if packed else result
        judged = _check_result(task_id, attempt, kind, payload, result, self.policy_version)
        if packed is None:
            packed = self.pack(result)
            written.append(packed)
        if packed.blob and not self.names_blob(packed.blob):  # a new file (identical results share one)
            self._add("blob_bytes", packed.num_bytes)
        self.db.execute("UPDATE tasks SET state = 'done', result = ?, result_bytes = ?, result_blob = ?,"
                        " deadline = NULL, updated = ? WHERE task_id = ?",  # agent kept: who did it
                        (packed.inline, packed.num_bytes, packed.blob, now, task_id))
        self._move(kind, state, "done")
        self._record_result(task_id, result, now, judged)
        return "accepted"

    def names_blob(self, digest: str) -> bool:
        """Whether a task's row names this blob."""
        return self.db.execute("SELECT 1 FROM tasks WHERE result_blob = ? LIMIT 1", (digest,)).fetchone() is not None

    def fail(self, task_id: str, attempt: int, reason: str, retryable: bool, now: float,
             agent: str | None = None) -> str | None:
        """An agent gives up: back to the queue (retryable, attempts left) or DEAD. Returns the new state; None when
        the attempt is no longer leased; "forbidden" when another agent holds it (with `agent` given)."""
        with self._tx():
            row = self.db.execute("SELECT attempt, max_attempts, agent, kind FROM tasks WHERE task_id = ?"
                                  " AND state = 'leased'" + self.db.for_update, (task_id,)).fetchone()
            if row is None or row[0] != attempt:
                return None
            if agent is not None and row[2] != agent:
                return "forbidden"
            state = "queued" if retryable and row[0] < row[1] else "dead"
            self._set_state(task_id, row[3], state, reason, now)
        return state

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Leases past their deadline go back to the queue, or DEAD once out of attempts."""
        if self.db.execute("SELECT 1 FROM tasks WHERE state = 'leased' AND deadline < ? LIMIT 1", (now,)).fetchone() \
                is None:  # the usual case, checked on every turn of the hub's loop without taking the write lock
            return []
        with self._tx():
            rows = self.db.execute("SELECT task_id, attempt, max_attempts, kind FROM tasks WHERE state = 'leased'"
                                   " AND deadline < ?" + self.db.for_update, (now,)).fetchall()
            return [(task_id, self._requeue_or_bury(task_id, kind, attempt, limit, "lease expired", now))
                    for task_id, attempt, limit, kind in rows]

    def release_agent(self, agent: str, now: float) -> list[tuple[str, str]]:
        """Every lease of a dead agent goes back to the queue (or DEAD once out of attempts)."""
        with self._tx():
            rows = self.db.execute("SELECT task_id, attempt, max_attempts, kind FROM tasks WHERE state = 'leased'"
                                   " AND agent = ?" + self.db.for_update, (agent,)).fetchall()
            return [(task_id, self._requeue_or_bury(task_id, kind, attempt, limit, f"agent {agent} died", now))
                    for task_id, attempt, limit, kind in rows]

    def recover(self, now: float) -> int:
        """At hub start: leases held by the previous incarnation return to the queue, attempts and holders kept."""
        with self._tx():
            kinds = self.db.execute("SELECT kind, COUNT(*) FROM tasks WHERE state = 'leased' GROUP BY kind").fetchall()
            self.db.execute("UPDATE tasks SET state = 'queued', deadline = NULL, updated = ? WHERE state = 'leased'",
                            (now,))
            for kind, n in kinds:
                self._move(kind, "leased", "queued", n)
        return sum(n for _, n in kinds)

    def _requeue_or_bury(self, task_id: str, kind: str, attempt: int, max_attempts: int, reason: str,
                         now: float) -> str:
        state = "queued" if attempt < max_attempts else "dead"
        self._set_state(task_id, kind, state, f"{reason} (attempt {attempt} of {max_attempts})", now)
        return state

    def _set_state(self, task_id: str, kind: str, state: str, reason: str, now: float) -> None:
        """A leased task requeued or buried; `agent` keeps the last holder, whose late result of the same attempt
        still counts."""
        self.db.execute("UPDATE tasks SET state = ?, reason = ?, deadline = NULL, updated = ?"
                        " WHERE task_id = ?", (state, reason, now, task_id))
        self._move(kind, "leased", state)

    # ------------------------------------------------------------------ domain records
    def _record_prompts(self, prompts: list[Prompt], now: float, round_: int | None = None) -> None:
        """A prompt's row when it is first seen (its lineage); seen again (submitted in another round), when it was
        last used: retention archives training prompts no task has used for a while."""
        self.db.executemany("INSERT INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                            " ON CONFLICT (prompt_id) DO UPDATE SET used = excluded.used",
                            [(p.prompt_id, p.text, p.source, p.parent_id, p.mutation, p.difficulty, round_, _pack(p),
                              now, now) for p in prompts])

    def _record_result(self, task_id: str, result: ResultPayload, now: float,
                       judged: dict[str, tuple[str, int]] | None = None) -> None:
        """Index rows of a result (its bytes are stored once, in the task's row or blob), and the tallies."""
        if isinstance(result, GenerateResult):
            try:  # not ON CONFLICT DO NOTHING: a sample id another task holds is refused, never shadowed
                self.db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                                    [(s.sample_id, s.prompt_id, task_id, s.policy_version, now) for s in result.samples])
            except self.db.IntegrityError:  # _check_result's prefix rule makes this unreachable: kept as a guard
                raise InvalidResult("a sample id of this result belongs to another task") from None
        elif isinstance(result, JudgeResult):
            self._record_verdicts(task_id, result, now, judged or {})
        elif isinstance(result, CreateResult):
            self._record_prompts(result.prompts, now, result.round)
        elif isinstance(result, TrainingReport):
            self.db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                                [(name, value, result.step, result.policy_version, task_id, now)
                                 for name, value in result.metrics.items()])

    def _record_verdicts(self, task_id: str, result: JudgeResult, now: float,
                         judged: dict[str, tuple[str, int]]) -> None:
        """Each new verdict's row, and its score added to the tally of its sample's version and prompt source
        (`judged`: from the judge task, which names both)."""
        judged_before = self._found("verdicts", "sample_id", [v.sample_id for v in result.verdicts])
        scores: dict[str, float] = {}  # a verdict judged before (by another task) was counted then
        for v in result.verdicts:
            if v.sample_id not in judged_before:
                scores.setdefault(v.sample_id, v.score)  # and of two in one result, the first counts
        self.db.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?)",  # new ones only: one writer (the hub)
                            [(sample_id, score, task_id, now) for sample_id, score in scores.items()])
        tally: dict[tuple[str, int], list[float]] = {}
        for sample_id, score in scores.items():
            row = judged.get(sample_id)
            if row is not None:
                total = tally.setdefault(row, [0.0, 0])
                total[0] += score
                total[1] += 1
        for (source, version), (total, n) in tally.items():
            self.db.execute("INSERT INTO rewards VALUES (?, ?, ?, ?) ON CONFLICT (source, policy_version)"
                            " DO UPDATE SET total = rewards.total + excluded.total, n = rewards.n + excluded.n",
                            (source, version, total, n))

    def record_policy(self, version: int, parent_version: int, path: str | None, num_bytes: int, now: float) -> None:
        with self._tx():
            self.db.execute("INSERT INTO policies VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (version, parent_version, path, num_bytes, now))

    # ------------------------------------------------------------------ retention
    def finished(self, before: float, max_tasks: int, max_bytes: int) -> list[FinishedTask]:
        """The oldest finished (done or dead) tasks last changed before `before`, up to `max_tasks` of them and
        about `max_bytes` of payloads and results, with their stored results (for the archive)."""
        rows, total = [], 0
        for row in self.db.execute(
                "SELECT task_id, kind, state, attempt, agent, reason, created, updated, payload, result, result_blob,"
                " COALESCE(result_bytes, 0) FROM tasks WHERE state IN ('done', 'dead') AND updated < ?"
                " ORDER BY updated, task_id LIMIT ?", (before, max_tasks)):
            rows.append(FinishedTask(*row[:9], StoredResult(row[9], row[10]) if row[9] or row[10] else None, row[11]))
            total += len(row[8]) + row[11]
            if total >= max_bytes:
                break
        return rows

    def prune(self, tasks: list[FinishedTask], now: float, submits_before: float) -> int:
        """Delete archived tasks with their samples' and verdicts' rows, then their blobs no other row names, then
        submit keys older than `submits_before` whose tasks are all gone (a creator that submits such a key again
        gets new tasks: its old ones finished long ago). The tallies keep counting them. Returns tasks deleted."""
        ids, deleted = [t.task_id for t in tasks], 0
        with self._tx():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM samples WHERE task_id IN ({marks})", chunk)
                self.db.execute(f"DELETE FROM verdicts WHERE task_id IN ({marks})", chunk)
                deleted += self.db.execute(f"DELETE FROM tasks WHERE task_id IN ({marks})"
                                           " AND state IN ('done', 'dead')", chunk).rowcount
            self._add("archived_tasks", deleted)
            self._add("archived_bytes", sum(t.result_bytes for t in tasks))
            blobs = {t.stored.blob: t.result_bytes for t in tasks if t.stored and t.stored.blob}
            gone = [digest for digest in blobs if not self.names_blob(digest)]
            self._add("blob_bytes", -sum(blobs[digest] for digest in gone))
            for key, task_ids in self.db.execute("SELECT key, task_ids FROM submits WHERE created < ?"
                                                 " ORDER BY created LIMIT 500", (submits_before,)).fetchall():
                if not self.states(task_ids.split(",")):
                    self.db.execute("DELETE FROM submits WHERE key = ?", (key,))
        for digest in gone:  # after the commit: a crash before this leaves an orphan for BlobStore.sweep, not a hole
            self.blobs.delete(digest)
        self.db.compact()  # freed pages back to the disk, a few MiB a pass
        return deleted

    def stale_prompts(self, before: float, max_prompts: int) -> list[StalePrompt]:
        """The training prompts (seed, evolved) last submitted before `before` and before the oldest generate task
        the ledger holds, least recently used first, up to `max_prompts` (for the archive). A task naming a prompt
        was created when the prompt was submitted, or earlier; so every task that named these has left the ledger
        with its samples (archived), and none is queued or leased: no answer to them can still arrive. Held-out
        and validation prompts stay: the reports score every version on them."""
        oldest = self.db.execute("SELECT MIN(created) FROM tasks WHERE kind = 'generate'").fetchone()[0]
        before = before if oldest is None else min(before, oldest)
        return [StalePrompt(*row) for row in self.db.execute(
            f"SELECT prompt_id, source, mutation, round, created, used, payload FROM prompts p WHERE {_STALE}"
            " ORDER BY used, prompt_id LIMIT ?", (before, max_prompts))]

    def prune_prompts(self, prompts: list[StalePrompt], before: float) -> int:
        """Delete archived prompts still stale (one submitted again meanwhile stays, and is archived again later),
        counting them by source and mutation in the totals. Returns prompts deleted."""
        ids, gone = [p.prompt_id for p in prompts], []
        with self._tx():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(f"SELECT prompt_id, source, mutation FROM prompts p WHERE prompt_id IN ({marks})"
                                       f" AND {_STALE}", [*chunk, before]).fetchall()
                if rows:
                    self.db.execute(f"DELETE FROM prompts WHERE prompt_id IN ({','.join('?' * len(rows))})",
                                    [row[0] for row in rows])
                gone += rows
            for (source, mutation), n in Counter((row[1], row[2] or "") for row in gone).items():
                self._add(f"{ARCHIVED_PROMPTS}{source}/{mutation}", n)
            self._add("archived_prompts", len(gone))
        self.db.compact()
        return len(gone)

    # ------------------------------------------------------------------ queries
    def policy_version(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM policies").fetchone()[0]

    def reward_by_version(self, prompts: PromptSet = "train") -> dict[int, tuple[float, int]]:
        return reward_by_version(self.db, prompts)

    def restores(self) -> dict[int, int]:
        return restores(self.db)

    def queue_stats(self) -> dict[str, QueueStats]:
        """task kind -> tasks in each state (the tally: as cheap at ten million tasks as at ten)."""
        stats: dict[str, dict[str, int]] = {}
        for kind, state, count in self.db.execute("SELECT kind, state, n FROM task_counts"):
            stats.setdefault(kind, {})[state] = count
        return {kind: QueueStats(**counts) for kind, counts in stats.items()}

    def states(self, task_ids: Iterable[str]) -> dict[str, str]:
        """task id -> state, for those of `task_ids` the ledger has."""
        return dict(self._select_in("SELECT task_id, state FROM tasks WHERE task_id IN ({})", list(task_ids)))

    def _found(self, table: str, column: str, values: list[str]) -> set[str]:
        """Those of `values` that `table` holds in `column`."""
        return {row[0] for row in self._select_in(f"SELECT {column} FROM {table} WHERE {column} IN ({{}})", values)}

    def _select_in(self, query: str, values: list) -> list[tuple]:
        """`query`'s rows for `values`, its IN list ({}) filled in chunks: SQLite caps bound parameters."""
        rows = []
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            rows += self.db.execute(query.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def task(self, task_id: str, max_result_bytes: int | None = None, decode: bool = True) -> dict | None:
        """A task's record; its result decoded unless larger than `max_result_bytes` (then None; `result_bytes`
        says how large it is either way). With decode=False the result is where it is stored (a StoredResult),
        for `stored_result` to decode elsewhere."""
        row = self.db.execute(
            "SELECT task_id, kind, state, attempt, agent, deadline, reason, result_bytes, result, result_blob"
            " FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        keys = ("task_id", "kind", "state", "attempt", "agent", "deadline", "reason", "result_bytes")
        record = dict(zip(keys, row[:8], strict=True))
        record["result_bytes"] = size = record["result_bytes"] or 0
        inline, blob = row[8], row[9]
        stored = StoredResult(inline, blob) if (inline is not None or blob) and (
            max_result_bytes is None or size <= max_result_bytes) else None
        record["result"] = stored_result(*stored, self.blobs) if stored and decode else stored
        return record

    def prompts(self, source: str | None = None) -> list[Prompt]:
        query, args = "SELECT payload FROM prompts", ()
        if source is not None:
            query, args = query + " WHERE source = ?", (source,)
        return [Prompt.model_validate(_unpack(p)) for (p,) in self.db.execute(query + " ORDER BY created", args)]


@dataclass(frozen=True)
class PackedResult:
    """A result in its stored form (Ledger.pack): its bytes inline, or the digest of the blob holding them."""

    result: ResultPayload
    inline: bytes | None
    num_bytes: int
    blob: str | None


class FinishedTask(NamedTuple):
    """A finished task as the archive takes it (Ledger.finished): its row, its payload and where its result is."""

    task_id: str
    kind: str
    state: str
    attempt: int
    agent: str | None
    reason: str | None
    created: float
    updated: float
    payload: bytes
    stored: StoredResult | None
    result_bytes: int


_STALE = ("source IN ('seed', 'evolved') AND used < ?"
          " AND NOT EXISTS (SELECT 1 FROM samples s WHERE s.prompt_id = p.prompt_id)")


class StalePrompt(NamedTuple):
    """A training prompt as the archive takes it (Ledger.stale_prompts): its row and its payload."""

    prompt_id: str
    source: str
    mutation: str | None
    round: int | None
    created: float
    used: float
    payload: bytes


class StoredResult(NamedTuple):
    """Where a result's bytes are: in its row (`inline`) or in the blob store (`blob`, a digest)."""

    inline: bytes | None
    blob: str | None


def stored_result(inline: bytes | None, blob: str | None, blobs: Blobs) -> ResultPayload:
    """A stored result decoded, from its row's bytes or its blob."""
    return RESULT_ADAPTER.validate_python(_unpack(inline if inline is not None else blobs.get(blob)))


def reward_by_version(db: Database, prompts: PromptSet = "train") -> dict[int, tuple[float, int]]:
    """policy version -> (mean verdict score, samples judged) of the samples it produced, versions in order: on the
    training prompts (seed and evolved: a round's reward), the held-out test prompts ("eval") or the validation
    prompts the creator promotes versions on. Read from the tallies: rows per version, not per verdict."""
    sources = TRAIN_SOURCES if prompts == "train" else (prompts,)
    rows = db.execute(
        "SELECT policy_version, SUM(total), CAST(SUM(n) AS BIGINT) FROM rewards"
        f" WHERE source IN ({', '.join('?' * len(sources))}) GROUP BY policy_version ORDER BY policy_version", sources)
    return {version: (total / count, count) for version, total, count in rows if count}


def restores(db: Database) -> dict[int, int]:
    """policy version -> the version it restored (a rollback: the trainer published that one's weights again), from
    the training reports' `restored_from` metric."""
    rows = db.execute("SELECT policy_version, value FROM metrics WHERE name = 'restored_from' ORDER BY policy_version")
    return {version: int(value) for version, value in rows}


def open_run_ledger(run_dir: str | os.PathLike, *, max_attempts: int = 3, check: bool = True,
                    url: str | None = None) -> Ledger:
    """The ledger of a run directory: RUN/ledger.sqlite, or with `url` a PostgreSQL database (whose URL is then
    kept in RUN/ledger.url, mode 0600, for the run's readers). Created with the directory's marker
    (RUN/ledger.id) when the run is new. Raises LedgerError, in one line, when the marker names a ledger that is
    missing, empty or another one (SQLite would silently start an empty database in its place, and every
    acknowledged task with it), or when another hub is writing that PostgreSQL ledger."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    recorded = marker.read_text().strip() if marker.exists() else None
    if url is None:
        where: str | Path = run_dir / "ledger.sqlite"
        size = where.stat().st_size if where.exists() else None
        if recorded and not size:
            state = "missing" if size is None else "empty (0 bytes)"
            raise LedgerError(f"{where} is {state}, but {marker} says this run has ledger {recorded}: restore the "
                              "ledger from a copy, or start a new run in another directory (the hub will not start an "
                              "empty ledger in its place)")
    else:
        where = url
    ledger = Ledger(where, max_attempts=max_attempts, check=check, blobs=run_dir / "blobs")
    shown = ledger.db.url_shown if url else where
    if recorded and recorded != ledger.ledger_id:
        ledger.close()
        raise LedgerError(f"{shown} is ledger {ledger.ledger_id}, but {marker} names ledger {recorded}: it belongs to "
                          "another run (or it was emptied)")
    if url and not recorded and not ledger.created:
        ledger.close()
        raise LedgerError(f"{shown} holds ledger {ledger.ledger_id} already, and {run_dir} is a new run: give a new run "
                          "an empty database (one database per run)")
    if url and not ledger.db.try_lock(int(ledger.ledger_id[:15], 16)):
        ledger.close()
        raise LedgerError(f"{shown}: another hub is writing this ledger (one hub per run)")
    if url:
        _write_private(run_dir / URL_FILE, url + "\n")
    if not recorded:
        tmp = marker.with_name(MARKER + ".tmp")
        tmp.write_text(ledger.ledger_id + "\n")
        os.replace(tmp, marker)
    return ledger


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _migrate_from_1(db: Database) -> None:
    """Schema 1 -> 2, once, inside the opening transaction: the tallies counted from the rows (the one time the
    whole ledger is read), the second copies of samples' and verdicts' data dropped, result sizes recorded."""
    db.execute("DROP INDEX tasks_queue")  # schema 1's could not give the lease order without sorting the queue
    db.execute("CREATE INDEX tasks_queue ON tasks (kind, state, priority DESC, created, task_id)")
    db.execute("ALTER TABLE tasks ADD COLUMN result_bytes INTEGER")
    db.execute("ALTER TABLE tasks ADD COLUMN result_blob TEXT")
    db.execute("UPDATE tasks SET result_bytes = length(result) WHERE result IS NOT NULL")
    db.execute("INSERT INTO task_counts SELECT kind, state, COUNT(*) FROM tasks GROUP BY kind, state")
    db.execute("INSERT INTO rewards SELECT p.source, s.policy_version, SUM(v.score), COUNT(*) FROM verdicts v"
               " JOIN samples s ON s.sample_id = v.sample_id JOIN prompts p ON p.prompt_id = s.prompt_id"
               " GROUP BY p.source, s.policy_version")
    for table, column in (("samples", "text"), ("samples", "payload"), ("verdicts", "judgment")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _migrate_from_2(db: Database) -> None:
    """Schema 2 -> 3: each prompt's last submission, which schema 2 did not keep, taken to be now (a task queued
    before the upgrade may name a prompt first recorded long ago: it stays until that task has left the ledger)."""
    for statement in db.ddl("ALTER TABLE prompts ADD COLUMN used REAL"):
        db.execute(statement)
    db.execute("UPDATE prompts SET used = ?", (time.time(),))
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))


def _check_result(task_id: str, attempt: int, kind: str, payload: bytes, result: ResultPayload,
                  newest: Callable[[], int]) -> dict[str, tuple[str, int]] | None:
    """A result finishes only its own task: the right kind, samples named for this attempt answering the task's
    prompts, verdicts on exactly the task's samples, a report of a version the hub has (`newest()`, asked only
    of reports). Raises InvalidResult. For verdicts, returns each judged sample's prompt source and policy version
    (from the judge task itself: the generate task may be archived already)."""
    if RESULT_KIND_OF[kind] != result.kind:
        raise InvalidResult(f"a {kind} task is finished by a {RESULT_KIND_OF[kind]}, not a {result.kind}")
    if isinstance(result, GenerateResult):
        prompts, prefix = {p["prompt_id"] for p in _unpack(payload)["prompts"]}, f"{task_id}.{attempt}."
        ids = [s.sample_id for s in result.samples]
        if len(set(ids)) != len(ids) or not all(i.startswith(prefix) for i in ids):  # no id another task could use
            raise InvalidResult(f"sample ids must be unique and start with {prefix!r} (TASK_ID.ATTEMPT.)")
        if not all(s.prompt_id in prompts for s in result.samples):
            raise InvalidResult("a sample answers a prompt that is not in the task")
    elif isinstance(result, JudgeResult):
        judged = {s["sample_id"]: (g["prompt"]["source"], s["policy_version"])
                  for g in _unpack(payload)["groups"] for s in g["samples"]}
        ids = [v.sample_id for v in result.verdicts]
        if len(set(ids)) != len(ids) or set(ids) != set(judged):
            raise InvalidResult(f"verdicts must judge the task's {len(judged)} samples, each once")
        return judged
    elif isinstance(result, TrainingReport) and result.policy_version > (published := newest()):
        raise InvalidResult(f"the report names policy v{result.policy_version}; the newest published is v{published}")
    return None


def _pack(model: object) -> bytes:
    return msgpack.packb(model.model_dump(mode="python"))  # type: ignore[attr-defined]


def _unpack(blob: bytes) -> object:
    return msgpack.unpackb(blob, raw=False)
