"""Retention on real files: finished tasks leave the ledger for gzip JSONL shards that `datasets` reads, nothing the
loop still needs goes, and a hub under a steady stream of large results holds its ledger below a set size."""

import time

import datasets
import pytest

from agents.ledger import INLINE_BYTES, Ledger
from agents.ledger_query import LedgerReader
from agents.retention import files_bytes, read_archive, write_prompts, write_shards
from protocol.messages import (
    GenerateResult,
    GenerateTask,
    JudgedGroup,
    JudgeResult,
    JudgeTask,
    Prompt,
    Result,
    Sample,
    Submit,
    Verdict,
)
from tests.agents.test_hub import Running

EVAL = Prompt(prompt_id="e1", text="2 + 2 =", source="eval")


def answered(ledger, now, text="4"):
    """A generate task done (its result a blob when `text` is long), then a judge task done on its samples."""
    [gen] = ledger.submit([GenerateTask(prompts=[EVAL])], now=now)
    [lease] = ledger.lease("generate", "s", 1, 30, now)
    samples = [Sample(sample_id=f"{gen}.1.{i}", prompt_id="e1", text=text, policy_version=0,
                      logprobs=[-float("inf"), -0.5]) for i in range(2)]
    ledger.complete(gen, lease.attempt, GenerateResult(samples=samples), now)
    [judge] = ledger.submit([JudgeTask(groups=[JudgedGroup(prompt=EVAL, samples=samples, verdicts=[])])], now=now,
                            key=f"judge-{gen}")
    [lease] = ledger.lease("judge", "j", 1, 30, now)
    ledger.complete(judge, lease.attempt, JudgeResult(verdicts=[Verdict(sample_id=s.sample_id, score=float(i),
                                                                        judgment="ok") for i, s in enumerate(samples)]),
                    now)
    return gen, judge


def test_archived_tasks_leave_the_ledger_for_shards_and_the_tallies_keep_counting(ledger_where, tmp_path):
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    old = [answered(ledger, now=100.0, text="x" * INLINE_BYTES), answered(ledger, now=101.0)]
    recent = answered(ledger, now=500.0)
    [waiting] = ledger.submit([GenerateTask(prompts=[EVAL])], now=50.0)  # old, but never finished: it stays
    stats, rewards = ledger.queue_stats(), ledger.reward_by_version("eval")
    assert len(list(ledger.blobs.digests())) == 1
    assert ledger.totals().get("blob_bytes", 0) > INLINE_BYTES
    batch = ledger.finished(before=200.0, max_tasks=100, max_bytes=1 << 30)
    assert sorted(t.task_id for t in batch) == sorted(i for pair in old for i in pair)
    write_shards(tmp_path / "archive", batch, ledger.blobs)
    assert ledger.prune(batch, now=600.0, submits_before=200.0) == 4
    kept = {row[0] for row in ledger.db.execute("SELECT task_id FROM tasks")}
    assert kept == {*recent, waiting}
    assert {row[0] for row in ledger.db.execute("SELECT task_id FROM samples")} == {recent[0]}
    assert {row[0] for row in ledger.db.execute("SELECT task_id FROM verdicts")} == {recent[1]}
    assert list(ledger.blobs.digests()) == [] and ledger.totals().get("blob_bytes", 0) == 0
    assert ledger.totals()["archived_tasks"] == 4
    assert ledger.queue_stats() == stats and ledger.reward_by_version("eval") == rewards  # the whole run still counts
    keys = {row[0] for row in ledger.db.execute("SELECT key FROM submits")}
    assert keys == {f"judge-{recent[0]}"}  # the archived tasks' keys went; a recent one stays
    generated = list(read_archive(tmp_path, "generate"))
    assert [g["task_id"] for g in generated] == [old[0][0], old[1][0]]
    assert generated[0]["result"]["samples"][0]["text"] == "x" * INLINE_BYTES  # the blob's content, archived
    assert generated[1]["result"]["samples"][0]["logprobs"] == [None, -0.5]  # JSON has no -inf
    judged = datasets.load_dataset("json", data_files=str(tmp_path / "archive" / "judge" / "*.jsonl.gz"),
                                   split="train", cache_dir=str(tmp_path / "hf"))
    assert judged.num_rows == 2 and judged[0]["result"]["verdicts"][1]["score"] == 1.0
    ledger.close()


def test_the_size_retention_reads_falls_when_results_are_archived(ledger_where, tmp_path):
    """What `ledger_max_mb` compares: it falls by the archived blobs (PostgreSQL's size of the blobs table on the
    server would not: autovacuum keeps the space for new rows)."""
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    answered(ledger, now=100.0, text="x" * (1 << 20))
    answered(ledger, now=100.0, text="z" * (1 << 20))
    full = ledger.size_bytes()
    assert full > 4 << 20  # two results of two 1 MiB answers each
    batch = ledger.finished(before=200.0, max_tasks=100, max_bytes=1 << 30)
    write_shards(tmp_path / "archive", batch, ledger.blobs)
    ledger.prune(batch, now=300.0, submits_before=200.0)
    assert ledger.size_bytes() < full - (4 << 20)
    ledger.close()


def prompt(prompt_id, source="evolved", mutation="deepen"):
    return Prompt(prompt_id=prompt_id, text=f"say {prompt_id}", source=source, parent_id="root", mutation=mutation)


def test_training_prompts_no_task_uses_leave_the_ledger_and_their_counts_stay(ledger_where, tmp_path):
    """Archived: a training prompt last submitted before the cutoff and before the oldest generate task the ledger
    holds (so its answers were archived with their tasks). Kept: one submitted again since (a pool's prompt), one
    a queued task names, one a done task in the ledger answered, held-out ones, recent ones."""
    ledger = Ledger(ledger_where, blobs=tmp_path / "blobs")
    old, pool, answered_, held_out, waiting, recent = (
        prompt("old/1", mutation="breadth"), prompt("pool", "seed", None), prompt("answered"),
        prompt("e2", "eval", None), prompt("waiting"), prompt("new"))

    def answer(now, prompt_id):
        [lease] = ledger.lease("generate", "s", 1, 30, now)
        ledger.complete(lease.task_id, lease.attempt, GenerateResult(samples=[Sample(
            sample_id=f"{lease.task_id}.1.0", prompt_id=prompt_id, text="x", policy_version=0)]), now)

    def archive_tasks(before):
        ledger.prune(ledger.finished(before, max_tasks=100, max_bytes=1 << 30), now=before, submits_before=0.0)

    ledger.submit([GenerateTask(prompts=[old, pool, held_out])], now=100.0)
    answer(110.0, "old/1")
    archive_tasks(before=120.0)  # its task and its answers left the ledger
    ledger.submit([GenerateTask(prompts=[waiting])], now=150.0)  # queued for long: its prompt is still in use
    ledger.submit([GenerateTask(prompts=[answered_])], priority=1, now=160.0)
    answer(170.0, "answered")  # done, and still in the ledger
    ledger.submit([GenerateTask(prompts=[pool, recent])], now=300.0)  # the pool asked again in a later round
    counts = prompt_counts(ledger_where)
    assert counts == ({"eval": 1, "evolved": 4, "seed": 1}, {"breadth": 1, "deepen": 3})
    stale = ledger.stale_prompts(before=200.0, max_prompts=100)
    assert [p.prompt_id for p in stale] == ["old/1"]
    ledger.submit([GenerateTask(prompts=[old])], now=250.0)  # used again while its shard was being written: it stays
    assert ledger.prune_prompts(stale, before=200.0) == 0
    assert ledger.stale_prompts(before=260.0, max_prompts=100) == []  # tasks in the ledger name each old one
    answer(260.0, "waiting")
    answer(260.0, "old/1")
    archive_tasks(before=270.0)
    stale = ledger.stale_prompts(before=270.0, max_prompts=100)
    assert [p.prompt_id for p in stale] == ["waiting", "answered", "old/1"]  # least recently used first
    [path] = write_prompts(tmp_path / "archive", stale)
    assert path.parent == tmp_path / "archive" / "prompts" and "/" not in path.name.removesuffix(".jsonl.gz")
    assert write_prompts(tmp_path / "archive", stale[:2]) != [path]  # another batch never replaces this shard
    assert ledger.prune_prompts(stale, before=270.0) == 3
    assert {p.prompt_id for p in ledger.prompts()} == {"pool", "e2", "new"}
    assert prompt_counts(ledger_where) == counts  # archived ones count (in what the reports read)
    assert ledger.totals()["archived_prompts"] == 3
    records = {r["prompt_id"]: r for r in read_archive(tmp_path, "prompts")}
    assert records["old/1"]["used"] == 250.0 and records["old/1"]["created"] == 100.0
    assert Prompt.model_validate(records["old/1"]["prompt"]) == old  # the whole prompt, its lineage with it
    ledger.close()


def prompt_counts(where):
    with LedgerReader(where) as reader:
        return reader.prompts_by_source(), reader.evolved_by_mutation()


def test_a_batch_archived_again_replaces_its_shard(tmp_path):
    """A crash after the shard is written and before the prune: the next pass writes the same shard again."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    answered(ledger, now=100.0)
    batch = ledger.finished(before=200.0, max_tasks=100, max_bytes=1 << 30)
    first = write_shards(tmp_path / "archive", batch, ledger.blobs)
    again = write_shards(tmp_path / "archive", ledger.finished(before=200.0, max_tasks=100, max_bytes=1 << 30),
                         ledger.blobs)
    assert first == again and len(list(read_archive(tmp_path, "generate"))) == 1
    ledger.close()


@pytest.mark.timeout(120)
def test_a_hub_holds_its_ledger_below_the_set_size_while_results_keep_coming(tmp_path):
    """8 MiB allowed; 160 KiB results arrive at 4 MB/s for 12 s (over four times the limit), each answering a new
    training prompt. Sampled every half second once the limit is reached, the ledger on disk (file, WAL, blobs) stays
    within the limit and what arrives between two passes, and every accepted result, and every prompt, is in the
    ledger or in the archive."""
    limit_mb = 8
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50, ledger_max_mb=limit_mb,
                archive_min_age_s=0.5, retention_every_s=0.2)
    try:
        creator, solver = r.client("creator-0"), r.client("solver-0")
        creator.ready("creator", kinds=())
        solver.ready("solver", capacity=4)
        text, accepted, sizes, sent_bytes, made = "y" * (160 << 10), 0, [], 0, 0
        start = last_sample = next_send = time.monotonic()
        while time.monotonic() - start < 12:
            if r.hub.ledger.queued("generate") < 8:  # a read of the hub's tally; the hub's thread owns the writes
                creator.send(Submit(tasks=[GenerateTask(prompts=[Prompt(prompt_id=f"q{made + i}", text="1 + 1 =")])
                                           for i in range(16)]))
                made += 16
            env = solver.recv(timeout_ms=2000, skip=("heartbeat", "policy_announce"))
            while env is not None and env.message.kind != "assign":
                accepted += env.message.kind == "ack" and env.message.status == "accepted"
                env = solver.recv(timeout_ms=200)
            if env is not None:
                time.sleep(max(0.0, next_send - time.monotonic()))  # 25 results a second: 4 MB/s
                next_send = max(next_send + 0.04, time.monotonic() - 0.2)
                task = env.message
                sample = Sample(sample_id=f"{task.task_id}.{task.attempt}.0",
                                prompt_id=task.task.prompts[0].prompt_id, text=text, policy_version=0)
                solver.send(Result(task_id=task.task_id, attempt=task.attempt,
                                   result=GenerateResult(samples=[sample])))
                sent_bytes += len(text)
            while creator.recv(timeout_ms=0) is not None:
                pass
            if time.monotonic() - last_sample > 0.5:
                last_sample = time.monotonic()
                sizes.append(files_bytes(r.hub.run_dir))
        while (env := solver.recv(timeout_ms=1000)) is not None:
            accepted += env.message.kind == "ack" and env.message.status == "accepted"
        assert sent_bytes > 4 * limit_mb * 2**20  # without retention the ledger would be several times the limit
        assert r.hub.retention.archived > 0
        assert max(sizes[6:]) < 1.5 * limit_mb * 2**20, [round(s / 2**20, 1) for s in sizes]
    finally:
        r.close()
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    done = ledger.db.execute("SELECT COUNT(*) FROM tasks WHERE kind = 'generate' AND state = 'done'").fetchone()[0]
    archived = list(read_archive(tmp_path / "run", "generate"))
    assert done + len(archived) == accepted == ledger.queue_stats()["generate"].done
    assert all(len(a["result"]["samples"][0]["text"]) == len(text) for a in archived)
    kept = [p.prompt_id for p in ledger.prompts()]
    archived_prompts = [p["prompt_id"] for p in read_archive(tmp_path / "run", "prompts")]
    assert len(archived_prompts) > made / 2 and len(kept) < made / 2  # the ledger keeps the recent ones only
    assert sorted(kept + archived_prompts) == sorted(f"q{i}" for i in range(made))  # each once, none lost
    ledger.close()
