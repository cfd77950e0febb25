"""Launching from Python: the same supervised processes as `selfplay up`, with a handle on them.

    from launch import Run

    with Run("topology.toml") as run:      # checked as `up` checks it, started, stopped on leaving the block
        run.wait(rounds=4)                 # until 4 rounds have trained (or the run ends: RunEnded)
        print(run.status())                # the hub's StatusReply: agents, queues, policy version, counters
        run.attach("solver")               # one more agent, as `selfplay attach` (stopped with the run)

`Run.wait()` with no rounds waits for the run's end and returns `up`'s exit code (0: the creator ran its
rounds). The console output of `up` goes to RUN/up.log; each process's logs to RUN/logs as always.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any


class RunEnded(RuntimeError):
    """The run ended before what `wait` waited for (its exit code and the last line `up` printed)."""


class Run:
    def __init__(self, topology: str | Path, roles: tuple[str, ...] | None = None) -> None:
        from launch.preflight import preflight
        from launch.topology import load_topology
        from launch.worker import ROLES

        self.topology, self.roles = Path(topology), roles or ROLES
        self.topo = load_topology(self.topology)
        problems = preflight(self.topo, self.roles)
        if problems:
            raise ValueError(f"{self.topology}: cannot start: " + "; ".join(problems))
        self.run_dir = Path(self.topo.run.dir)
        self.proc: subprocess.Popen | None = None
        self.agents: list[subprocess.Popen] = []

    def start(self) -> Run:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "up.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "up", str(self.topology),
                                          "--roles", ",".join(self.roles)], stdout=log, stderr=subprocess.STDOUT)
        return self

    def rounds_trained(self) -> int:
        """Rounds whose training has finished, from the creator's journal (0 before the first)."""
        journals = sorted((self.run_dir / "creator").glob("*.json"))
        try:
            state = json.loads(journals[0].read_text()) if journals else {}
        except (OSError, json.JSONDecodeError):  # being replaced this instant: ask again
            return 0
        return int(state.get("round", 0)) - len(state.get("training", []))

    def wait(self, rounds: int | None = None, timeout: float | None = None) -> int | None:
        """Until `rounds` rounds have trained (None returned), or, with no rounds, until the run ends (up's exit
        code). RunEnded when it ends first; TimeoutError after `timeout` seconds."""
        if self.proc is None:
            raise RuntimeError("the run was not started (use `with Run(...)` or .start())")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if rounds is not None and self.rounds_trained() >= rounds:
                return None
            if code is not None:
                if rounds is None:
                    return code
                raise RunEnded(f"the run ended (exit {code}) after {self.rounds_trained()} of {rounds} rounds: "
                               f"{self._last_line()}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.rounds_trained()} rounds trained after {timeout} s")
            time.sleep(0.5)

    def status(self, timeout_s: float = 5.0) -> Any:
        """The hub's StatusReply (launch.status.format_status prints it as `selfplay status` does)."""
        from launch.status import query_status

        endpoint = json.loads((self.run_dir / "hub.json").read_text())["control"]
        return query_status(endpoint, timeout_s=timeout_s)

    def attach(self, role: str, name: str | None = None) -> subprocess.Popen:
        """One more agent of `role` against this run's hub, as `selfplay attach`; stopped with the run."""
        argv = [sys.executable, "-m", "launch.cli", "attach", role, "--topology", str(self.topology)]
        argv += ["--name", name] if name else []
        with open(self.run_dir / "up.log", "ab") as log:
            agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.agents.append(agent)
        return agent

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the attached agents and the run (as Ctrl-C on `up`); returns up's exit code."""
        for agent in [*self.agents, self.proc]:
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in [*self.agents, self.proc]:
            if agent is None:
                continue
            try:
                agent.wait(timeout)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        return None if self.proc is None else self.proc.returncode

    def _last_line(self) -> str:
        try:
            lines = (self.run_dir / "up.log").read_bytes()[-4096:].decode(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line for line in reversed(lines) if line.strip()), "")

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
