"""The deployment users run: a hub on one host, the agents on another, over tcp + CURVE, a solver attached from a
third host mid-run, status read there with an observer key, and a network partition of the agents' host.

Three Linux network namespaces joined by veth pairs (tests/reliability/hosts.py), each with a directory of its
own holding only what that machine would: the hub's host the whole key directory, the others what `selfplay keys
export` gives them. Every step is the command docs/live.md ("Two machines") gives a user.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.launch.test_cli import SELFPLAY
from tests.reliability.hosts import Hosts, NoNamespaces
from tests.reliability.run import check_nothing_lost, write_topology

pytestmark = pytest.mark.slow
ROUNDS = 8
WORKERS = ["creator-0", "trainer-0", "solver-0", "judge-0"]


@pytest.fixture
def hosts():
    try:
        with Hosts({"hub": None, "work": "hub", "third": "hub"}) as made:
            yield made
    except NoNamespaces as e:
        pytest.skip(str(e))


class Run:
    """The run as its three hosts' directories hold it: the ledger on the hub's, each agent's log on its own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def query(self, sql: str, *args) -> list[tuple]:
        try:
            db = sqlite3.connect(f"file:{self.root / 'hub' / 'run' / 'ledger.sqlite'}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError:  # not created yet
            return []

    def events(self, name: str, event: str) -> list[dict]:
        host = "third" if name in ("solver-9", "observer-0") else "hub" if name == "hub-0" else "work"
        path = self.root / host / "run" / "logs" / f"{name}.jsonl"
        if not path.exists():
            return []
        return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == event]

    def loaded(self, name: str) -> set[int]:
        return {e["version"] for e in self.events(name, "policy loaded")}

    def newest(self) -> int:
        found = self.query("SELECT COALESCE(MAX(version), 0) FROM policies")
        return found[0][0] if found else 0


def _wait(condition, what: str, procs: dict[str, subprocess.Popen], timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited ({proc.returncode}) before {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _setup(root: Path, models, hosts: Hosts) -> dict[str, Path]:
    """Keys made on the hub's host and exported to the others; one topology per host."""
    keys = {host: root / host / "keys" for host in ("hub", "work", "third")}
    agents = [f"{n}:{n.split('-')[0]}" for n in WORKERS] + ["solver-9:solver", "observer-0:observer"]
    subprocess.run([SELFPLAY, "keys", "init", str(keys["hub"]), *[a for n in agents for a in ("--agent", n)]],
                   check=True, capture_output=True)
    for host, names in (("work", WORKERS), ("third", ["solver-9", "observer-0"])):
        subprocess.run([SELFPLAY, "keys", "export", str(keys["hub"]), str(keys[host]),
                        *[a for n in names for a in ("--agent", n)]], check=True, capture_output=True)
        found = sorted(str(p.relative_to(keys[host])) for p in keys[host].rglob("*") if p.is_file())
        assert found == sorted(["hub.key", *[f"agents/{n}.key_secret" for n in names]])  # no hub secret leaves
    topologies = {}
    for host in ("hub", "work", "third"):
        hub = {"control": '"tcp://0.0.0.0:5555"', "data": '"tcp://0.0.0.0:5556"', "keys_dir": f'"{keys[host]}"'}
        if host != "hub":
            hub["address"] = f'"{hosts.address(host, "hub")}"'
        topologies[host] = write_topology(root / host, models, rounds=ROUNDS, prompts=16, **hub)
    return topologies


def test_the_loop_runs_across_hosts_with_an_attach_status_and_a_partition(tmp_path, tiny_models, hosts):
    topo = _setup(tmp_path, tiny_models, hosts)
    run = Run(tmp_path)
    logs = {host: open(tmp_path / host / "console.err", "w") for host in ("hub", "work", "third")}  # noqa: SIM115
    procs = {"hub": hosts.popen("hub", [SELFPLAY, "up", str(topo["hub"]), "--roles", "hub"], stderr=logs["hub"])}
    procs["work"] = hosts.popen("work", [SELFPLAY, "up", str(topo["work"]), "--roles", "creator,solver,judge,trainer"],
                                stderr=logs["work"])
    try:
        # Rounds run with every agent on the other host; v1 reaches the remote solver over the keyed data channel.
        _wait(lambda: run.newest() >= 1 and 1 in run.loaded("solver-0"), "v1 loaded on the worker host", procs)

        # A solver attached from a third host mid-run: welcomed, loads the newest policy, takes work.
        procs["attach"] = hosts.popen("third", [SELFPLAY, "attach", "solver", "--topology", str(topo["third"]),
                                                "--name", "solver-9"], stderr=logs["third"])
        _wait(lambda: run.query("SELECT 1 FROM tasks WHERE agent = 'solver-9' AND state = 'done'"),
              "a task done by the attached solver", procs)
        status = hosts.run("third", [SELFPLAY, "status", "--hub", f"tcp://{hosts.address('third', 'hub')}:5555",
                                     "--keys", str(tmp_path / "third" / "keys"), "--name", "observer-0", "--json"],
                           capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        seen = {a["name"] for a in json.loads(status.stdout)["agents"]}
        assert {*WORKERS, "solver-9"} <= seen, seen

        # A partition mid-round: the worker host's link goes down for longer than the liveness window (2 s).
        before = run.newest()
        _wait(lambda: run.query("SELECT 1 FROM tasks WHERE state = 'leased' AND agent IN (?, ?, ?)",
                                "solver-0", "judge-0", "trainer-0"), "work in flight on the worker host", procs)
        buried = lambda: Counter(e["name"] for e in run.events("hub-0", "agent gone"))  # noqa: E731
        earlier = buried()
        hosts.link("work", "hub", up=False)
        _wait(lambda: all(buried()[n] > earlier[n] for n in WORKERS), "the hub burying the cut-off agents", procs,
              timeout_s=30)
        time.sleep(2.0)
        hosts.link("work", "hub", up=True)

        assert procs["work"].wait(timeout=300) == 0, (tmp_path / "work" / "console.err").read_text()[-3000:]
    finally:
        for name, sig in (("attach", signal.SIGTERM), ("hub", signal.SIGINT)):
            if name in procs and procs[name].poll() is None:
                procs[name].send_signal(sig)
                procs[name].wait(60)
        for log in logs.values():
            log.close()

    summary = json.loads((tmp_path / "work" / "run" / "creator-done.json").read_text())
    assert (summary["rounds"], summary["policy_version"], summary["failed_rounds"]) == (ROUNDS, ROUNDS, [])
    assert before < ROUNDS  # the partition came before the last round was trained
    check_nothing_lost(run)  # every task done once or dead with a reason; nothing trained twice
    assert [v for (v,) in run.query("SELECT version FROM policies ORDER BY version")] == list(range(1, ROUNDS + 1))
    versions = {v for (v,) in run.query("SELECT DISTINCT policy_version FROM samples")}
    assert versions == set(range(ROUNDS)), versions  # round r answered with v(r-1): every version reached the solvers
    assert set(range(1, ROUNDS)) <= run.loaded("solver-0"), run.loaded("solver-0")
    attached = run.loaded("solver-9")  # from the newest at its start on, it loaded every version used after it
    assert attached and set(range(min(attached), ROUNDS)) <= attached, attached
    assert not run.query("SELECT 1 FROM tasks WHERE state = 'dead'")
