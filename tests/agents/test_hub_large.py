"""Large results through a real hub: decoded, packed and stored off the loop, each sender's messages still in
order, a refused one leaving nothing on disk, and the result coming back whole in a TaskReport."""

import time

import pytest

from agents.hub import OFFLOAD_BYTES
from protocol.messages import Disconnect, GenerateResult, Result, Sample, StatusQuery, TaskQuery
from tests.agents.test_hub import Running, submit
from tests.protocol.examples import PROMPT


@pytest.fixture(params=["sqlite", "postgresql"])
def running(request, tmp_path):
    """A hub on a SQLite ledger (large results as blob files), or on PostgreSQL (in its blobs table)."""
    ledger = None if request.param == "sqlite" else request.getfixturevalue("pg_server").new_database()
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50, ledger=ledger)
    yield r
    r.close()


def large(task_id, attempt, n=4):
    """A result of n samples whose texts add up to more than OFFLOAD_BYTES."""
    text = "7" * (OFFLOAD_BYTES // n + 1000)
    return GenerateResult(samples=[Sample(sample_id=f"{task_id}.{attempt}.{i}", prompt_id=PROMPT.prompt_id, text=text,
                                          policy_version=0, logprobs=[-0.5] * 100) for i in range(n)])


def blobs(running):
    return sorted(running.hub.ledger.blobs.digests())


def test_a_large_result_is_stored_off_the_loop_and_what_its_sender_sent_next_waits_behind_it(running):
    creator, solver = running.client("creator-0"), running.client("solver-0")
    creator.ready("creator", kinds=())
    solver.ready("solver")
    [task_id] = submit(creator)
    assign = solver.recv().message
    result = large(task_id, assign.attempt)
    solver.send(Result(task_id=task_id, attempt=assign.attempt, result=result))
    solver.send(StatusQuery())  # small: handled at once were it not for the order
    solver.send(Disconnect())  # handled first, it would bury the solver and refuse its result (not_ready)
    first, second = solver.recv(timeout_ms=10_000), solver.recv(timeout_ms=10_000)
    assert first.message.kind == "ack" and first.message.status == "accepted"
    assert second.message.kind == "status_reply" and second.message.metrics["done.generate_result"] == 1
    assert running.hub.offload.jobs == 1
    record = running.task(task_id)
    assert record["state"] == "done" and record["result"] == result
    assert len(blobs(running)) == 1  # stored once
    creator.send(TaskQuery(task_ids=[task_id]))  # and back out whole, encoded off the loop too
    [info] = creator.recv(timeout_ms=10_000).message.tasks
    assert info.state == "done" and info.result == result
    assert running.hub.offload.jobs == 2


def test_a_refused_large_result_leaves_no_blob(running):
    creator, holder, other = running.client("creator-0"), running.client("solver-0"), running.client("solver-1")
    creator.ready("creator", kinds=())
    holder.ready("solver")
    [task_id] = submit(creator)
    assign = holder.recv().message
    other.ready("solver")
    other.send(Result(task_id=task_id, attempt=assign.attempt, result=large(task_id, assign.attempt)))
    refusal = other.recv(timeout_ms=10_000).message
    assert refusal.kind == "error" and refusal.code == "forbidden"
    wrong = large("another", 1)  # well-formed, of the holder, but samples of another task: InvalidResult
    holder.send(Result(task_id=task_id, attempt=assign.attempt, result=wrong))
    assert holder.recv(timeout_ms=10_000).message.code == "invalid_message"
    deadline = time.monotonic() + 5
    while blobs(running) and time.monotonic() < deadline:  # deleted right after the refusal is sent
        time.sleep(0.05)
    assert running.hub.offload.jobs == 2 and blobs(running) == []
    assert running.task(task_id)["state"] == "leased"
