"""`selfplay up`, `attach` and `stop` with real processes, sockets, SQLite and tiny models."""

import json
import os
import sqlite3
import subprocess
import time

import pytest

from tests.launch.test_cli import SELFPLAY
from tests.reliability.run import write_topology

pytestmark = pytest.mark.slow


def topology(tmp_path, tiny_models, rounds=1, solvers=1, prompts=8):
    return write_topology(tmp_path, tiny_models, rounds=rounds, solvers=solvers, prompts=prompts)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def _children(run):
    state = run / "supervisor.json"
    return json.loads(state.read_text())["children"] if state.exists() else {}


def test_up_runs_a_round_with_an_attached_solver_and_leaves_nothing_behind(tmp_path, tiny_models):
    # 48 prompts in tasks of 2 and two rounds: work lasts long enough for a solver that starts as slowly as
    # solver-0 (on a loaded machine, one round of 8 prompts could be over before it was ready)
    path = topology(tmp_path, tiny_models, rounds=2, prompts=48)
    run = tmp_path / "run"
    up = subprocess.Popen([SELFPLAY, "up", str(path)], stderr=subprocess.PIPE, text=True)
    pids = {}
    # attached as up starts, not once the hub is up: it loads its model beside solver-0 instead of after it, so it
    # takes part in the rounds however loaded the machine is (it waits for the hub's endpoints file)
    attached = subprocess.Popen([SELFPLAY, "attach", "solver", "--topology", str(path), "--name", "solver-9"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(pids) < 5:
            pids |= _children(run)
            time.sleep(0.2)
        code = up.wait(timeout=240)
        console = up.stderr.read()
        assert code == 0, console[-3000:]
        assert attached.wait(60) == 0  # the run's end ended the attached solver too (not left reconnecting)
    finally:
        if up.poll() is None:
            up.kill()
        if attached.poll() is None:
            attached.kill()
            attached.wait(10)
    summary = json.loads((run / "creator-done.json").read_text())
    assert summary["rounds"] == 2 and summary["policy_version"] == 2
    assert "round 1: trained v1 on" in console and "round 2: trained v2 on" in console  # progress on the console
    db = sqlite3.connect(run / "ledger.sqlite")
    agents = {row[0] for row in db.execute("SELECT agent FROM tasks WHERE kind = 'generate' AND state = 'done'")}
    assert "solver-9" in agents, agents  # the attached solver received work
    assert db.execute("SELECT COUNT(*) FROM prompts WHERE source = 'evolved'").fetchone()[0] > 0
    db.close()
    assert set(pids) == {"hub", "trainer-0", "solver-0", "judge-0", "creator-0"}
    assert not [name for name, pid in pids.items() if _alive(pid)]  # every child is gone
    from tests.launch.test_board import _scalars

    board = _scalars(run)  # the live loop's TensorBoard, by policy version
    assert [v for v, _ in board["reward/train"]] == [0, 1] and [v for v, _ in board["train/loss"]] == [1, 2]


def test_stop_stops_everything_attached_agents_too(tmp_path, tiny_models):
    path = topology(tmp_path, tiny_models, rounds=1000)
    run = tmp_path / "run"
    up = subprocess.Popen([SELFPLAY, "up", str(path)], stderr=subprocess.DEVNULL)
    attached = None
    try:
        deadline = time.monotonic() + 60
        while len(_children(run)) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = _children(run)
        assert len(pids) == 5
        attached = subprocess.Popen([SELFPLAY, "attach", "solver", "--topology", str(path), "--name", "solver-9"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (run / "attached" / "solver-9.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        out = subprocess.run([SELFPLAY, "stop", "--run-dir", str(run)], capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        assert up.wait(timeout=30) is not None and attached.wait(timeout=30) == 0
        assert not [name for name, pid in pids.items() if _alive(pid)]
        assert not (run / "attached" / "solver-9.json").exists()
    finally:
        for proc in (up, attached):
            if proc is not None and proc.poll() is None:
                proc.kill()


def test_bad_topology_is_one_line_naming_the_field(tmp_path, tiny_models):
    path = topology(tmp_path, tiny_models)
    path.write_text(path.read_text().replace("count = 1", "cont = 1", 1))
    out = subprocess.run([SELFPLAY, "up", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "solver.cont: Extra inputs are not permitted" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("hub, creator, expected", [("", "", 0), ("max_staleness = 1", "", 1),
                                                    ("max_staleness = 2", "max_staleness = 1", 1)])
def test_the_creator_overlaps_as_far_as_the_hub_allows(tmp_path, tiny_models, hub, creator, expected):
    from launch.topology import load_topology

    path = topology(tmp_path, tiny_models)
    text = path.read_text().replace("heartbeat_interval_s = 0.5", f"heartbeat_interval_s = 0.5\n{hub}")
    path.write_text(text.replace("[creator.settings]", f"[creator.settings]\n{creator}"))
    config = load_topology(path).creator_config()
    assert (config.max_staleness, config.algo) == (expected, "dpo")


def test_a_creator_lagging_more_than_the_hub_allows_is_refused(tmp_path, tiny_models):
    from launch.topology import TopologyError, load_topology

    path = topology(tmp_path, tiny_models)
    path.write_text(path.read_text().replace("[creator.settings]", "[creator.settings]\nmax_staleness = 1"))
    with pytest.raises(TopologyError, match=r"max_staleness = 1 exceeds hub\.max_staleness = 0"):
        load_topology(path)


def test_promotion_without_validation_prompts_is_one_error_naming_the_field(tmp_path, tiny_models):
    from launch.topology import TopologyError, load_topology

    path = topology(tmp_path, tiny_models)
    path.write_text(path.read_text().replace("[creator.settings]", "[creator.settings]\npromotion = true"))
    with pytest.raises(TopologyError, match=r"creator: .*settings.promotion needs validation_prompts"):
        load_topology(path)


def test_promotion_keeps_the_creator_synchronous_whatever_the_hubs_staleness(tmp_path, tiny_models):
    """The creator takes the hub's max_staleness unless it sets its own; with promotion it takes 0 (a version is
    validated before any round generates with it), and setting more is one error."""
    from launch.topology import TopologyError, load_topology

    path = topology(tmp_path, tiny_models)
    (tmp_path / "val.jsonl").write_text('{"prompt": "What is 2 + 2?", "answer": "4"}\n')
    text = path.read_text().replace("[creator.settings]", f'validation_prompts = "{tmp_path / "val.jsonl"}"\n'
                                                          "[creator.settings]\npromotion = true")
    path.write_text(text.replace("[hub]", "[hub]\nmax_staleness = 2"))
    config = load_topology(path).creator_config()
    assert config.promotion and config.max_staleness == 0
    path.write_text(path.read_text().replace("promotion = true", "promotion = true\nmax_staleness = 1"))
    with pytest.raises(TopologyError, match="promotion needs max_staleness = 0"):
        load_topology(path)


def test_a_dead_task_fails_its_round_and_the_run_stops_instead_of_restarting(tmp_path, tiny_models):
    """A judge task that cannot be done (the verifier meets a prompt without an answer) goes DEAD. The creator
    used to exit with an error and the supervisor restarted it into the same failure forever; now the round is
    recorded as failed and, with on_failed_round = "stop", the run ends: `up` exits 3 at once."""
    path = topology(tmp_path, tiny_models, rounds=3, prompts=4)
    text = path.read_text().replace(f'backend = "reward_model"\nmodel = "{tiny_models.reward}"', 'backend = "verifier"')
    path.write_text(text.replace("[creator.settings]", '[creator.settings]\non_failed_round = "stop"'))
    with open(tmp_path / "seeds.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "Name a colour."}) + "\n")  # no answer to verify against
    up = subprocess.run([SELFPLAY, "up", str(path)], capture_output=True, text=True, timeout=240)
    assert up.returncode == 3, up.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "creator-done.json").read_text())
    [failure] = summary["failed_rounds"]
    assert failure["round"] == 1 and "has no answer" in failure["reason"] and summary["stopped"]
    assert "run stopped: rounds failed" in up.stderr and "restarting" not in up.stderr


def test_a_run_on_conversational_prompts_keeps_them_conversational(tmp_path, tiny_models):
    """Seed prompts written as chat messages (a system turn, then the user's): the round trains, and eva's
    rewrites keep the system turn, so every prompt reaches the model through its chat template."""
    import msgpack

    path = topology(tmp_path, tiny_models, rounds=1, prompts=8)
    seeds = tmp_path / "seeds.jsonl"
    rows = [json.loads(line) for line in seeds.read_text().splitlines()]
    seeds.write_text("".join(json.dumps({**row, "prompt": [{"role": "system", "content": "Be brief."},
                                                           {"role": "user", "content": row["prompt"]}]}) + "\n"
                             for row in rows))
    up = subprocess.run([SELFPLAY, "up", str(path)], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    prompts = [msgpack.unpackb(blob, raw=False) for (blob,) in db.execute("SELECT payload FROM prompts")]
    versions = db.execute("SELECT MAX(version) FROM policies").fetchone()[0]
    db.close()
    evolved = [p for p in prompts if p["source"] == "evolved"]
    assert versions >= 1 and evolved and len(prompts) > len(evolved)
    for p in prompts:
        assert [t["role"] for t in p["messages"]] == ["system", "user"] and p["messages"][1]["content"] == p["text"]
