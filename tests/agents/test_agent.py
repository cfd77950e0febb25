"""AgentLink against a real hub over real sockets: work, heartbeats while busy, outbox replay, stop."""

import threading
import time

import pytest

from agents.agent import AgentLink, LinkConfig
from agents.ledger import Ledger
from protocol.messages import GenerateResult, GenerateTask, Sample
from tests.agents.test_hub import Running
from tests.protocol.examples import PROMPT


def link(running, name, role="solver", kinds=("generate",), **kw):
    config = LinkConfig(name=name, role=role, control=running.hub.endpoints["control"], task_kinds=list(kinds),
                        heartbeat_interval_s=0.1, liveness=5, reconnect_min_s=0.05, reconnect_max_s=0.3, **kw)
    agent = AgentLink(config, running.ctx)
    running.links.append(agent)
    agent.start(timeout_s=10)
    return agent


def result(assign, i=0):
    sample_id = f"{assign.task_id}.{assign.attempt}.{i}"  # as solvers name them
    return GenerateResult(samples=[Sample(sample_id=sample_id, prompt_id=PROMPT.prompt_id, text="85", policy_version=0)])


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5)
    yield r
    r.close()


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_work_flows_and_the_outbox_empties_on_ack(running):
    creator, solver = link(running, "creator-0", "creator", kinds=()), link(running, "solver-0")
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
    assign = solver.next_task(timeout_s=5)
    assert assign.task_id == task_id and assign.task.prompts == [PROMPT]
    solver.complete(assign, result(assign))
    assert wait_for(lambda: solver.pending_results() == 0)
    assert running.task(task_id)["state"] == "done"
    assert {a.name for a in creator.status().agents} == {"creator-0", "solver-0"}
    with pytest.raises(RuntimeError, match="forbidden"):
        solver.submit([GenerateTask(prompts=[PROMPT])], timeout_s=5)  # a solver may not submit
    creator.stop()
    solver.stop()


def test_heartbeats_and_renewals_flow_while_the_compute_thread_is_busy(tmp_path):
    """Liveness 0.8 s and leases of 1.2 s, while the 'model' holds the compute thread for 3 s."""
    r = Running(tmp_path, lease_s=1.2, heartbeat_interval_s=0.1, liveness=8)
    try:
        creator, solver = link(r, "creator-0", "creator", kinds=()), link(r, "solver-0")
        [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
        assign = solver.next_task(timeout_s=5)
        busy = threading.Thread(target=time.sleep, args=(3.0,))  # a long generate() call, GIL released
        busy.start()
        busy.join()
        assert "solver-0" in {a.name for a in creator.status().agents}  # never buried
        solver.complete(assign, result(assign))
        assert wait_for(lambda: solver.pending_results() == 0)
        record = r.task(task_id)
        assert record["state"] == "done" and record["attempt"] == 1  # the lease never expired
        creator.stop()
        solver.stop()
    finally:
        r.close()


def test_results_made_while_the_hub_is_down_reach_the_restarted_hub(tmp_path):
    first = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5)
    creator, solver = link(first, "creator-0", "creator", kinds=()), link(first, "solver-0")
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
    assign = solver.next_task(timeout_s=5)
    creator.stop()
    old_hub = first.hub.hub_id
    first.stop.set()  # the hub dies (its loop stops; sockets closed, nothing flushed)
    first.thread.join(5)
    first.hub.close()

    solver.complete(assign, result(assign, 7))  # finished while nobody listens
    time.sleep(0.8)  # the link notices the silence and starts reconnecting
    assert not solver.connected.is_set() and solver.pending_results() == 1

    second = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5)
    try:
        assert wait_for(lambda: solver.connected.is_set() and solver.hub_id == second.hub.hub_id, 10)
        assert solver.hub_id != old_hub
        assert wait_for(lambda: solver.pending_results() == 0, 5)
        record = Ledger(tmp_path / "run" / "ledger.sqlite").task(task_id)
        assert record["state"] == "done" and record["result"].samples[0].sample_id == f"{task_id}.1.7"
        solver.stop()
    finally:
        second.close()
        first.close()


def test_a_question_asked_while_the_hub_is_down_is_answered_by_the_restarted_hub(tmp_path):
    """A query (and a keyed submit) in flight when the hub dies is sent again once the link is welcomed by the
    new hub: the caller gets its answer, not a timeout or a not_ready refusal."""
    first = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5)
    creator = link(first, "creator-0", "creator", kinds=())
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])], key="k1")
    first.stop.set()  # the hub dies
    first.thread.join(5)
    first.hub.close()
    answers = {}

    def ask():
        answers["query"] = creator.query([task_id], timeout_s=20)
        answers["submit"] = creator.submit([GenerateTask(prompts=[PROMPT])], timeout_s=20, key="k1")

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(0.8)  # asked while nobody listens; the link notices the silence
    second = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5)
    try:
        started = time.monotonic()
        asking.join(20)
        assert not asking.is_alive() and time.monotonic() - started < 10
        assert [(t.task_id, t.state) for t in answers["query"]] == [(task_id, "queued")]
        assert answers["submit"] == [task_id]  # the key: the new hub read it from the ledger, nothing queued twice
        creator.stop()
    finally:
        second.close()
        first.close()


def test_stop_disconnects_at_once(running):
    solver = link(running, "solver-0")
    assert "solver-0" in {a.name for a in running.hub.status(time.time()).agents}
    solver.stop()
    assert wait_for(lambda: not running.hub.agents, 2)  # not after liveness runs out: at once


def test_a_handler_that_raises_fails_its_task_and_the_agent_keeps_serving(tmp_path):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.1, liveness=5, max_attempts=2)
    try:
        creator, solver = link(r, "creator-0", "creator", kinds=()), link(r, "solver-0")
        [bad, good] = creator.submit([GenerateTask(prompts=[PROMPT.model_copy(update={"text": "boom"})]),
                                      GenerateTask(prompts=[PROMPT])])

        def handle(assign):
            if assign.task.prompts[0].text == "boom":
                raise ValueError("this prompt breaks the model")
            solver.complete(assign, result(assign))

        stop = threading.Event()
        thread = threading.Thread(target=solver.serve, args=(handle, stop), daemon=True)
        thread.start()
        assert wait_for(lambda: r.task(bad)["state"] == "dead" and r.task(good)["state"] == "done", 10)
        assert "ValueError: this prompt breaks the model" in r.task(bad)["reason"]
        assert r.task(bad)["attempt"] == 2  # retried once (max_attempts 2), by the same living agent
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        r.close()


def test_a_result_lost_on_the_way_is_sent_again_while_the_hub_is_heard(running):
    hub, dropped = running.hub, []
    on_result = hub.on_result

    def lose_the_first(msg):  # as if the agent's send queue had been full: the hub never sees it
        if not dropped:
            dropped.append(msg.env.message.task_id)
            return None
        return on_result(msg)

    hub.on_result = lose_the_first
    creator, solver = link(running, "creator-0", "creator", kinds=()), link(running, "solver-0")
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
    assign = solver.next_task(timeout_s=5)
    solver.complete(assign, result(assign))
    assert wait_for(lambda: solver.pending_results() == 0, timeout_s=5)  # resent after 0.5 s without an ack
    assert dropped == [task_id] and running.task(task_id)["state"] == "done"


def test_an_exception_in_the_loops_housekeeping_is_logged_and_the_agent_keeps_serving(running):
    """serve()'s per-turn callback (a solver's policy sync) used to kill the agent when it raised."""
    creator, solver = link(running, "creator-0", "creator", kinds=()), link(running, "solver-0")
    turns, handled, stop = [], [], threading.Event()

    def each():
        turns.append(1)
        if len(turns) == 1:
            raise RuntimeError("the new policy does not load")

    def handle(assign):
        handled.append(assign.task_id)
        solver.complete(assign, result(assign))

    thread = threading.Thread(target=solver.serve, args=(handle, stop, each), daemon=True)
    thread.start()
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
    try:
        assert wait_for(lambda: handled == [task_id]) and thread.is_alive() and len(turns) > 1
    finally:
        stop.set()
        thread.join(5)


def test_a_result_the_hub_refuses_becomes_a_failure_of_its_task_not_a_resend_loop(running):
    """A result the hub will never take (here: a sample for a prompt the task does not have) is answered with an
    Error; the link then fails the task with the hub's reason, so the lease is answered for and the task retried,
    instead of sending the result again forever."""
    creator, solver = link(running, "creator-0", "creator", kinds=()), link(running, "solver-0")
    [task_id] = creator.submit([GenerateTask(prompts=[PROMPT])])
    assign = solver.next_task(timeout_s=5)
    wrong = GenerateResult(samples=[Sample(sample_id="x", prompt_id="not-in-the-task", text="85", policy_version=0)])
    solver.complete(assign, wrong)
    assert wait_for(lambda: solver.pending_results() == 0)
    again = solver.next_task(timeout_s=5)  # offered again as attempt 2: the first was given up, not left to expire
    assert (again.task_id, again.attempt) == (task_id, 2)
    assert "refused the result: invalid_message" in running.task(task_id)["reason"]


def test_a_link_that_cannot_work_says_why_at_start_instead_of_waiting(tmp_path):
    """Over tcp an agent whose key file is missing, or whose key does not allow the name or role it claims, used to
    fail on its I/O thread (or be refused) and then wait minutes for a WELCOME that could not come."""
    from protocol import keys

    key_dir = tmp_path / "keys"
    keys.init_keys(key_dir, [("solver-0", "solver")])
    r = Running(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(key_dir))
    try:
        def start(name, role):
            agent = AgentLink(LinkConfig(name=name, role=role, control=r.hub.endpoints["control"],
                                         keys_dir=str(key_dir)), r.ctx)
            started = time.monotonic()
            try:
                agent.start(timeout_s=20)
            finally:
                agent.stop()
                assert time.monotonic() - started < 5

        with pytest.raises(FileNotFoundError, match=r"solver-9\.key_secret"):
            start("solver-9", "solver")  # no key made for it
        with pytest.raises(PermissionError, match="key is bound to solver-0:solver"):
            start("solver-0", "trainer")  # its key says solver
    finally:
        r.close()
