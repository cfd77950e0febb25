"""`selfplay status` against a running hub, as a user runs it."""

import json
import subprocess

from protocol.messages import GenerateTask
from tests.agents.test_hub import Running
from tests.launch.test_cli import SELFPLAY
from tests.protocol.examples import PROMPT


def test_status_shows_agents_queues_and_version(tmp_path):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50)
    try:
        creator = r.link("creator-0", "creator")
        creator.submit([GenerateTask(prompts=[PROMPT])] * 3)
        run_dir = str(r.hub.run_dir)
        text = subprocess.run([SELFPLAY, "status", "--run-dir", run_dir], capture_output=True, text=True, timeout=60)
        assert text.returncode == 0, text.stderr
        assert "policy version 0" in text.stdout and "creator-0" in text.stdout and "queues:" in text.stdout
        assert any(line.split()[:2] == ["generate", "3"] for line in text.stdout.splitlines())
        raw = subprocess.run([SELFPLAY, "status", "--run-dir", run_dir, "--json"], capture_output=True, text=True,
                             timeout=60)
        status = json.loads(raw.stdout)
        assert status["queues"]["generate"]["queued"] == 3 and status["hub_id"] == r.hub.hub_id
        assert [a["name"] for a in status["agents"]] == ["creator-0"]  # asking registered no agent
    finally:
        r.close()


def test_status_without_a_hub_says_so(tmp_path):
    out = subprocess.run([SELFPLAY, "status", "--run-dir", str(tmp_path), "--timeout", "0.5"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "no answer from a hub" in out.stderr


def test_status_shows_this_machines_processes_even_when_the_hub_does_not_answer(tmp_path):
    """RUN/supervisor.json as the supervisor writes it (tests/launch/test_supervisor.py makes a real one)."""
    (tmp_path / "supervisor.json").write_text(json.dumps({"pid": 1, "children": {}, "processes": {
        "hub": {"pid": None, "restarts": 3, "last_error": "OSError: [Errno 98] Address already in use"},
        "solver-0": {"pid": 4242, "restarts": 0, "last_error": ""}}}))
    out = subprocess.run([SELFPLAY, "status", "--run-dir", str(tmp_path), "--timeout", "0.5"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "no answer from a hub" in out.stderr
    hub = next(line for line in out.stdout.splitlines() if line.split()[:1] == ["hub"])
    assert "waiting to restart" in hub and "restarts 3" in hub and "Address already in use" in hub
    assert "pid 4242" in out.stdout


def _status_of_an_ended_run(run_dir) -> str:
    """`selfplay status --run-dir` on the small run of test_ledger_query, its hub gone."""
    from agents.ledger import Ledger
    from tests.agents.test_ledger_query import build_run

    ledger = Ledger(run_dir / "ledger.sqlite")
    build_run(ledger)
    ledger.close()
    out = subprocess.run([SELFPLAY, "status", "--run-dir", str(run_dir), "--timeout", "0.5"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_status_of_a_run_that_has_ended_reads_its_ledger(tmp_path):
    stdout = _status_of_an_ended_run(tmp_path)
    assert "no hub answers: from its ledger" in stdout and "published policy versions: 2, newest v2" in stdout
    assert "  v0    0.7500  (2 samples)" in stdout  # the small run's training reward of v0
    assert "held-out test by policy version (mean verdict score" in stdout and "1 dead" in stdout


def test_status_of_a_run_that_a_failing_process_stopped_says_why(tmp_path):
    import sys

    from launch.supervisor import Child, Supervisor

    broken = Child("judge-0", [sys.executable, "-c", "import sys; sys.exit('ValueError: bad checker')"])
    assert Supervisor(tmp_path, [broken], backoff_min_s=0.05, backoff_max_s=0.1, max_identical_crashes=2).run() == 78
    stdout = _status_of_an_ended_run(tmp_path)
    assert "published policy versions: 2" in stdout
    assert "judge-0 failed the same way 2 times: ValueError: bad checker" in stdout
    assert "last error: ValueError: bad checker" in stdout


def test_a_version_still_being_evaluated_is_marked_so():
    from launch.status import format_status
    from protocol.messages import StatusReply

    reply = StatusReply(hub_id="h", policy_version=1, metrics={
        "eval_reward.v0": 0.5, "eval_count.v0": 100, "eval_reward.v1": 0.9, "eval_count.v1": 40})
    lines = format_status(reply).splitlines()
    assert next(line for line in lines if line.startswith("  v0")).endswith("(100 samples)")
    assert next(line for line in lines if line.startswith("  v1")).endswith("evaluating: 40 of 100 so far")


def test_watch_refreshes_until_the_run_ends_then_shows_its_ledger(tmp_path):
    import threading
    import time

    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=50)
    watch = subprocess.Popen([SELFPLAY, "status", "--run-dir", str(r.hub.run_dir), "--watch", "0.3", "--timeout", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True).start()
    try:
        creator = r.link("creator-0", "creator")
        creator.submit([GenerateTask(prompts=[PROMPT])] * 2)
        deadline = time.monotonic() + 60
        while sum(line.startswith("queues:") for line in lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # refreshed twice while the hub answered
    finally:
        r.close()  # the run ends: the watch shows the ledger once and stops by itself
    assert watch.wait(timeout=60) == 0
    time.sleep(0.5)  # the reader has the last lines
    assert sum(line.startswith("queues:") for line in lines) >= 2
    assert lines[-1].startswith("tasks: ") and any("no hub answers: from its ledger" in line for line in lines)


def test_the_ledger_line_says_what_retention_archived():
    from launch.status import format_status
    from protocol.messages import StatusReply

    reply = StatusReply(hub_id="h", policy_version=1, metrics={
        "ledger_bytes": 3 * 2**20, "ledger_blob_bytes": 2**20, "archived_tasks": 12345, "archived_prompts": 67890})
    text = format_status(reply)
    assert "ledger: 3.0 MiB on disk (1.0 MiB of it large results as blobs); 12345 finished tasks and 67890 prompts " \
           "archived" in text
    assert "counters:" not in text  # each figure once, on its line
