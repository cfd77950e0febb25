"""The hub over real sockets (ipc, and tcp + CURVE for role binding) with a real SQLite ledger."""

import threading
import time
from collections import Counter

import pytest
import torch
import zmq

from agents.hub import AgentState, Hub, HubConfig
from agents.ledger import Ledger
from protocol import keys
from protocol.messages import (
    GenerateResult,
    GenerateTask,
    Heartbeat,
    PolicyFetch,
    Ready,
    Renew,
    Result,
    Sample,
    StatusQuery,
    Submit,
    TaskFailed,
    TaskQuery,
)
from protocol.transport import ClientCurve
from tests.agents.client import Client, lora_tensors, policy_update
from tests.protocol.examples import PROMPT


class Running:
    def __init__(self, tmp_path, **config):
        self.ctx = zmq.Context()
        self.hub = Hub(HubConfig(run_dir=str(tmp_path / "run"), **config), self.ctx)
        self.hub.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.hub.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.clients = []
        self.links = []  # AgentLinks started against this hub (stopped on close)

    def task(self, task_id):
        """A task's record read through a connection of our own (the hub's belongs to its thread)."""
        ledger = Ledger(self.hub.config.ledger or self.hub.run_dir / "ledger.sqlite", blobs=self.hub.run_dir / "blobs")
        try:
            return ledger.task(task_id)
        finally:
            ledger.close()

    def link(self, name, role, kinds=()):
        """A started AgentLink against this hub (stopped on close)."""
        from agents.agent import AgentLink, LinkConfig

        agent = AgentLink(LinkConfig(name=name, role=role, task_kinds=list(kinds), control=self.hub.endpoints["control"],
                                     data=self.hub.endpoints["data"]), self.ctx)
        self.links.append(agent)
        agent.start()
        return agent

    def client(self, name, channel="control", **kw):
        c = Client(self.ctx, self.hub.endpoints[channel], name, channel, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for link in self.links:
            link.stop()
        self.stop.set()
        self.thread.join(5)
        for c in self.clients:
            c.close()
        self.hub.close()
        self.ctx.destroy(linger=0)  # never blocks on a socket a failed test left open


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50)  # test clients do not heartbeat
    yield r
    r.close()


def generated(task_id, attempt, i, version=0):
    """A generation result for (task, attempt): its sample named TASK_ID.ATTEMPT.I, as solvers name them."""
    return GenerateResult(samples=[sample(i, version, prefix=f"{task_id}.{attempt}.")])


def sample(i, version=0, prefix="s"):
    return Sample(sample_id=f"{prefix}{i}", prompt_id=PROMPT.prompt_id, text=str(i), policy_version=version)


def submit(client, n=1):
    client.send(Submit(tasks=[GenerateTask(prompts=[PROMPT])] * n))
    ack = client.recv().message
    assert ack.status == "queued"
    return ack.task_ids


def test_handshake_then_work_flows_and_results_are_idempotent(running):
    creator, solver = running.client("creator-0"), running.client("solver-0")
    creator.ready("creator", kinds=())
    welcome = solver.ready("solver")
    assert welcome.policy_version == 0 and welcome.hub_id == running.hub.hub_id
    [task_id] = submit(creator)
    assign = solver.recv()
    assert assign.message.kind == "assign" and assign.header.task_id == task_id and assign.message.attempt == 1
    result = Result(task_id=task_id, attempt=1, result=generated(task_id, 1, 0))
    solver.send(result)
    assert solver.recv().message.status == "accepted"
    solver.send(result)  # an outbox replay
    assert solver.recv().message.status == "duplicate"
    assert running.task(task_id)["state"] == "done"


def two_leased(running):
    """A creator, and a solver holding the two tasks it submitted: (creator, solver, task ids, assigns by id)."""
    creator, solver = running.client("creator-0"), running.client("solver-0")
    creator.ready("creator", kinds=())
    solver.ready("solver", capacity=2)
    ids = submit(creator, 2)
    assigns = {a.message.task_id: a.message for a in (solver.recv(), solver.recv())}
    return creator, solver, ids, assigns


def test_a_held_query_is_answered_when_its_tasks_finish_or_its_wait_ends(running):
    creator, solver, (done_id, dead_id), assigns = two_leased(running)
    creator.send(TaskQuery(task_ids=[done_id, dead_id], wait_s=10))
    assert creator.recv(timeout_ms=300) is None  # held: nothing is finished
    solver.send(Result(task_id=done_id, attempt=assigns[done_id].attempt, result=generated(done_id, assigns[done_id].attempt, 0)))
    assert solver.recv().message.status == "accepted"
    assert creator.recv(timeout_ms=300) is None  # one task still leased
    started = time.monotonic()
    solver.send(TaskFailed(task_id=dead_id, attempt=assigns[dead_id].attempt, reason="bad prompt", retryable=False))
    report = creator.recv(timeout_ms=2000).message
    assert time.monotonic() - started < 1.0  # answered when the last one finished, not at the 10 s wait
    assert [(t.task_id, t.state) for t in report.tasks] == [(done_id, "done"), (dead_id, "dead")]
    assert report.tasks[0].result.samples[0].sample_id == f"{done_id}.{assigns[done_id].attempt}.0"

    [queued] = submit(creator)  # the solver's credit is free again, so it is leased; it never finishes here
    started = time.monotonic()
    creator.send(TaskQuery(task_ids=[queued], wait_s=0.5))
    report = creator.recv(timeout_ms=3000).message
    assert 0.5 <= time.monotonic() - started < 2.0 and report.tasks[0].state in ("queued", "leased")
    assert len(running.hub.waiters) == 0


def test_a_query_waiting_for_any_is_answered_at_the_first_finished_task(running):
    creator, solver, (first, second), assigns = two_leased(running)
    creator.send(TaskQuery(task_ids=[first, second], wait_s=10, wait_for="any"))
    assert creator.recv(timeout_ms=300) is None  # held: nothing is finished
    started = time.monotonic()
    solver.send(Result(task_id=second, attempt=assigns[second].attempt, result=generated(second, assigns[second].attempt, 0)))
    report = creator.recv(timeout_ms=2000).message
    assert time.monotonic() - started < 1.0  # the first finished task answers it; the other is still leased
    assert [(t.task_id, t.state) for t in report.tasks] == [(first, "leased"), (second, "done")]
    started = time.monotonic()
    creator.send(TaskQuery(task_ids=[first, second], wait_s=10, wait_for="any"))  # one is finished already
    assert [t.state for t in creator.recv(timeout_ms=2000).message.tasks] == ["leased", "done"]
    assert time.monotonic() - started < 1.0 and len(running.hub.waiters) == 0


def test_credit_limits_what_an_agent_holds(running):
    creator, solver = running.client("creator-0"), running.client("solver-0")
    creator.ready("creator", kinds=())
    solver.ready("solver", capacity=2)
    submit(creator, 5)
    assigns = [solver.recv(timeout_ms=1000) for _ in range(3)]
    assert [a is not None for a in assigns] == [True, True, False]
    first = assigns[0].message
    solver.send(Result(task_id=first.task_id, attempt=first.attempt, result=generated(first.task_id, first.attempt, 1)))
    kinds = {solver.recv().message.kind, solver.recv().message.kind}
    assert kinds == {"ack", "assign"}  # one result back frees one credit


def test_a_busy_agent_takes_more_only_while_every_other_agent_still_has_one_queued(running):
    creator, a, b = running.client("creator-0"), running.client("solver-0"), running.client("solver-1")
    creator.ready("creator", kinds=())
    a.ready("solver", capacity=2)
    b.ready("solver", capacity=2)
    submit(creator, 3)  # one each; the third waits in the queue for whichever finishes first
    assert [a.recv(timeout_ms=1000) is not None, a.recv(timeout_ms=300) is not None] == [True, False]
    assert [b.recv(timeout_ms=1000) is not None, b.recv(timeout_ms=300) is not None] == [True, False]
    creator.send(StatusQuery())
    assert creator.recv().message.queues["generate"].queued == 1
    submit(creator)  # two queued: one agent takes a second, and one is left for the other
    assert sorted(x.recv(timeout_ms=1000) is not None for x in (a, b)) == [False, True]
    creator.send(StatusQuery())
    assert creator.recv().message.queues["generate"].queued == 1


def test_a_submit_sent_again_with_its_key_gets_the_same_tasks(running):
    creator = running.client("creator-0")
    creator.ready("creator", kinds=())
    tasks = [GenerateTask(prompts=[PROMPT])] * 2
    acks = []
    for _ in range(2):  # the first reply "lost": the creator sends the same submission again
        creator.send(Submit(tasks=tasks, key="j1:train:3"))
        acks.append(creator.recv().message)
    assert acks[0].task_ids == acks[1].task_ids and len(acks[0].task_ids) == 2
    creator.send(Submit(tasks=tasks[:1], key="j1:train:3"))  # the key of another submission
    assert creator.recv().message.code == "invalid_message"
    creator.send(StatusQuery())
    assert creator.recv().message.queues["generate"].queued == 2


def test_refusals_are_answered_and_counted_and_the_hub_keeps_serving(running):
    stranger = running.client("stranger")
    stranger.sock.send_multipart([b"GET / HTTP/1.1", b"", b""])
    assert stranger.recv().message.code == "bad_signature"
    stranger.send(Renew(task_id="t", attempt=1))
    assert stranger.recv().message.code == "not_ready"
    solver = running.client("solver-0")
    solver.ready("solver")
    solver.send(Submit(tasks=[GenerateTask(prompts=[PROMPT])]))  # only a creator may submit
    assert solver.recv().message.code == "forbidden"
    solver.send(StatusQuery())
    status = solver.recv().message
    assert status.metrics["rejected.bad_signature"] == 1 and status.metrics["rejected.forbidden"] == 1
    assert [a.name for a in status.agents] == ["solver-0"]


def test_expired_lease_goes_to_another_agent_and_the_late_result_is_stale(tmp_path):
    r = Running(tmp_path, lease_s=0.4, heartbeat_interval_s=0.1, liveness=100)
    try:
        creator, slow, fast = r.client("creator-0"), r.client("slow"), r.client("fast")
        creator.ready("creator", kinds=())
        slow.ready("solver")
        [task_id] = submit(creator)
        first = slow.recv().message
        fast.ready("solver")
        second = fast.recv(timeout_ms=3000).message  # after the lease expired
        assert (second.task_id, second.attempt) == (task_id, 2)
        slow.send(Result(task_id=task_id, attempt=1, result=generated(task_id, 1, 1)))
        assert slow.recv().message.status == "stale"
        fast.send(Result(task_id=task_id, attempt=2, result=generated(task_id, 2, 2)))
        assert fast.recv().message.status == "accepted"
        assert first.attempt == 1
    finally:
        r.close()


def test_an_agent_that_let_a_lease_expire_gets_no_work_until_it_answers_for_it(tmp_path):
    r = Running(tmp_path, lease_s=0.4, heartbeat_interval_s=0.1, liveness=100)
    try:
        creator, stuck = r.client("creator-0"), r.client("solver-0")
        creator.ready("creator", kinds=())
        stuck.ready("solver", capacity=2)  # credit left for another task, even its own one back
        [task_id] = submit(creator)
        assert stuck.recv().message.attempt == 1
        assert stuck.recv(timeout_ms=1500) is None  # the lease expired and the task waits for someone else
        assert r.task(task_id)["state"] == "queued"
        stuck.send(Result(task_id=task_id, attempt=1, result=generated(task_id, 1, 1)))
        assert stuck.recv().message.status == "accepted"  # late, but nobody else had started it
        assert r.task(task_id)["state"] == "done"
        [next_id] = submit(creator)
        assert stuck.recv(timeout_ms=1000).message.task_id == next_id  # answered: trusted with work again
    finally:
        r.close()


def test_silent_agent_is_buried_and_its_task_requeued(tmp_path):
    r = Running(tmp_path, lease_s=60, heartbeat_interval_s=0.1, liveness=8)
    try:
        creator, silent = r.client("creator-0"), r.client("silent")
        creator.ready("creator", kinds=())
        silent.ready("solver")
        [task_id] = submit(creator)
        assert silent.recv().message.task_id == task_id
        silent.close()  # never heard from again
        rescuer = r.client("rescuer")
        rescuer.ready("solver")
        deadline, assign = time.time() + 5, None
        while assign is None and time.time() < deadline:
            rescuer.send(Heartbeat())  # the rescuer stays alive; the silent one does not
            env = rescuer.recv(timeout_ms=100)
            assign = env.message if env is not None and env.message.kind == "assign" else None
        assert assign is not None and assign.task_id == task_id and assign.attempt == 2
    finally:
        r.close()


def test_policy_update_is_persisted_announced_and_fetched(running):
    trainer_control, trainer_data = running.client("trainer-0"), running.client("trainer-0", "data")
    solver, solver_data = running.client("solver-0"), running.client("solver-0", "data")
    trainer_control.ready("trainer", kinds=())
    solver.ready("solver")
    weights = lora_tensors() | {"model.q_proj.lora_A.weight": torch.randn(4, 8, dtype=torch.bfloat16)}
    update = policy_update(1)
    trainer_data.send(update, tensors=weights)
    assert trainer_data.recv().message.status == "accepted"
    announce = solver.recv(skip=("heartbeat",))
    assert announce.message.kind == "policy_announce" and announce.message.version == 1
    solver_data.send(PolicyFetch(version=0))
    fetched = solver_data.recv()
    assert fetched.message == update
    for name, tensor in weights.items():
        assert torch.equal(fetched.tensors[name], tensor) and fetched.tensors[name].dtype == tensor.dtype
    assert (running.hub.run_dir / "adapters" / "v000001.safetensors").exists()
    solver_data.send(PolicyFetch(version=7))
    assert solver_data.recv().message.code == "unknown_task"


def test_a_following_solver_is_pushed_each_new_policy_unasked(running):
    trainer_control, trainer_data = running.client("trainer-0"), running.client("trainer-0", "data")
    solver, solver_data = running.client("solver-0"), running.client("solver-0", "data")
    trainer_control.ready("trainer", kinds=())
    solver.ready("solver")
    solver_data.send(PolicyFetch(version=0, follow=True))
    assert solver_data.recv().message.kind == "ack"  # nothing published yet: following is all it asked
    weights = lora_tensors()
    for version in (1, 2):
        update = policy_update(version)
        trainer_data.send(update, tensors=weights)
        assert trainer_data.recv().message.status == "accepted"
        pushed = solver_data.recv()
        assert pushed.message == update and all(torch.equal(pushed.tensors[k], t) for k, t in weights.items())
    solver_data.close()
    for version in range(3, 10):  # once the hub has seen it go, a follower that is gone is no longer pushed
        time.sleep(0.3)
        trainer_data.send(policy_update(version), tensors=weights)
        assert trainer_data.recv().message.status == "accepted"
        if not running.hub.followers:
            break
    assert not running.hub.followers


def test_only_a_trainer_may_publish_weights(running):
    solver, solver_data = running.client("solver-0"), running.client("solver-0", "data")
    solver.ready("solver")
    solver_data.send(policy_update(1), tensors=lora_tensors())
    assert solver_data.recv().message.code == "forbidden"


def test_samples_older_than_the_staleness_bound_are_refused(running):
    creator, solver, trainer_data = running.client("creator-0"), running.client("solver-0"), running.client(
        "trainer-0", "data")
    running.client("trainer-0").ready("trainer", kinds=())
    creator.ready("creator", kinds=())
    solver.ready("solver")
    trainer_data.send(policy_update(1), tensors=lora_tensors())
    assert trainer_data.recv().message.status == "accepted"
    [task_id] = submit(creator)
    assign = solver.recv().message
    solver.send(Result(task_id=task_id, attempt=assign.attempt, result=generated(task_id, assign.attempt, 0, version=0)))
    assert solver.recv().message.status == "stale"
    retry = solver.recv().message  # requeued and offered again
    assert (retry.kind, retry.task_id, retry.attempt) == ("assign", task_id, 2)


def test_hub_restart_requeues_and_accepts_the_replayed_result(tmp_path):
    first = Running(tmp_path)
    creator, solver = first.client("creator-0"), first.client("solver-0")
    creator.ready("creator", kinds=())
    solver.ready("solver")
    [task_id] = submit(creator)
    assign = solver.recv().message
    first.close()  # the hub goes away with the task leased

    second = Running(tmp_path)
    try:
        solver = second.client("solver-0")
        welcome = solver.ready("solver", kinds=())  # reconnects; takes no new work
        assert welcome.hub_id != first.hub.hub_id
        solver.send(Result(task_id=task_id, attempt=assign.attempt, result=generated(task_id, assign.attempt, 3)))
        assert solver.recv().message.status == "accepted"
    finally:
        second.close()


def test_curve_key_is_bound_to_its_name_and_role(tmp_path):
    key_dir = tmp_path / "keys"
    keys.init_keys(key_dir, [("solver-0", "solver")])
    r = Running(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(key_dir))
    try:
        curve = ClientCurve(keys.agent_keypair(key_dir, "solver-0"), keys.hub_keypair(key_dir).public)
        impostor = r.client("solver-0", curve=curve)
        impostor.send(Ready(role="trainer", name="solver-0"))  # the key says solver
        assert impostor.recv().message.code == "forbidden"
        honest = r.client("solver-0", curve=curve)
        assert honest.ready("solver").kind == "welcome"
    finally:
        r.close()


def test_old_adapters_are_retired(tmp_path):
    r = Running(tmp_path, keep_adapters=2, keep_every=3, liveness=50)
    try:
        r.client("trainer-0").ready("trainer", kinds=())
        data = r.client("trainer-0", "data")
        for version in range(1, 8):
            data.send(policy_update(version), tensors=lora_tensors(version))
            assert data.recv().message.status == "accepted"
        kept = sorted(p.name for p in (r.hub.run_dir / "adapters").iterdir())
        assert kept == ["v000003.safetensors", "v000006.safetensors", "v000007.safetensors"]
        r.client("solver-0").ready("solver")
        fetch = r.client("solver-0", "data")
        for version, expected in ((7, "policy_update"), (3, "policy_update"), (4, "error")):  # memory, disk, retired
            fetch.send(PolicyFetch(version=version))
            reply = fetch.recv().message
            assert reply.kind == expected and (expected == "error" or reply.version == version)
    finally:
        r.close()


def test_an_agent_gone_without_a_word_costs_no_task_an_attempt(tmp_path):
    """Its connection is gone before the hub noticed its silence: assignments to it cannot be sent, and
    must neither burn the tasks' attempts (they would go DEAD) nor be lost."""
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50, max_attempts=3)
    try:
        ghost = r.client("ghost")
        ghost.ready("solver")
        ghost.close()  # a kill -9: no DISCONNECT
        time.sleep(0.3)
        ids = submit(_creator(r), n=4)
        time.sleep(1.0)  # many housekeeping ticks while the hub still counts the ghost as alive
        assert [(r.task(t)["state"], r.task(t)["attempt"]) for t in ids] == [("queued", 0)] * 4
        solver = r.client("solver-0")
        solver.ready("solver")
        assign = solver.recv().message
        assert assign.kind == "assign" and assign.attempt == 1
    finally:
        r.close()


def _creator(r):
    creator = r.client("creator-0")
    creator.ready("creator", kinds=())
    return creator


def test_dispatch_asks_the_ledger_nothing_for_agents_that_cannot_take_work(tmp_path):
    """Dispatch reads the agents filed by what they can take, not every agent: with 300 solvers full or waiting
    their turn, a turn costs at most one tally read, however many agents there are."""
    hub = Hub(HubConfig(run_dir=str(tmp_path / "run")), zmq.Context())
    hub.start()
    calls = Counter()
    for method in ("queued", "lease"):
        real = getattr(hub.ledger, method)
        setattr(hub.ledger, method, lambda *a, _real=real, _name=method, **k: calls.update([_name]) or _real(*a, **k))
    hub.ledger.submit([GenerateTask(prompts=[PROMPT])] * 5, now=0)
    agents = [AgentState(f"solver-{i}", "solver", f"solver-{i}".encode(), 2, ["generate"], time.time(),
                         in_flight={(f"t{i}", 1)}) for i in range(300)]
    for agent in agents:  # each holds one of its two: credit left, but 5 queued < one for each of the others
        hub.agents[agent.identity] = agent
        hub._index(agent)
    hub.dispatch(time.time())
    assert calls == {"queued": 1} and hub.ledger.queue_stats()["generate"].queued == 5
    for agent in agents:  # now full
        agent.in_flight.add(("u", 1))
        hub._index(agent)
    calls.clear()
    hub.dispatch(time.time())
    assert calls == {}
    hub.close()


def test_results_that_arrive_together_are_committed_together_and_each_acknowledged(running):
    """While one commit is slow (a busy disk), the results that arrive meanwhile go into the next one: fewer commits
    than results, and every result acknowledged once, after its commit."""
    creator, solver = running.client("creator-0"), running.client("solver-0")
    creator.ready("creator", kinds=())
    solver.ready("solver", capacity=16)
    ids = submit(creator, 16)
    assigns = [solver.recv().message for _ in ids]
    batches, real = [], running.hub.ledger.complete_many

    def slow_first(results, now):
        batches.append(len(results))
        if len(batches) == 1:
            time.sleep(0.3)
        return real(results, now)

    running.hub.ledger.complete_many = slow_first
    for a in assigns:
        solver.send(Result(task_id=a.task_id, attempt=a.attempt, result=generated(a.task_id, a.attempt, 0)))
    acks = [solver.recv(timeout_ms=5000).message for _ in assigns]
    assert sorted(a.task_id for a in acks) == sorted(ids) and {a.status for a in acks} == {"accepted"}
    assert sum(batches) == 16 and len(batches) < 16 and max(batches) > 1, batches
    assert all(running.task(t)["state"] == "done" for t in ids)
