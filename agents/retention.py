"""Retention: finished tasks leave the ledger for compressed JSONL shards under RUN/archive/.

A run that lasts days would otherwise keep every payload, result, sample and verdict in its ledger
forever. The hub's housekeeping starts a pass every `retention_every_s`:
1. on the loop: the oldest finished (done or dead) tasks that are old enough, and the training prompts (seed,
   evolved) no task has submitted for as long and no sample in the ledger answers, bounded batches
   (Ledger.finished, Ledger.stale_prompts);
2. on the offload thread: their records written to one shard per kind, RUN/archive/KIND/FIRST_TASK_ID.jsonl.gz,
   and one of prompts, RUN/archive/prompts/ (written whole to a temporary name, then renamed);
3. back on the loop: the tasks deleted from the ledger with their sample and verdict rows and their blobs
   (Ledger.prune), and the prompts (Ledger.prune_prompts), after the shards are on disk.
A crash between 2 and 3 archives the batch again at the next pass, under the same name (its oldest task comes
first again: ordered by last change, then id; a prompt shard is named by all its prompts), so a task shard is
replaced, never doubled. A prompt batch that differs the second time (one of its prompts was submitted again
meanwhile) gets a new shard, and its other prompts are then in two.

"Old enough": finished more than `archive_after_s` ago; while the ledger (file, WAL and blobs) is above
`ledger_max_mb`, finished more than `archive_min_age_s` ago. What the loop still needs stays: queued and
leased tasks, recent rounds' tasks (a restarted creator asks for them again), the prompts still in use (any
generate task in the ledger names them, or they were submitted within the age: the creator submits its pool
every round, which keeps it while a round is shorter than the age), held-out and validation prompts,
policies, training metrics, and the tallies (task counts, rewards by version and prompts by source keep
counting archived work, so `status`, promotion and reports see the whole run). A prompt archived and then
submitted again (a round longer than the age, or a pool sampled by `pool_per_round` that left it out for
longer) is recorded again, and archived again later: the archive has it twice, under one id, and the counts
by source count it twice.

Each line of a shard is one task: its id, kind, state, attempt, holder, reason, times, `task` (the
payload), `result` (None for a dead task) and `error` (None, or why the result could not be archived: a lost
blob), as plain JSON. Shards are fsynced before the rows they replace are deleted. JSON has no infinity, so a log-prob of -inf is
written as null. A line of the `prompts` shards is one prompt: its id, source, mutation, round (of the creator
that evolved it), when it was first recorded and last submitted, and `prompt` (the whole prompt: its text,
answer, parent_id for lineage). They load with `datasets`:

    load_dataset("json", data_files="RUN/archive/generate/*.jsonl.gz")      # answers, with tokens, log-probs
    load_dataset("json", data_files="RUN/archive/judge/*.jsonl.gz")         # verdicts: scores, judgments
    load_dataset("json", data_files="RUN/archive/prompts/*.jsonl.gz")       # training prompts, with lineage

or without it, `read_archive(RUN, "judge")`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgpack
import structlog

from agents.blobs import Blobs, fsync_dir
from agents.ledger import FinishedTask, Ledger, StalePrompt
from agents.offload import Offload

log = structlog.get_logger("agents.retention")
BATCH_TASKS = 2000  # tasks a pass archives at most
BATCH_PROMPTS = 5000  # prompts a pass archives at most
BATCH_BYTES = 16 << 20  # payload and result bytes a pass archives at most (read on the loop when stored inline;
#                         a pass holds the offload thread, which large results share, for about a second at most)


def archive_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "archive"


def files_bytes(run_dir: str | os.PathLike) -> int:
    """A SQLite run's ledger as the disk holds it: its file (freed pages too), its WAL and its blobs, not the
    archive. What a user sees with du; `Ledger.size_bytes`, which retention reads, counts the pages in use."""
    run_dir = Path(run_dir)
    total = 0
    for path in [run_dir / "ledger.sqlite", run_dir / "ledger.sqlite-wal", *(run_dir / "blobs").glob("??/*")]:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


class Retention:
    """One archive pass at a time, driven by the hub's housekeeping (`tick`)."""

    def __init__(self, ledger: Ledger, run_dir: Path, offload: Offload, *, archive_after_s: float | None,
                 ledger_max_mb: float | None, archive_min_age_s: float, every_s: float) -> None:
        self.ledger, self.directory, self.offload = ledger, archive_dir(run_dir), offload
        self.archive_after_s, self.min_age_s, self.every_s = archive_after_s, archive_min_age_s, every_s
        self.max_bytes = None if ledger_max_mb is None else int(ledger_max_mb * 2**20)
        self.busy, self.next_at, self.archived, self.archived_prompts, self.passes = False, 0.0, 0, 0, 0

    @property
    def enabled(self) -> bool:
        return self.archive_after_s is not None or self.max_bytes is not None

    def tick(self, now: float) -> None:
        """Start a pass if one is due and none is running."""
        if self.busy or not self.enabled or now < self.next_at:
            return
        self.next_at = now + self.every_s
        ages = [self.archive_after_s] if self.archive_after_s is not None else []
        if self.max_bytes is not None and self.ledger.size_bytes() > self.max_bytes:
            ages.append(self.min_age_s)
        if not ages:
            return
        before = now - min(ages)
        batch = self.ledger.finished(before, BATCH_TASKS, BATCH_BYTES)
        prompts = self.ledger.stale_prompts(before, BATCH_PROMPTS)
        if not batch and not prompts:
            return
        self.busy = True
        blobs = self.ledger.blobs
        self.offload.submit(lambda: write_shards(self.directory, batch, blobs) + write_prompts(self.directory, prompts),
                            lambda paths, error: self._written(batch, prompts, before, paths, error, now))

    def _written(self, batch: list[FinishedTask], prompts: list[StalePrompt], before: float, paths,
                 error: BaseException | None, now: float) -> None:
        """Back on the loop: the shards are on disk, so the tasks and prompts leave the ledger."""
        self.busy = False
        if error is not None:  # a full disk, say: the tasks stay in the ledger and the next pass tries again
            log.error("archive failed", tasks=len(batch), prompts=len(prompts), error=f"{type(error).__name__}: {error}")
            return
        deleted = self.ledger.prune(batch, now, submits_before=before) if batch else 0
        gone = self.ledger.prune_prompts(prompts, before) if prompts else 0
        self.archived += deleted
        self.archived_prompts += gone
        self.passes += 1
        if (len(batch) == BATCH_TASKS or len(prompts) == BATCH_PROMPTS
                or sum(len(t.payload) + t.result_bytes for t in batch) >= BATCH_BYTES):
            self.next_at = now  # a full batch: more are waiting, the next turn goes on
        log.info("archived", tasks=deleted, prompts=gone, shards=[str(p) for p in paths],
                 ledger_bytes=self.ledger.size_bytes())


def write_shards(directory: Path, batch: list[FinishedTask], blobs: Blobs) -> list[Path]:
    """The batch's records, one gzip JSONL shard per kind, each written whole before it is renamed into place."""
    by_kind: dict[str, list[FinishedTask]] = {}
    for task in batch:
        by_kind.setdefault(task.kind, []).append(task)
    return [_write_shard(directory / kind / f"{tasks[0].task_id}.jsonl.gz", (_record(task, blobs) for task in tasks))
            for kind, tasks in by_kind.items()]


def write_prompts(directory: Path, prompts: list[StalePrompt]) -> list[Path]:
    """The prompts' records in one shard, RUN/archive/prompts/USED-DIGEST.jsonl.gz: when the first was last used
    (13 hex digits of microseconds, so that shards sort oldest first) and a digest of every prompt's id and last
    use (an id is any string, not a file name). The same batch again (a crash before its prune) replaces its
    shard; another batch never does. No shard for no prompts."""
    if not prompts:
        return []
    digest = hashlib.sha256("".join(f"{p.prompt_id}\0{p.used!r}\0" for p in prompts).encode()).hexdigest()[:16]
    name = f"{int(prompts[0].used * 1e6):013x}-{digest}.jsonl.gz"
    records = ({"prompt_id": p.prompt_id, "source": p.source, "mutation": p.mutation, "round": p.round,
                "created": p.created, "used": p.used, "prompt": msgpack.unpackb(p.payload, raw=False)} for p in prompts)
    return [_write_shard(directory / "prompts" / name, records)]


def _write_shard(path: Path, records: Iterable[dict]) -> Path:
    """One gzip JSONL file, written whole to a temporary name, fsynced, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw:
        with gzip.open(raw, "wt", encoding="utf-8", compresslevel=3) as f:
            for record in records:
                f.write(_json_line(record))
        raw.flush()
        os.fsync(raw.fileno())  # on disk before the rows it replaces are deleted
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path



def _record(task: FinishedTask, blobs: Blobs) -> dict:
    result, error = None, None
    if task.stored is not None:
        try:
            stored = task.stored.inline if task.stored.inline is not None else blobs.get(task.stored.blob)
            result = msgpack.unpackb(stored, raw=False)
        except FileNotFoundError as e:  # its blob was lost: the record says so, and retention goes on
            error = f"result lost: {e}"
            log.error("archived a task without its result", task_id=task.task_id, error=error)
    return {"task_id": task.task_id, "kind": task.kind, "state": task.state, "attempt": task.attempt,
            "agent": task.agent, "reason": task.reason, "created": task.created, "updated": task.updated,
            "task": msgpack.unpackb(task.payload, raw=False), "result": result, "error": error}


def _json_line(record: dict) -> str:
    """One line of plain JSON; only a record with a non-finite float (rare) is walked to replace them."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(_finite(record), ensure_ascii=False, allow_nan=False) + "\n"


def _finite(value):
    """JSON has no infinity: a non-finite float (a log-prob of -inf) becomes None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_archive(run_dir: str | os.PathLike, kind: str) -> Iterator[dict]:
    """Every archived task of `kind` ('generate', 'judge', 'train', 'create'), or with 'prompts' every archived
    prompt, shard by shard, oldest first."""
    for path in sorted((archive_dir(run_dir) / kind).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
