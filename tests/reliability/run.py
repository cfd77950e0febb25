"""A whole `selfplay up` run as real processes, and what the reliability tests inject into it and read back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.launch.test_cli import SELFPLAY


def write_topology(tmp_path: Path, models, rounds: int = 4, solvers: int = 1, prompts: int = 8, **hub) -> Path:
    """eva + DPO over a reward model, settings that make a dead agent noticed within 2 s."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"What is {i} + {i + 4}?", "answer": str(2 * i + 4)}) + "\n"
                             for i in range(prompts)))
    hub_settings = {"heartbeat_interval_s": 0.5, "liveness": 4, "lease_s": 30, "max_attempts": 5, **hub}
    path = tmp_path / "topology.toml"
    path.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
rounds = {rounds}
log_level = "info"
[hub]
{chr(10).join(f"{k} = {v}" for k, v in hub_settings.items())}
[creator]
prompts = "{seeds}"
mutator = "agents.worlds.arithmetic:mutate"
[creator.settings]
samples_per_prompt = 3
max_new_tokens = 8
prompts_per_task = 2
sample_fraction = 0.5
rewrites_per_prompt = 1
train_groups = 8
[solver]
count = {solvers}
model = "{models.policy}"
threads = 1
[judge]
backend = "reward_model"
model = "{models.reward}"
[trainer]
algo = "dpo"
model = "{models.policy}"
batch_size = 1
lr = 0.001
max_length = 64
max_prompt_length = 32
lora = {{ r = 4, alpha = 8 }}
""")
    return path


class Up:
    """`selfplay up TOPOLOGY` in the background; read-only views of its ledger, logs and children."""

    def __init__(self, topology: Path) -> None:
        self.run = topology.parent / "run"
        self.proc = subprocess.Popen([SELFPLAY, "up", str(topology)], stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def children(self) -> dict[str, int]:
        try:
            return json.loads((self.run / "supervisor.json").read_text())["children"]
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def query(self, sql: str, *args) -> list[tuple]:
        try:
            db = sqlite3.connect(f"file:{self.run / 'ledger.sqlite'}?mode=ro", uri=True, timeout=5)
        except sqlite3.OperationalError:
            return []
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            db.close()

    def events(self, name: str, event: str) -> list[dict]:
        path = self.run / "logs" / f"{name}.jsonl"
        if not path.exists():
            return []
        return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == event]

    def wait_for(self, condition, timeout_s: float = 120, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended ({self.proc.returncode}) before {what}: "
                                     f"{self.proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def leased_to(self, agent: str, kind: str) -> list[str]:
        return [r[0] for r in self.query("SELECT task_id FROM tasks WHERE state = 'leased' AND agent = ? AND kind = ? "
                                         "ORDER BY task_id", agent, kind)]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.wait_for(lambda: self.children().get(name), timeout_s=30, what=f"{name} running")
        os.kill(pid, sig)
        return pid

    def stop_mid_task(self, name: str, kind: str, when=lambda: True) -> tuple[int, list[str]]:
        """SIGSTOP `name` while it holds `kind` tasks (once `when()` holds too); its pid and those tasks. A result
        sent just before the stop reaches the hub within the pause below, so tasks still leased to the stopped
        process after it are surely unfinished (it had just finished one: let it go on and try again)."""
        while True:
            tasks = self.wait_for(lambda: when() and self.leased_to(name, kind), what=f"{name} holding a {kind} task")
            pid = self.kill(name, signal.SIGSTOP)
            time.sleep(0.3)  # well inside the hub's liveness (4 x 0.5 s): the stop alone buries nobody
            if self.leased_to(name, kind) == tasks:
                return pid, tasks
            os.kill(pid, signal.SIGCONT)

    def wait_restarted(self, name: str, old_pid: int) -> int:
        return self.wait_for(lambda: (pid := self.children().get(name)) and pid != old_pid and pid,
                             what=f"{name} restarted")

    def finish(self, timeout_s: float = 300) -> dict:
        code = self.proc.wait(timeout_s)
        assert code == 0, self.proc.stderr.read()[-3000:]
        return json.loads((self.run / "creator-done.json").read_text())


def check_nothing_lost(up: Up) -> None:
    """Every task DONE once (its samples from the one attempt recorded) or DEAD with a reason; no sample
    trained on twice; no task trained twice."""
    import msgpack

    states = up.query("SELECT task_id, state, reason, attempt FROM tasks")
    assert states and all(state in ("done", "dead") for _, state, _, _ in states), \
        [s for s in states if s[1] not in ("done", "dead")]
    assert all(reason for _, state, reason, _ in states if state == "dead")
    attempts = {task_id: attempt for task_id, _, _, attempt in states}
    for sample_id, task_id in up.query("SELECT sample_id, task_id FROM samples"):
        assert sample_id.split(".")[1] == str(attempts[task_id]), (sample_id, attempts[task_id])  # one attempt's
    trained = [s["sample_id"] for (blob,) in up.query("SELECT payload FROM tasks WHERE kind = 'train' AND state = 'done'")
               for g in msgpack.unpackb(blob)["groups"] for s in g["samples"]]
    assert len(trained) == len(set(trained))
    rounds = [e["task_id"] for e in up.events("trainer-0", "round trained")]
    assert len(rounds) == len(set(rounds))  # across restarts, no train task trained twice


@contextlib.contextmanager
def hub_process(tmp_path: Path, **hub) -> Iterator[tuple[subprocess.Popen, str]]:
    """A hub alone in its own process (`python -m launch.worker hub`), and its control endpoint."""
    run = tmp_path / "hub-run"
    run.mkdir(exist_ok=True)
    (tmp_path / "seeds.jsonl").write_text('{"prompt": "What is 1 + 1?"}\n')
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in hub.items())
    topology = tmp_path / "hub.toml"
    topology.write_text(f'[run]\ndir = "{run}"\nlog_level = "info"\n[hub]\n{settings}\n[creator]\n'
                        f'prompts = "{tmp_path / "seeds.jsonl"}"\n[solver]\nmodel = "{tmp_path}"\n'
                        f'[trainer]\nalgo = "dpo"\nmodel = "{tmp_path}"\n')  # never loaded: the hub alone runs
    proc = subprocess.Popen([sys.executable, "-m", "launch.worker", "hub", str(topology)],
                            cwd=Path(__file__).resolve().parents[2], stderr=open(tmp_path / "hub.err", "w"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 60
        while not (run / "hub.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "hub.err").read_text()[-2000:]
            time.sleep(0.1)
        endpoints = json.loads((run / "hub.json").read_text())
        proc.data = endpoints["data"]  # the data endpoint, for tests that use it
        yield proc, endpoints["control"]
    finally:
        proc.terminate()
        proc.wait(30)
