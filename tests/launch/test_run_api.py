"""`launch.Run`: a topology started, watched and stopped from Python, as a script would."""

import json
import os
import sqlite3

import pytest

from launch import Run, RunEnded
from launch.status import format_status
from tests.reliability.run import write_topology

pytestmark = pytest.mark.slow


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_run_waits_for_rounds_reports_status_attaches_and_stops(tmp_path, tiny_models):
    path = write_topology(tmp_path, tiny_models, rounds=50, prompts=48)
    with Run(path) as run:
        run.wait(rounds=1, timeout=240)
        assert run.rounds_trained() >= 1
        status = run.status()
        assert status.policy_version >= 1 and "queues:" in format_status(status)
        solver = run.attach("solver", name="solver-9")
        run.wait(rounds=run.rounds_trained() + 2, timeout=240)
        children = (tmp_path / "run" / "supervisor.json").read_text()
    assert run.proc.returncode is not None and solver.returncode is not None  # stopped on leaving the block
    db = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    agents = {row[0] for row in db.execute("SELECT agent FROM tasks WHERE kind = 'generate' AND state = 'done'")}
    db.close()
    assert "solver-9" in agents  # the agent attached from Python took work
    assert not [name for name, pid in json.loads(children)["children"].items() if _alive(pid)]


def test_wait_says_when_the_run_ended_first_and_a_bad_topology_is_named(tmp_path, tiny_models):
    path = write_topology(tmp_path, tiny_models, rounds=1, prompts=4)
    with Run(path) as run, pytest.raises(RunEnded, match=r"the run ended \(exit 0\) after 1 of 5 rounds"):
        run.wait(rounds=5, timeout=240)
    (tmp_path / "seeds.jsonl").write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="line 1: missing 'prompt'"):
        Run(path)
