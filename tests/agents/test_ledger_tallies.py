"""The ledger's running tallies, results stored once (large ones as blobs), ordered ids, and the schema 1 -> 2
migration, on real SQLite files and (tallies, ids, concurrent leases, one hub per ledger) a real PostgreSQL server:
each checked against what the rows themselves say."""

import random
import sqlite3
import time

import msgpack
import pytest

from agents.ledger import INLINE_BYTES, SCHEMA_VERSION, Lease, Ledger, reward_by_version
from agents.ledger_query import LedgerReader
from protocol.messages import (
    GenerateResult,
    GenerateTask,
    JudgedGroup,
    JudgeResult,
    JudgeTask,
    Prompt,
    Sample,
    Verdict,
)

SOURCES = ("seed", "evolved", "eval", "validation")


def counted(ledger: Ledger) -> dict[tuple[str, str], int]:
    """Tasks by (kind, state), counted from the rows: what the tally must say."""
    return {(k, s): n for k, s, n in ledger.db.execute("SELECT kind, state, COUNT(*) FROM tasks GROUP BY kind, state")}


def tallied(ledger: Ledger) -> dict[tuple[str, str], int]:
    return {(kind, state): n for kind, stats in ledger.queue_stats().items()
            for state, n in stats.model_dump().items() if n}


def joined_rewards(ledger: Ledger, sources) -> dict[int, tuple[float, int]]:
    """The mean score by version computed from the verdict rows: what the reward tally must say."""
    marks = ",".join("?" * len(sources))
    rows = ledger.db.execute(
        "SELECT s.policy_version, AVG(v.score), COUNT(*) FROM verdicts v JOIN samples s ON s.sample_id = v.sample_id"
        f" JOIN prompts p ON p.prompt_id = s.prompt_id WHERE p.source IN ({marks}) GROUP BY s.policy_version", sources)
    return {version: (mean, n) for version, mean, n in rows}


def test_tallies_follow_every_transition(ledger_where):
    """Random walks through submit, lease, complete, fail, expire, release, recover, unlease, reclaim and judging
    (some samples twice): after each step the task tally equals the rows' GROUP BY, and the reward tally the join
    over the verdicts."""
    rng = random.Random(0)
    ledger = Ledger(ledger_where, max_attempts=3)
    now, version, leases, judged, verdicts_accepted = 0.0, 0, [], [], 0
    for step in range(300):
        now += 1
        action = rng.choice(["submit", "lease", "complete", "complete", "fail", "expire", "release", "recover",
                             "unlease", "reclaim", "judge", "policy"])
        if action == "submit":
            prompts = [Prompt(prompt_id=f"p{step}-{i}", text="2 + 2 =", source=rng.choice(SOURCES)) for i in range(2)]
            ledger.submit([GenerateTask(prompts=[p]) for p in prompts], now=now)
        elif action == "lease":
            for kind in ("generate", "judge"):
                leases += [(kind, lease) for lease in ledger.lease(kind, f"a{rng.randrange(3)}", 2, 5.0, now)]
        elif action == "complete" and leases:
            kind, lease = leases.pop(rng.randrange(len(leases)))
            if kind == "generate":
                p = lease.task.prompts[0]
                samples = [Sample(sample_id=f"{lease.task_id}.{lease.attempt}.{j}", prompt_id=p.prompt_id, text="4",
                                  policy_version=version) for j in range(2)]
                if ledger.complete(lease.task_id, lease.attempt, GenerateResult(samples=samples), now) == "accepted":
                    judged.append(JudgedGroup(prompt=p, samples=samples, verdicts=[]))
            else:
                verdicts = [Verdict(sample_id=s.sample_id, score=rng.random()) for g in lease.task.groups
                            for s in g.samples]
                if ledger.complete(lease.task_id, lease.attempt, JudgeResult(verdicts=verdicts), now) == "accepted":
                    verdicts_accepted += len(verdicts)
        elif action == "judge" and judged:  # now and then a group judged a second time: its first verdicts count
            group = judged.pop() if rng.random() < 0.6 else rng.choice(judged)
            ledger.submit([JudgeTask(groups=[group])], now=now)
        elif action == "fail" and leases:
            _, lease = leases.pop(rng.randrange(len(leases)))
            ledger.fail(lease.task_id, lease.attempt, "no", rng.random() < 0.7, now)
        elif action == "expire":
            now += 6 * rng.random()
            ledger.expire(now)
        elif action == "release":
            ledger.release_agent(f"a{rng.randrange(3)}", now)
        elif action == "recover":
            ledger.recover(now)
        elif action == "unlease" and leases:
            _, lease = leases.pop(rng.randrange(len(leases)))
            ledger.unlease(lease, now)
        elif action == "reclaim" and leases:
            _, lease = leases[rng.randrange(len(leases))]
            ledger.reclaim(lease.task_id, lease.attempt, f"a{rng.randrange(3)}", 5.0, now)
        elif action == "policy":
            version += 1
            ledger.record_policy(version, version - 1, None, 0, now)
        assert tallied(ledger) == counted(ledger), (step, action)
        for prompts, sources in (("train", ("seed", "evolved")), ("eval", ("eval",)), ("validation", ("validation",))):
            got, want = ledger.reward_by_version(prompts), joined_rewards(ledger, sources)
            assert got.keys() == want.keys(), (step, action)
            for v in want:
                assert got[v][1] == want[v][1] and abs(got[v][0] - want[v][0]) < 1e-9
    states = {state for _, state in counted(ledger)}
    assert {"queued", "leased", "done", "dead"} <= states  # the walk went everywhere
    assert ledger.reward_by_version("train") and ledger.reward_by_version("eval")
    verdict_rows = ledger.db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert 0 < verdict_rows < verdicts_accepted  # some samples were judged twice, and kept their first verdict
    ledger.close()


def test_a_large_result_is_stored_once_as_a_blob(ledger_where, tmp_path):
    """A blob file beside a SQLite ledger, a row of the blobs table of a PostgreSQL one."""
    ledger = Ledger(ledger_where)
    prompt = Prompt(prompt_id="p", text="long")
    [big, small] = ledger.submit([GenerateTask(prompts=[prompt]), GenerateTask(prompts=[prompt])], now=0)
    leases = {lease.task_id: lease for lease in ledger.lease("generate", "s", 2, 30, now=1)}
    text = "x" * (3 * INLINE_BYTES)
    large = GenerateResult(samples=[Sample(sample_id=f"{big}.1.0", prompt_id="p", text=text, policy_version=0,
                                           token_ids=list(range(5000)), logprobs=[-0.25] * 5000)])
    assert ledger.complete(big, leases[big].attempt, large, now=2) == "accepted"
    little = GenerateResult(samples=[Sample(sample_id=f"{small}.1.0", prompt_id="p", text="4", policy_version=0)])
    assert ledger.complete(small, leases[small].attempt, little, now=2) == "accepted"
    [(inline, size, digest)] = ledger.db.execute("SELECT result, result_bytes, result_blob FROM tasks"
                                                 " WHERE task_id = ?", (big,)).fetchall()
    assert inline is None and digest and len(ledger.blobs.get(digest)) == size > 3 * INLINE_BYTES
    assert list(ledger.blobs.digests()) == [digest]  # the small one stays in its row
    assert ledger.task(big)["result"] == large and ledger.task(small)["result"] == little
    assert ledger.task(big, max_result_bytes=size - 1)["result"] is None  # too large for a reply's room
    assert ledger.db.execute("SELECT * FROM samples WHERE task_id = ?", (big,)).fetchall() == [
        (f"{big}.1.0", "p", big, 0, 2.0)]  # an index row: ids and version, not the text again
    ledger.close()
    with LedgerReader(ledger_where) as reader:
        assert reader.result(big) == large and reader.result(small) == little
        assert [row.has_result for row in reader.tasks()] == [True, True]
    if ledger.db.kind != "sqlite":  # the server compresses what it stores: no size to compare
        return
    files = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    Ledger(tmp_path / "empty" / "ledger.sqlite").close()
    empty = (tmp_path / "empty" / "ledger.sqlite").stat().st_size  # the fixed pages: a root page per table and index
    assert files - empty < 1.2 * size  # the result once


def test_task_ids_sort_by_creation(ledger_where):
    ledger = Ledger(ledger_where)
    ids = [ledger.submit([GenerateTask(prompts=[Prompt(prompt_id=f"p{i}", text="?")])], now=100.0)[0]
           for i in range(50)]
    ids += ledger.submit([GenerateTask(prompts=[Prompt(prompt_id="q", text="?")])] * 50, now=99.0)  # a clock step back
    assert ids == sorted(ids) and len(set(ids)) == 100 and all(len(i) == 16 for i in ids)
    ledger.close()


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, agent TEXT, deadline REAL, priority INTEGER NOT NULL, payload BLOB NOT NULL,
    result BLOB, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX tasks_queue ON tasks (kind, state, priority, created);
CREATE INDEX tasks_leases ON tasks (state, deadline);
CREATE TABLE prompts (prompt_id TEXT PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL, parent_id TEXT,
    mutation TEXT, difficulty INTEGER, round INTEGER, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE samples (sample_id TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, task_id TEXT NOT NULL,
    policy_version INTEGER NOT NULL, text TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX samples_prompt ON samples (prompt_id);
CREATE TABLE verdicts (sample_id TEXT PRIMARY KEY, score REAL NOT NULL, judgment TEXT, task_id TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE submits (key TEXT PRIMARY KEY, task_ids TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE policies (version INTEGER PRIMARY KEY, parent_version INTEGER NOT NULL, path TEXT,
    num_bytes INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE metrics (name TEXT NOT NULL, value REAL NOT NULL, step INTEGER, policy_version INTEGER, task_id TEXT,
    created REAL NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO meta VALUES ('ledger_id', 'cafe0123cafe0123');
"""


def test_a_schema_1_ledger_is_migrated_in_place(tmp_path):
    """A ledger written by the previous release: opened, its tallies counted from its rows once, its second copies
    dropped, and its results, queue and leases carry on."""
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    pack = lambda model: msgpack.packb(model.model_dump(mode="python"))  # noqa: E731
    prompt = Prompt(prompt_id="p1", text="2 + 2 =", source="eval")
    gen = GenerateResult(samples=[Sample(sample_id=f"g.1.{i}", prompt_id="p1", text="4", policy_version=1)
                                  for i in range(2)])
    rows = [("g", "generate", "done", GenerateTask(prompts=[prompt]), gen), ("q", "generate", "queued",
            GenerateTask(prompts=[prompt]), None), ("l", "judge", "leased", JudgeTask(groups=[]), None)]
    for task_id, kind, state, task, result in rows:
        db.execute("INSERT INTO tasks VALUES (?, ?, ?, 1, 3, 'a', NULL, 0, ?, ?, NULL, 0, 0)",
                   (task_id, kind, state, pack(task), pack(result) if result else None))
    db.execute("INSERT INTO prompts VALUES ('p1', '2 + 2 =', 'eval', NULL, NULL, NULL, NULL, ?, 0)", (pack(prompt),))
    for s, score in zip(gen.samples, (1.0, 0.0), strict=True):
        db.execute("INSERT INTO samples VALUES (?, 'p1', 'g', 1, '4', ?, 0)", (s.sample_id, pack(s)))
        db.execute("INSERT INTO verdicts VALUES (?, ?, 'ok', 'j', 0)", (s.sample_id, score))
    db.commit()
    db.close()
    opened = time.time()
    ledger = Ledger(path)
    assert ledger.ledger_id == "cafe0123cafe0123"
    assert tallied(ledger) == {("generate", "done"): 1, ("generate", "queued"): 1, ("judge", "leased"): 1}
    assert reward_by_version(ledger.db, "eval") == {1: (0.5, 2)}
    assert [c[1] for c in ledger.db.execute("PRAGMA table_info(samples)")] == [
        "sample_id", "prompt_id", "task_id", "policy_version", "created"]
    assert ledger.task("g")["result"] == gen and ledger.task("g")["result_bytes"] == len(pack(gen))
    [lease] = ledger.lease("generate", "s", 1, 30, now=1)
    assert isinstance(lease, Lease) and lease.task_id == "q"
    assert ledger.recover(now=2) == 2 and tallied(ledger) == counted(ledger)
    ledger.close()
    reopened = Ledger(path)  # migrated once: the second opening finds the schema it writes
    assert reopened.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION
    assert reopened.db.execute("SELECT used FROM prompts").fetchone()[0] >= opened  # schema 3's column: the upgrade
    reopened.close()


def test_a_schema_2_ledger_gains_when_each_prompt_was_last_used(ledger_where, tmp_path):
    """Schema 2 -> 3 on either database: `used` starts at the upgrade (schema 2 did not keep when a prompt was last
    submitted: a task queued before may name a prompt first recorded long ago), and retention archives the prompt
    once its task has left the ledger."""
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    ledger.submit([GenerateTask(prompts=[Prompt(prompt_id="p1", text="1 + 1 =")])], now=5.0)
    with ledger.db.transaction():  # back to what schema 2 wrote
        ledger.db.execute("DROP INDEX prompts_used")
        ledger.db.execute("ALTER TABLE prompts DROP COLUMN used")
        ledger.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    ledger.close()
    upgraded = time.time()
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    assert ledger.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION
    [(used,)] = ledger.db.execute("SELECT used FROM prompts").fetchall()
    assert used >= upgraded
    later = time.time() + 60
    assert ledger.stale_prompts(before=later, max_prompts=10) == []  # its task is still queued
    [lease] = ledger.lease("generate", "s", 1, 30, now=6.0)
    ledger.complete(lease.task_id, lease.attempt, GenerateResult(samples=[]), now=6.0)
    ledger.prune(ledger.finished(7.0, max_tasks=10, max_bytes=1 << 30), now=7.0, submits_before=0.0)
    assert [p.prompt_id for p in ledger.stale_prompts(before=later, max_prompts=10)] == ["p1"]
    assert ledger.stale_prompts(before=used, max_prompts=10) == []
    ledger.close()


def test_concurrent_leases_on_postgresql_never_hand_out_a_task_twice(pg_server):
    """The server's row locks (FOR UPDATE SKIP LOCKED) keep leasing correct with several writers at once."""
    import threading

    url = pg_server.new_database()
    setup = Ledger(url)
    setup.submit([GenerateTask(prompts=[Prompt(prompt_id=f"p{i}", text="?")]) for i in range(400)], now=0)
    leased: list[list[str]] = [[] for _ in range(4)]

    def lease_all(i: int) -> None:
        ledger = Ledger(url)
        while batch := ledger.lease("generate", f"agent-{i}", 7, 30, now=1):
            leased[i] += [lease.task_id for lease in batch]
        ledger.close()

    threads = [threading.Thread(target=lease_all, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [task_id for ids in leased for task_id in ids]
    assert len(every) == len(set(every)) == 400 and sum(1 for ids in leased if ids) >= 2
    assert tallied(setup) == counted(setup) == {("generate", "leased"): 400}
    setup.close()


def test_one_hub_per_postgresql_ledger(pg_server, tmp_path):
    from agents.ledger import LedgerError, open_run_ledger

    url = pg_server.new_database()
    first = open_run_ledger(tmp_path / "a", url=url)
    with pytest.raises(LedgerError, match="another hub is writing this ledger"):
        open_run_ledger(tmp_path / "a", url=url)
    with pytest.raises(LedgerError, match="belongs to another run"):  # the run's marker names the first ledger
        open_run_ledger(tmp_path / "a", url=pg_server.new_database())
    assert (tmp_path / "a" / "ledger.url").read_text().strip() == url
    assert (tmp_path / "a" / "ledger.url").stat().st_mode & 0o077 == 0  # it may carry a password
    with pytest.raises(LedgerError, match="give a new run an empty database"):  # another run's ledger, unmarked
        open_run_ledger(tmp_path / "c", url=url)
    first.close()
    open_run_ledger(tmp_path / "a", url=url).close()  # the lock went with the first hub's connection


def test_a_blob_stays_while_another_copy_of_its_result_is_being_recorded(ledger_where):
    """Two copies of one large result packed at once (a resend on a new connection): the first refused and settled
    before the second commits does not take the shared blob with it."""
    ledger = Ledger(ledger_where)
    [task] = ledger.submit([GenerateTask(prompts=[Prompt(prompt_id="p", text="long")])], now=0)
    [lease] = ledger.lease("generate", "s", 1, 30, now=1)
    result = GenerateResult(samples=[Sample(sample_id=f"{task}.1.0", prompt_id="p", text="z" * (2 * INLINE_BYTES),
                                            policy_version=0)])
    first, second = ledger.pack(result), ledger.pack(result)
    assert first.blob == second.blob
    ledger.settle(first, recorded=False)  # refused (say, sent on the old connection)
    assert list(ledger.blobs.digests()) == [first.blob]  # the second copy still pins it
    assert ledger.complete(task, lease.attempt, second, now=2) == "accepted"
    ledger.settle(second, recorded=True)
    assert ledger.task(task)["result"] == result
    assert ledger.blobs.sweep(ledger.names_blob, older_than_s=0.0) == 0  # named by a row: no orphan
    ledger.close()


def test_a_blob_that_could_not_be_written_is_not_left_pinned(ledger_where, tmp_path):
    """A put that fails (a full disk, a server gone) leaves no pin: no result names the blob, and a pin would keep
    it from ever being deleted."""
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    data = b"q" * (2 * INLINE_BYTES)
    if ledger.db.kind == "sqlite":
        (tmp_path / "blobs").write_text("a file where the directory should be")
    else:
        ledger.blobs._db().close()  # this thread's blob connection, gone
    with pytest.raises(Exception):  # noqa: B017 - OSError from the disk, psycopg's OperationalError from the server
        ledger.blobs.put(data)
    assert not ledger.blobs._pins
    ledger.close()
