"""What an allowed but hostile agent can and cannot do, against a hub process over tcp + CURVE.

Every message here comes from a raw pyzmq socket holding an allowed agent's key (tests/reliability/raw.py),
written by hand with msgpack: well-formed messages the project's own models would refuse to build, other
agents' routing ids and leases, adapters that do not fit.
"""

import os
import sqlite3
import time

import pytest
import torch
import zmq

from protocol import keys
from tests.agents.client import lora_tensors
from tests.reliability.raw import Raw, generate_task, keyed, prompt, sample
from tests.reliability.run import hub_process

pytestmark = pytest.mark.slow

AGENTS = [("creator-0", "creator"), ("solver-0", "solver"), ("solver-1", "solver"), ("judge-0", "judge"),
          ("trainer-0", "trainer"), ("observer-0", "observer")]
KINDS = {"creator": [], "solver": ["generate"], "judge": ["judge"], "trainer": ["train"], "observer": []}
NAN, HUGE = float("nan"), 2**63  # HUGE: msgpack carries it (uint64); SQLite's INTEGER stops at 2**63 - 1


class Hub:
    """A hub process over tcp + CURVE, and raw clients with its agents' keys."""

    def __init__(self, tmp_path, proc, control):
        self.tmp_path, self.proc, self.control, self.data = tmp_path, proc, control, proc.data
        self.key_dir = tmp_path / "keys"
        self.ctx = zmq.Context()
        self.raws = []
        self.creator = None  # one creator connection (a second one with the key would be "in use")

    def raw(self, name, routing_id=None, channel="control"):
        endpoint = self.control if channel == "control" else self.data
        routing_id = routing_id or f"{name}/{channel}/{os.urandom(4).hex()}".encode()
        client = Raw(self.ctx, endpoint, routing_id, curve=keyed(self.key_dir, name))
        self.raws.append(client)
        return client

    def agent(self, name, kinds=None, routing_id=None):
        """A raw client with `name`'s key that said READY and was welcomed."""
        role = dict(AGENTS)[name]
        client = self.raw(name, routing_id)
        sent = client.send("ready", {"role": role, "name": name, "capacity": 1,
                                     "task_kinds": KINDS[role] if kinds is None else kinds})
        reply = client.reply_to(sent)
        assert reply is not None and reply[0] == "welcome", (name, reply)
        return client

    def alive(self):
        """The hub process still runs and answers a status query."""
        observer = self.raw("observer-0")
        reply = observer.reply_to(observer.send("status_query"), timeout_ms=5000)
        return self.proc.poll() is None and reply is not None and reply[0] == "status_reply"

    def submit(self, task: dict) -> str:
        self.creator = creator = self.creator or self.agent("creator-0")
        kind, body = creator.reply_to(creator.send("submit", {"tasks": [task]}))
        assert kind == "ack", body
        return body["task_ids"][0]

    def lease(self, agent, task: dict):
        """Submit `task` (as the creator) and take its assignment at `agent`: (task id, attempt)."""
        self.submit(task)
        got = agent.recv(timeout_ms=5000)
        assert got is not None and got[0] == "assign", got
        return got[1][3], got[1][4]

    def rows(self, sql, *args):
        db = sqlite3.connect(f"file:{self.tmp_path / 'hub-run' / 'ledger.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def task(self, task_id):
        [row] = self.rows("SELECT state, attempt, agent FROM tasks WHERE task_id = ?", task_id)
        return row

    def close(self):
        for client in self.raws:
            client.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def hub(tmp_path):
    keys.init_keys(tmp_path / "keys", AGENTS)
    with hub_process(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(tmp_path / "keys"),
                     heartbeat_interval_s=0.2, liveness=10_000, lease_s=60) as (proc, control):
        h = Hub(tmp_path, proc, control)
        yield h
        h.close()


def _refused(reply, code):
    return reply is not None and reply[0] == "error" and reply[1]["code"] == code


# ------------------------------------------------------------------------------------------ numbers

def _judge_task():
    group = {"prompt": prompt(), "samples": [sample("s1", "p1")], "verdicts": []}
    return {"kind": "judge_task", "groups": [group], "want_judgment": False}


def _train_task():
    return {"kind": "train_task", "groups": [], "round": 1}


CASES = {  # name -> (agent, task it leases first or None, channel, kind, body, header attempt or None)
    "Ready.holding[].attempt = 2**63, from an observer": (
        "observer-0", None, "control", "ready",
        {"role": "observer", "name": "observer-0", "holding": [{"task_id": "t1", "attempt": HUGE}]}, None),
    "Renew.attempt = 2**63": ("solver-0", generate_task(), "control", "renew", {}, HUGE),
    "Prompt.difficulty = 2**63": (
        "creator-0", None, "control", "submit", {"tasks": [generate_task(prompt(difficulty=HUGE))]}, None),
    "Sample.policy_version = 2**63": (
        "solver-0", generate_task(), "control", "result",
        {"result": {"kind": "generate_result", "samples": [sample("s9", "p1", policy_version=HUGE)]}}, 1),
    "PolicyUpdate.version = 2**63": (
        "trainer-0", None, "data", "policy_update",
        {"version": HUGE, "parent_version": 0, "base_model": "m", "adapter_config": {}}, None),
    "a NaN metric in a TrainingReport": (
        "trainer-0", _train_task(), "control", "result",
        {"result": {"kind": "training_report", "policy_version": 0, "step": 1, "examples": 1, "tokens_per_s": 0.0,
                    "metrics": {"loss": NAN}}}, 1),
    "a NaN verdict score": (
        "judge-0", _judge_task(), "control", "result",
        {"result": {"kind": "judge_result", "verdicts": [{"sample_id": "s1", "score": NAN, "judgment": None}]}}, 1),
    "a verdict score of 1e308 (a run's mean reward would overflow: status broken for good)": (
        "judge-0", _judge_task(), "control", "result",
        {"result": {"kind": "judge_result", "verdicts": [{"sample_id": "s1", "score": 1e308, "judgment": None}]}}, 1),
    "a task query naming one task 1024 times (its result read and sent 1024 times)": (
        "creator-0", None, "control", "task_query", {"task_ids": ["t1"] * 1024}, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_well_formed_message_with_a_number_nothing_can_store_is_refused_and_the_hub_lives(hub, case):
    """Each of these, from an allowed key, used to take the hub down (an integer past SQLite's range raised
    OverflowError in the loop) or was acknowledged and lost (a NaN verdict). Now each is answered with an
    invalid_message error, nothing is stored, and the hub keeps serving."""
    name, task, channel, kind, body, attempt = CASES[case]
    client = hub.raw(name) if kind == "ready" else hub.creator if name == "creator-0" and hub.creator else hub.agent(name)
    hub.creator = client if name == "creator-0" else hub.creator
    task_id = None
    if task is not None:
        task_id, attempt = hub.lease(client, task)[0], attempt
    sender = hub.raw(name, f"{name}/data".encode(), channel="data") if channel == "data" else client
    reply = sender.reply_to(sender.send(kind, body, task_id=task_id, attempt=attempt), timeout_ms=5000)
    assert _refused(reply, "invalid_message"), reply
    assert hub.alive()
    if task_id is not None:
        assert hub.task(task_id)[0] == "leased"  # still the agent's to finish: nothing taken
    assert hub.rows("SELECT COUNT(*) FROM verdicts") == [(0,)] and hub.rows("SELECT COUNT(*) FROM metrics") == [(0,)]
    assert hub.rows("SELECT COUNT(*) FROM policies") == [(0,)]


# ------------------------------------------------------------------------------------------ identity

def test_another_key_cannot_take_over_an_agents_connection(hub):
    """With ROUTER_HANDOVER a second connection claiming solver-0's routing id was handed solver-0's live
    connection: an observer's key received its heartbeats and assignments. Now a duplicate id is refused by
    the socket, and an id naming another agent is refused by the hub: solver-0 keeps its connection."""
    solver = hub.agent("solver-0", routing_id=b"solver-0/control")  # the id agents used to have
    thief = hub.raw("observer-0", routing_id=b"solver-0/control")
    thief.send("heartbeat")
    solver.recv(timeout_ms=500)  # let the thief's connection settle, one way or the other
    assert solver.heard("heartbeat", within_ms=2000)  # solver-0 still has its connection
    task_id, _ = hub.lease(solver, generate_task())  # and its work
    assert hub.task(task_id)[2] == "solver-0"
    assert thief.recv(timeout_ms=500, skip=()) is None  # the thief hears nothing at all
    impostor = hub.raw("observer-0", routing_id=b"solver-0/control/x")
    reply = impostor.reply_to(impostor.send("ready", {"role": "solver", "name": "solver-0", "task_kinds": ["generate"]}))
    assert _refused(reply, "forbidden"), reply
    reply = impostor.reply_to(impostor.send("status_query"))
    assert _refused(reply, "forbidden") and "cannot speak as" in reply[1]["detail"], reply


def test_only_the_lease_holder_may_renew_fail_or_finish_a_task(hub):
    owner, other = hub.agent("solver-0"), hub.agent("solver-1")
    task_id, attempt = hub.lease(owner, generate_task())
    [(deadline,)] = hub.rows("SELECT deadline FROM tasks WHERE task_id = ?", task_id)
    kind, body = other.reply_to(other.send("renew", {}, task_id=task_id, attempt=attempt))
    assert (kind, body["status"]) == ("ack", "stale")
    reply = other.reply_to(other.send("task_failed", {"reason": "mine now", "retryable": False}, task_id=task_id,
                                      attempt=attempt))
    assert _refused(reply, "forbidden"), reply
    forged = {"result": {"kind": "generate_result", "samples": [sample(f"{task_id}.1.0.0", "p1")]}}
    reply = other.reply_to(other.send("result", forged, task_id=task_id, attempt=attempt))
    assert _refused(reply, "forbidden"), reply
    assert hub.task(task_id) == ("leased", attempt, "solver-0")  # untouched: not DEAD, not done
    assert hub.rows("SELECT deadline FROM tasks WHERE task_id = ?", task_id) == [(deadline,)]
    assert hub.rows("SELECT COUNT(*) FROM samples") == [(0,)]
    honest = {"result": {"kind": "generate_result", "samples": [sample(f"{task_id}.1.0.0", "p1")]}}
    kind, body = owner.reply_to(owner.send("result", honest, task_id=task_id, attempt=attempt))
    assert (kind, body["status"]) == ("ack", "accepted")


def test_a_solver_cannot_claim_the_sample_ids_of_another_solvers_task(hub):
    """Sample ids are unique in the ledger. A solver finishing its own task with the ids another task's samples will
    have (TASK_ID.ATTEMPT.I.J) would get the honest result of that task refused; a sample id must name its own
    task and attempt."""
    owner, other = hub.agent("solver-0"), hub.agent("solver-1")
    theirs, attempt = hub.lease(owner, generate_task())
    mine, my_attempt = hub.lease(other, generate_task())
    squat = {"result": {"kind": "generate_result", "samples": [sample(f"{theirs}.{attempt}.0.0", "p1")]}}
    reply = other.reply_to(other.send("result", squat, task_id=mine, attempt=my_attempt))
    assert _refused(reply, "invalid_message") and "start with" in reply[1]["detail"], reply
    honest = {"result": {"kind": "generate_result", "samples": [sample(f"{theirs}.{attempt}.0.0", "p1")]}}
    kind, body = owner.reply_to(owner.send("result", honest, task_id=theirs, attempt=attempt))
    assert (kind, body["status"]) == ("ack", "accepted")


def test_a_second_connection_with_a_live_agents_name_is_told_it_is_in_use(hub):
    """Two processes with one key (say `attach --name solver-0` while solver-0 runs): each Ready used to release the
    other's leases, back and forth, until tasks went DEAD. The second is refused while the first lives."""
    first = hub.agent("solver-0")
    task_id, attempt = hub.lease(first, generate_task())
    second = hub.raw("solver-0")
    reply = second.reply_to(second.send("ready", {"role": "solver", "name": "solver-0", "task_kinds": ["generate"]}))
    assert _refused(reply, "in_use"), reply
    assert hub.task(task_id) == ("leased", attempt, "solver-0")  # the first one's lease is untouched
    assert first.heard("heartbeat", within_ms=2000)
    first.close()  # its process dies: the socket closes, the hub's connection with it goes at once
    time.sleep(0.3)
    restarted = hub.agent("solver-0")  # let in at once, not after the liveness window
    got = restarted.recv(timeout_ms=5000)  # its task, again (released when it came back, and leased to it)
    assert got is not None and got[0] == "assign" and got[1][3] == task_id
    assert hub.task(task_id) == ("leased", attempt + 1, "solver-0")


def test_a_role_takes_only_its_own_queues_and_a_task_only_its_own_kind_of_result(hub):
    owner = hub.agent("solver-0")
    judge = hub.raw("judge-0")
    reply = judge.reply_to(judge.send("ready", {"role": "judge", "name": "judge-0", "task_kinds": ["generate"]}))
    assert _refused(reply, "forbidden"), reply  # a judge's key cannot lease generation work
    judge = hub.agent("judge-0")
    task_id, attempt = hub.lease(owner, generate_task())
    report = {"result": {"kind": "training_report", "policy_version": 0, "step": 0, "examples": 0}}
    assert _refused(judge.reply_to(judge.send("result", report, task_id=task_id, attempt=attempt)), "forbidden")
    reply = owner.reply_to(owner.send("result", report, task_id=task_id, attempt=attempt))
    assert _refused(reply, "invalid_message") and "generate_result" in reply[1]["detail"], reply
    stranger = {"result": {"kind": "generate_result", "samples": [sample("s-x", "not-in-the-task")]}}
    assert _refused(owner.reply_to(owner.send("result", stranger, task_id=task_id, attempt=attempt)), "invalid_message")
    assert hub.task(task_id)[0] == "leased"


def test_the_data_socket_checks_the_key_too(hub):
    hub.agent("solver-0")
    hub.agent("solver-1")
    thief = hub.raw("solver-1", routing_id=b"solver-0/data", channel="data")  # solver-0's data id, another's key
    reply = thief.reply_to(thief.send("policy_fetch", {"version": 0, "follow": True}))
    assert _refused(reply, "forbidden"), reply
    own = hub.raw("solver-1", channel="data")
    kind, body = own.reply_to(own.send("policy_fetch", {"version": 0, "follow": True}))
    assert (kind, body["status"]) == ("ack", "accepted")  # nothing published yet: following is all it asked
    assert _refused(own.reply_to(own.send("status_query")), "invalid_message")  # weight sync only on this socket


# ------------------------------------------------------------------------------------------ adapters

def _lora(seed=0, rank=4, dims=(8, 8), **override):
    """A LoRA adapter as raw frames: name -> (dtype, shape, bytes)."""
    tensors = lora_tensors(seed, rank, dims) | override
    return {n: (str(t.dtype).removeprefix("torch."), list(t.shape), t.contiguous().numpy().tobytes())
            for n, t in tensors.items()}


def _update(version, rank=4):
    return {"version": version, "parent_version": version - 1, "base_model": "m", "adapter_config": {"r": rank}}


def test_a_policy_version_is_written_once_and_must_fit_the_layout(hub):
    hub.agent("trainer-0")
    hub.agent("solver-0")
    trainer = hub.raw("trainer-0", b"trainer-0/data", channel="data")
    fetcher = hub.raw("solver-0", b"solver-0/data", channel="data")

    def publish(body, tensors):
        return trainer.reply_to(trainer.send("policy_update", body, tensors=tensors), timeout_ms=5000)

    first = _lora(seed=1)
    assert publish(_update(1), first)[1]["status"] == "accepted"
    assert _refused(publish(_update(1), _lora(seed=2)), "forbidden")  # other bytes under a published version
    assert publish(_update(1), first)[1]["status"] == "duplicate"  # the same again: a trainer that did not hear the ack
    fetcher.send("policy_fetch", {"version": 1})
    kind, header, _ = fetcher.recv(timeout_ms=5000)
    assert kind == "policy_update"  # the first bytes, not the second try's
    assert {m["name"]: data for m, data in zip(header[6], fetcher.frames[3:], strict=True)} == \
        {k: v[2] for k, v in first.items()}
    bad = {
        "not a LoRA key": _lora(seed=3) | {"model.q_proj.weight": ("float32", [8, 8], bytes(256))},
        "rank differs from the config": _lora(seed=3, rank=2),
        "NaN values": _lora(seed=3, **{"model.q_proj.lora_A.weight": torch.full((4, 8), NAN)}),
        "an A without its B": {k: v for k, v in _lora(seed=3).items() if "lora_A" in k},
        "shapes differ from v1's": _lora(seed=3, dims=(16, 8)),
    }
    for what, tensors in bad.items():
        reply = publish(_update(2, rank=2 if "rank" in what else 4), tensors)
        assert _refused(reply, "invalid_message"), (what, reply)
    assert _refused(publish(_update(5), _lora(seed=3)), "invalid_message")  # not the next version
    assert hub.alive()
    assert hub.rows("SELECT version FROM policies") == [(1,)]
    assert sorted(p.name for p in (hub.tmp_path / "hub-run" / "adapters").iterdir()) == ["v000001.safetensors"]
    from safetensors.torch import load_file

    stored = load_file(hub.tmp_path / "hub-run" / "adapters" / "v000001.safetensors")
    assert {k: t.numpy().tobytes() for k, t in stored.items()} == {k: v[2] for k, v in first.items()}
