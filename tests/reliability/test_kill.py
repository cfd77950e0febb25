"""kill -9 and SIGSTOP injected into a real `selfplay up` run: it completes and nothing is lost."""

import os
import signal
import time

import pytest

from tests.reliability.run import Up, check_nothing_lost, write_topology

pytestmark = pytest.mark.slow


def test_kill_9_of_each_agent_mid_task_loses_nothing(tmp_path, tiny_models):
    with Up(write_topology(tmp_path, tiny_models, rounds=4)) as up:
        killed, held = {}, {}  # name -> pid; name -> the tasks it held when killed
        for name, kind in [("solver-0", "generate"), ("judge-0", "judge")]:
            killed[name], held[name] = up.stop_mid_task(name, kind)
            up.kill(name)  # SIGKILL of the stopped process: it dies mid-task
            up.wait_restarted(name, killed[name])
        # the trainer, mid-way through a round that is not its first (so it has a checkpoint to resume)
        killed["trainer-0"], held["trainer-0"] = up.stop_mid_task(
            "trainer-0", "train", when=lambda: up.query("SELECT 1 FROM policies"))
        up.kill("trainer-0")
        up.wait_restarted("trainer-0", killed["trainer-0"])
        # the creator, in the middle of a later round (generation in flight)
        up.wait_for(lambda: len(up.query("SELECT 1 FROM policies")) >= 2 and up.leased_to("solver-0", "generate"),
                    what="creator in round 3")
        killed["creator-0"] = up.kill("creator-0")
        summary = up.finish()
    assert summary["rounds"] == 4 and summary["policy_version"] == 4
    assert [r[0] for r in up.query("SELECT version FROM policies ORDER BY version")] == [1, 2, 3, 4]
    check_nothing_lost(up)
    resumed = up.events("trainer-0", "resumed")
    assert resumed and resumed[-1]["step"] > 0  # the restarted trainer went on from its checkpoint
    assert up.events("creator-0", "resumed")  # and the creator from its journal
    hub_gone = {e["name"] for e in up.events("hub-0", "agent gone")}
    assert {"solver-0", "judge-0", "trainer-0"} <= hub_gone  # each kill was noticed and its leases requeued
    for name, tasks in held.items():  # each killed agent's tasks were done by a later attempt
        assert all(up.query("SELECT state, attempt > 1 FROM tasks WHERE task_id = ?", t) == [("done", 1)]
                   for t in tasks), name


def test_kill_9_of_the_hub_loses_no_acknowledged_record(tmp_path, tiny_models):
    with Up(write_topology(tmp_path, tiny_models, rounds=3)) as up:

        def mixed():  # tasks queued, leased and done at once, the solver mid-task
            states = {s for (s,) in up.query("SELECT state FROM tasks")}
            return {"queued", "leased", "done"} <= states and up.leased_to("solver-0", "generate")

        held = "SELECT task_id, attempt FROM tasks WHERE state = 'leased' AND agent = 'solver-0' AND kind = 'generate'"
        while True:  # frozen first, so that the solver's answer is surely made while it is away
            up.wait_for(lambda: up.query("SELECT 1 FROM policies") and mixed(), what="a mixed ledger in round 2")
            frozen = up.kill("hub", signal.SIGSTOP)
            held_at_freeze = up.query(held)  # the ledger as the frozen hub left it
            if held_at_freeze:
                break
            os.kill(frozen, signal.SIGCONT)  # the solver's answer was taken between the look and the stop: again
        done_before = dict(up.query("SELECT task_id, result FROM tasks WHERE state = 'done'"))
        time.sleep(3)  # away, and waits unacknowledged in its outbox (a tiny model answers in well under 1 s)
        hub_pid = up.kill("hub")
        policies_before = up.query("SELECT version, path FROM policies")
        up.wait_restarted("hub", hub_pid)
        summary = up.finish()
    assert summary["rounds"] == 3 and summary["policy_version"] == 3
    done_after = dict(up.query("SELECT task_id, result FROM tasks WHERE state = 'done'"))
    assert done_before and all(done_after.get(t) == result for t, result in done_before.items())  # nothing lost
    assert set(policies_before) <= set(up.query("SELECT version, path FROM policies"))
    check_nothing_lost(up)
    starts = up.events("hub-0", "hub started")
    assert len(starts) == 2 and starts[1]["requeued"] >= 1  # the second hub put the leased tasks back
    names = [e["name"] for e in up.events("hub-0", "agent ready")]
    assert all(names.count(n) >= 2 for n in ("solver-0", "judge-0", "trainer-0", "creator-0"))  # all reconnected
    # The solver's answer either waited in its outbox and was replayed after the reconnect, or (when the solver
    # was still busy, e.g. fetching a policy from the frozen hub) came after it. Either is taken while its task is
    # queued at the same attempt (the new hub keeps attempts and holders); once the task was leased again, the
    # answer is acknowledged as stale and not recorded. Every way, the task held at the freeze was done once.
    late = {e["task_id"] for e in up.events("hub-0", "result not taken") if e["agent"] == "solver-0"}
    for task_id, attempt in held_at_freeze:
        [(state, done_attempt, agent)] = up.query("SELECT state, attempt, agent FROM tasks WHERE task_id = ?", task_id)
        assert state == "done" and ((done_attempt, agent) == (attempt, "solver-0") or
                                    (done_attempt > attempt and task_id in late)), (task_id, attempt)
    assert not up.events("creator-0", "resumed")  # the creator waited for the hub; it did not crash


def test_a_solver_stopped_past_its_lease_loses_the_task_and_its_late_result_is_ignored(tmp_path, tiny_models):
    topology = write_topology(tmp_path, tiny_models, rounds=3, solvers=2, lease_s=2, liveness=40)
    with Up(topology) as up:
        up.wait_for(lambda: len(up.children()) == 6, what="every process")
        _, tasks = up.stop_mid_task("solver-0", "generate")  # the one it runs, and with capacity 2 the next one
        stopped = time.monotonic() - 0.3  # stop_mid_task's pause
        up.wait_for(lambda: all(up.query("SELECT 1 FROM tasks WHERE task_id = ? AND state = 'done'", t) for t in tasks),
                    what="its tasks done by the other solver")
        assert time.monotonic() - stopped < 15  # re-dispatched on lease expiry, long before the hub's 20 s liveness
        up.kill("solver-0", signal.SIGCONT)
        late = up.wait_for(lambda: [e for e in up.events("hub-0", "result not taken") if e["task_id"] in tasks],
                           what="solver-0's late result")
        summary = up.finish()
    assert all(e["attempt"] == 1 and e["outcome"] == "stale" and e["agent"] == "solver-0" for e in late), (late, tasks)
    holders = {t: up.query("SELECT attempt, agent FROM tasks WHERE task_id = ?", t) for t in tasks}
    assert all(h == [(2, "solver-1")] for h in holders.values()), (holders, up.events("hub-0", "lease expired"))
    check_nothing_lost(up)  # the samples recorded for it are attempt 2's
    assert summary["rounds"] == 3
