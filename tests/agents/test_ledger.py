"""The ledger on real SQLite files and on a real PostgreSQL server (the same tests, `ledger_where`): leases, expiry,
idempotent results, dead letters, restart."""

import sqlite3

import pytest

from agents.ledger import InvalidResult, Ledger
from protocol.messages import (
    CreateResult,
    CreateTask,
    GenerateResult,
    GenerateTask,
    JudgedGroup,
    JudgeResult,
    JudgeTask,
    Prompt,
    Sample,
    TrainingReport,
    TrainTask,
    Verdict,
)
from tests.protocol.examples import GROUP, PROMPT


def sample(i=0, prompt_id="p1", prefix="s"):
    return Sample(sample_id=f"{prefix}{i}", prompt_id=prompt_id, text=f"answer {i}", policy_version=2)


def generated(task_id, attempt, *indices):
    """A generation result for (task, attempt), its samples named TASK_ID.ATTEMPT.I as solvers name them."""
    return GenerateResult(samples=[sample(i, prefix=f"{task_id}.{attempt}.") for i in indices])


@pytest.fixture
def ledger(ledger_where):
    led = Ledger(ledger_where, max_attempts=2)
    yield led
    led.close()


def test_a_submit_repeated_with_its_key_queues_nothing_and_gets_the_first_ids(ledger, ledger_where):
    task = GenerateTask(prompts=[PROMPT])
    first = ledger.submit([task, task], key="creator:train:1", now=0)
    assert ledger.submit([task, task], key="creator:train:1", now=1) == first
    assert ledger.queue_stats()["generate"].queued == 2
    other = ledger.submit([task, task], key="creator:train:2", now=2)
    assert set(other).isdisjoint(first) and ledger.queue_stats()["generate"].queued == 4
    with pytest.raises(ValueError, match="was used for 2 tasks, not 1"):
        ledger.submit([task], key="creator:train:1", now=3)
    ledger.close()
    reopened = Ledger(ledger_where)  # the keys are in the ledger: a restarted hub remembers them
    assert reopened.submit([task, task], key="creator:train:1", now=4) == first
    assert reopened.queue_stats()["generate"].queued == 4
    reopened.close()


def test_submit_lease_complete(ledger):
    [tid] = ledger.submit([GenerateTask(prompts=[PROMPT])], now=0)
    assert ledger.queue_stats()["generate"].queued == 1
    assert ledger.lease("judge", "j", 5, 30, now=1) == []
    [lease] = ledger.lease("generate", "solver-0", 5, 30, now=1)
    assert (lease.task_id, lease.attempt, lease.deadline) == (tid, 1, 31)
    assert lease.task.prompts[0] == PROMPT
    assert ledger.lease("generate", "solver-1", 5, 30, now=2) == []  # leased tasks are not handed out twice
    assert ledger.complete(tid, 1, generated(tid, 1, 0, 1), now=3) == "accepted"
    assert ledger.complete(tid, 1, generated(tid, 1, 0), now=4) == "duplicate"
    record = ledger.task(tid)
    assert record["state"] == "done" and len(record["result"].samples) == 2
    assert ledger.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 2
    assert ledger.prompts() == [PROMPT]  # the submitted prompt is recorded with its lineage


def test_priority_then_age_order(ledger):
    low = ledger.submit([JudgeTask(groups=[GROUP])], now=0)
    old = ledger.submit([JudgeTask(groups=[GROUP])], now=1)
    new = ledger.submit([JudgeTask(groups=[GROUP])], now=2)
    high = ledger.submit([JudgeTask(groups=[GROUP])], priority=5, now=3)
    order = [lease.task_id for lease in ledger.lease("judge", "j", 10, 30, now=4)]
    assert order == high + low + old + new


def test_expired_lease_is_redispatched_and_the_late_result_is_stale(ledger):
    [tid] = ledger.submit([GenerateTask(prompts=[PROMPT])], now=0)
    ledger.lease("generate", "slow", 1, 10, now=0)
    assert ledger.renew(tid, 1, "slow", 10, now=5) == 15  # renewal moves the deadline
    assert ledger.expire(now=14) == []
    assert ledger.expire(now=16) == [(tid, "queued")]
    [second] = ledger.lease("generate", "fast", 1, 10, now=17)
    assert second.attempt == 2
    assert ledger.renew(tid, 1, "slow", 10, now=18) is None  # the old holder lost its lease
    assert ledger.complete(tid, 1, generated(tid, 1, 9), now=19) == "stale"
    assert ledger.complete(tid, 2, generated(tid, 2, 1), now=20) == "accepted"
    assert ledger.db.execute("SELECT sample_id FROM samples").fetchall() == [(f"{tid}.2.1",)]


def test_dead_letter_after_max_attempts_with_a_reason(ledger):
    [tid] = ledger.submit([GenerateTask(prompts=[PROMPT])], now=0)
    for attempt in (1, 2):
        [lease] = ledger.lease("generate", "s", 1, 1, now=10 * attempt)
        assert lease.attempt == attempt
        ledger.expire(now=10 * attempt + 5)
    record = ledger.task(tid)
    assert record["state"] == "dead" and "lease expired (attempt 2 of 2)" in record["reason"]
    assert ledger.lease("generate", "s", 1, 1, now=100) == []
    assert ledger.queue_stats()["generate"].dead == 1


def test_failures_and_dead_agents(ledger):
    a, b = ledger.submit([GenerateTask(prompts=[PROMPT]), GenerateTask(prompts=[PROMPT])], now=0)
    ledger.lease("generate", "s", 2, 30, now=0)
    assert ledger.fail(a, 1, "prompt too long", retryable=False, now=1) == "dead"
    assert ledger.task(a)["reason"] == "prompt too long"
    assert ledger.fail(b, 7, "wrong attempt", retryable=True, now=1) is None
    assert ledger.release_agent("s", now=2) == [(b, "queued")]
    [lease] = ledger.lease("generate", "t", 1, 30, now=3)
    assert (lease.task_id, lease.attempt) == (b, 2)


def test_restart_requeues_leases_and_accepts_replayed_results(ledger_where):
    path = ledger_where
    first = Ledger(path)
    done, leased, queued = (first.submit([GenerateTask(prompts=[PROMPT])], now=t)[0] for t in (0, 1, 2))
    for lease in first.lease("generate", "s", 2, 30, now=3):  # the two oldest: done, leased
        if lease.task_id == done:
            first.complete(done, lease.attempt, generated(done, lease.attempt, 0), now=2)
    first.db.close()  # no clean shutdown: the hub was killed

    second = Ledger(path)
    assert second.recover(now=10) == 1
    assert second.task(done)["state"] == "done" and second.task(done)["result"].samples[0].sample_id == f"{done}.1.0"
    assert second.task(leased)["state"] == "queued"
    # the agent that held `leased` replays its outbox: its attempt is still the latest, so it counts
    assert second.complete(leased, 1, generated(leased, 1, 1), now=11) == "accepted"
    assert second.complete(done, 1, generated(done, 1, 0), now=12) == "duplicate"
    assert second.complete("nope", 1, GenerateResult(samples=[]), now=12) == "unknown"
    assert second.task(queued)["state"] == "queued"
    second.close()


def test_results_fill_the_domain_tables(ledger):
    evolved = Prompt(prompt_id="p2", text="What is 37 + 48 + 5?", source="evolved", parent_id="p1",
                     mutation="add_constraint")
    t_create, t_judge, t_train = ledger.submit([CreateTask(groups=[GROUP]), JudgeTask(groups=[GROUP]),
                                                TrainTask(groups=[GROUP])], now=0)
    for t in (t_create, t_judge, t_train):
        ledger.db.execute("UPDATE tasks SET state = 'leased', attempt = 1 WHERE task_id = ?", (t,))
    ledger.record_policy(3, 2, "adapters/v3", 1024, now=0)
    ledger.complete(t_create, 1, CreateResult(prompts=[evolved], round=1), now=1)
    ledger.complete(t_judge, 1, JudgeResult(verdicts=[Verdict(sample_id="s1", score=0.5, judgment="close")]), now=1)
    ledger.complete(t_train, 1, TrainingReport(policy_version=3, step=7, examples=8, metrics={"loss": 0.6}), now=1)
    [row] = ledger.db.execute("SELECT parent_id, mutation, round FROM prompts WHERE prompt_id = 'p2'").fetchall()
    assert row == ("p1", "add_constraint", 1)
    assert ledger.prompts("evolved") == [evolved]
    assert ledger.db.execute("SELECT sample_id, score FROM verdicts").fetchall() == [("s1", 0.5)]
    assert ledger.task(t_judge)["result"].verdicts[0].judgment == "close"  # the text is kept once, in the result
    assert ledger.db.execute("SELECT name, value, step, policy_version FROM metrics").fetchall() == [("loss", 0.6, 7, 3)]
    assert ledger.policy_version() == 3


def test_wal_mode_and_a_wrong_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    assert led.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    led.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="schema 99"):
        Ledger(path)


def test_a_failed_transaction_leaves_nothing_behind(ledger):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), ledger._tx():
        ledger.db.execute("INSERT INTO metrics VALUES ('x', 1, 0, 0, NULL, 0)")
        raise Boom
    assert ledger.db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0


def test_reclaim_gives_a_requeued_lease_back_only_if_nobody_took_it(ledger):
    a, b = (ledger.submit([GenerateTask(prompts=[PROMPT])], now=t)[0] for t in (0, 1))
    ledger.lease("generate", "s", 2, 30, now=2)
    ledger.recover(now=3)  # hub restart: both back in the queue at attempt 1
    ledger.lease("generate", "other", 1, 30, now=4)  # `a` (the oldest) goes to someone else as attempt 2
    assert not ledger.reclaim(a, 1, "s", 30, now=5)
    assert ledger.reclaim(b, 1, "s", 30, now=5)
    assert not ledger.reclaim(b, 2, "s", 30, now=5)  # wrong attempt
    assert ledger.task(b)["state"] == "leased" and ledger.task(b)["agent"] == "s" and ledger.task(b)["attempt"] == 1
    assert ledger.complete(b, 1, generated(b, 1, 4), now=6) == "accepted"


def test_reward_by_policy_version(ledger):
    [gen] = ledger.submit([GenerateTask(prompts=[PROMPT])], now=0)
    ledger.lease("generate", "s", 2, 30, now=2)
    samples = [Sample(sample_id=f"{gen}.1.v{v}-{i}", prompt_id="p1", text="x", policy_version=v)
               for v in (0, 1) for i in (0, 1)]
    ledger.complete(gen, 1, GenerateResult(samples=samples), now=3)
    [judge] = ledger.submit([JudgeTask(groups=[JudgedGroup(prompt=PROMPT, samples=samples, verdicts=[])])], now=1)
    ledger.db.execute("UPDATE tasks SET state = 'leased', attempt = 1 WHERE task_id = ?", (judge,))
    scores = {f"{gen}.1.v0-0": 0.0, f"{gen}.1.v0-1": 0.5, f"{gen}.1.v1-0": 1.0, f"{gen}.1.v1-1": 1.0}
    ledger.complete(judge, 1, JudgeResult(verdicts=[Verdict(sample_id=k, score=v) for k, v in scores.items()]), now=4)
    assert ledger.reward_by_version() == {0: (0.25, 2), 1: (1.0, 2)}


def test_a_lease_never_sent_gives_back_its_attempt_and_the_previous_holder(ledger):
    """The hub leases a requeued task to B, cannot send the assignment, and takes it back: attempt and holder are
    A's again, so A's late result of that attempt still counts (it was refused as another agent's)."""
    [tid] = ledger.submit([GenerateTask(prompts=[PROMPT])], now=0)
    ledger.lease("generate", "A", 1, 10, now=0)
    assert ledger.expire(now=11) == [(tid, "queued")]
    [unsent] = ledger.lease("generate", "B", 1, 10, now=12)
    ledger.unlease(unsent, now=12)
    assert (ledger.task(tid)["attempt"], ledger.task(tid)["agent"]) == (1, "A")
    assert ledger.complete(tid, 1, generated(tid, 1, 0), now=13, agent="B") == "forbidden"
    assert ledger.complete(tid, 1, generated(tid, 1, 0), now=13, agent="A") == "accepted"


def test_results_committed_together_are_each_decided_on_their_own(ledger):
    """A group commit: one invalid result among valid ones is refused alone (its savepoint), the rest recorded."""
    ids = ledger.submit([GenerateTask(prompts=[PROMPT])] * 3, now=0)
    ledger.lease("generate", "s", 3, 30, now=1)
    a, b, c = ids
    outcomes = ledger.complete_many([(a, 1, generated(a, 1, 0), "s"), (b, 1, generated(c, 1, 0), "s"),
                                     (c, 1, generated(c, 1, 0), "s"), (a, 1, generated(a, 1, 0), "s")], now=2)
    assert outcomes[0] == "accepted" and outcomes[2] == "accepted" and outcomes[3] == "duplicate"
    assert "sample ids must" in str(outcomes[1])  # b answered with c's sample ids: InvalidResult, b untouched
    assert [ledger.task(t)["state"] for t in ids] == ["done", "leased", "done"]
    assert sorted(r[0] for r in ledger.db.execute("SELECT sample_id FROM samples")) == [f"{a}.1.0", f"{c}.1.0"]
    assert ledger.queue_stats()["generate"].done == 2 and ledger.queue_stats()["generate"].leased == 1


def test_a_result_the_database_cannot_hold_is_refused_alone(ledger):
    """PostgreSQL text cannot hold a NUL (an evolved prompt's text goes into a text column): that result is refused
    (InvalidResult: its agent fails the task instead of resending it forever); its neighbour in the same commit is
    recorded. SQLite stores it."""
    a, b = ledger.submit([CreateTask(groups=[GROUP])] * 2, now=0)
    ledger.lease("create", "c", 2, 30, now=1)
    nul = CreateResult(prompts=[Prompt(prompt_id="p9", text="What is 1 +\x00 1?", source="evolved")], round=1)
    fine = CreateResult(prompts=[Prompt(prompt_id="p8", text="What is 1 + 2?", source="evolved")], round=1)
    outcomes = ledger.complete_many([(a, 1, nul, "c"), (b, 1, fine, "c")], now=2)
    postgres = ledger.db.kind == "postgresql"
    assert (isinstance(outcomes[0], InvalidResult) and "cannot be stored" in str(outcomes[0])) == postgres
    assert outcomes[1] == "accepted" and ledger.task(b)["state"] == "done"
    assert ledger.task(a)["state"] == ("leased" if postgres else "done")
