"""The supervisor behind `selfplay up`: starts every process of a topology (or the roles of it that run on
this machine), restarts a crashed one with backoff, and stops them all cleanly on Ctrl-C, SIGTERM
(`selfplay stop`) or when the creator finishes its rounds.

A process that exits with EXIT_FATAL cannot run as set up (a damaged ledger): the run stops at once
with the line it printed, instead of restarting it into the same failure forever. So does one that fails
the same way `max_identical_crashes` times in a row (an error exit whose last printed line is the same
each time: a bad prompts file, a model path that does not exist); a process killed by a signal (kill -9,
the OOM killer), or an agent that found no hub (EXIT_NO_HUB: the hub on another machine is down), is
restarted however often it happens, and a process that ran `healthy_s` (300) before it failed starts its
count over. Each restart's console line carries the last line the process printed. The creator's exit
ends the run: 0 when its rounds are done, EXIT_RUN_FAILED when it stopped after failed rounds; `up`
exits with that code.

State for other commands lives in RUN/supervisor.json: the supervisor's pid, each child's pid, and each
child's restarts and last error (`selfplay status --run-dir` shows them). When the supervisor stops, that
file becomes RUN/supervisor-ended.json (no pids: nothing to stop), with why the run ended.
Each child's stdout and stderr go to RUN/logs/NAME.out; its structlog events to RUN/logs/NAME.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from launch.board import LiveBoard
from launch.logs import rotate
from launch.progress import CreatorProgress
from launch.worker import EXIT_FATAL, EXIT_NO_HUB, EXIT_RUN_FAILED, ROLES

log = structlog.get_logger("launch.supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    finisher: bool = False  # its clean exit ends the run (the creator)
    proc: subprocess.Popen | None = None
    restarts: int = 0  # since it last ran a good while (sets the backoff)
    crashes: int = 0  # exits that were restarted, over the run
    last_error: str = ""  # the last line it printed before its last exit
    same_crashes: int = 0  # error exits in a row with that same last line
    next_start: float = 0.0
    started: float = field(default=0.0)


class Supervisor:
    def __init__(self, run_dir: str | Path, children: list[Child], backoff_min_s: float = 1.0,
                 backoff_max_s: float = 30.0, log_max_bytes: int = 50 << 20, log_backups: int = 3,
                 max_identical_crashes: int = 5, progress: CreatorProgress | None = None,
                 healthy_s: float = 300.0, board: LiveBoard | None = None) -> None:
        self.run_dir, self.children = Path(run_dir), children
        self.max_identical_crashes = max_identical_crashes  # 0: restart forever
        self.healthy_s = healthy_s  # a process that ran this long before it failed was not crash-looping
        self.progress = progress  # a line per round event of the creator, on the console
        self.board = board  # RUN/tensorboard from the ledger, when the hub runs here
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.log_max_bytes, self.log_backups = log_max_bytes, log_backups
        self._stopping = False
        self.ended = "stopped (Ctrl-C or selfplay stop)"  # why the run ended, for supervisor-ended.json

    def run(self) -> int:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for child in self.children:
                self._start(child)
            while not self._stopping:
                for child in self.children:
                    code = child.proc.poll() if child.proc else None
                    if child.proc is not None and code is not None:
                        if child.finisher and code in (0, EXIT_RUN_FAILED):
                            if code == 0:
                                self.ended = f"finished: {child.name} did its rounds"
                                log.info("run finished", by=child.name)
                            else:
                                self.ended = f"rounds failed: {self.last_line(child)}"
                                log.error("run stopped: rounds failed", by=child.name, why=self.last_line(child))
                            return code
                        if code == EXIT_FATAL:
                            child.last_error = self.last_line(child)
                            self.ended = f"{child.name} cannot run as set up: {child.last_error}"
                            log.error("process cannot run as set up; stopping the run", name=child.name,
                                      why=child.last_error)
                            return code
                        if self._crash_looping(child, code):
                            self.ended = f"{child.name} failed the same way {child.same_crashes} times: {child.last_error}"
                            log.error("process fails the same way every time; stopping the run", name=child.name,
                                      exits=child.same_crashes, why=child.last_error,
                                      log=str(self.run_dir / "logs" / f"{child.name}.out"))
                            return EXIT_FATAL
                        self._schedule_restart(child, code)
                    elif child.proc is None and time.monotonic() >= child.next_start:
                        self._start(child)
                for line in self.progress.poll() if self.progress else []:
                    log.info(line)
                if self.board is not None:
                    self.board.poll()
                self._write_state()
                time.sleep(0.2)
            return 130
        finally:
            self.shutdown()

    def last_line(self, child: Child) -> str:
        """The last line a child printed (its output file), which names why it stopped."""
        try:
            lines = (self.run_dir / "logs" / f"{child.name}.out").read_bytes()[-4096:].decode(errors="replace")
        except OSError:
            return ""
        return next((line for line in reversed(lines.splitlines()) if line.strip()), "")

    def _crash_looping(self, child: Child, code: int) -> bool:
        """Record an exit; True when it is the `max_identical_crashes`-th error exit in a row with the same last
        line. A negative code is a signal (kill -9, the OOM killer), EXIT_NO_HUB a hub that did not answer: both
        restarted, never counted; a failure after `healthy_s` of running starts the count over."""
        why = self.last_line(child)
        if code <= 0 or code == EXIT_NO_HUB:
            child.same_crashes = 0
        elif why != child.last_error or time.monotonic() - child.started > self.healthy_s:
            child.same_crashes = 1
        else:
            child.same_crashes += 1
        child.last_error = why
        return bool(self.max_identical_crashes) and child.same_crashes >= self.max_identical_crashes

    def _on_signal(self, *_: object) -> None:
        self._stopping = True

    def _start(self, child: Child) -> None:
        path = self.run_dir / "logs" / f"{child.name}.out"
        if path.exists() and path.stat().st_size >= self.log_max_bytes:
            rotate(path, self.log_backups)
        out = open(path, "ab")  # noqa: SIM115 — owned by the child
        child.proc = subprocess.Popen(child.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        child.started = time.monotonic()
        log.info("started", name=child.name, pid=child.proc.pid, restarts=child.restarts)
        self._write_state()

    def _schedule_restart(self, child: Child, code: int) -> None:
        if time.monotonic() - child.started > 60:
            child.restarts = 0  # it ran a good while: start the backoff over
        delay = min(self.backoff_max_s, self.backoff_min_s * 2 ** child.restarts)
        child.restarts += 1
        child.crashes += 1
        child.proc, child.next_start = None, time.monotonic() + delay
        log.warning("process exited, restarting", name=child.name, code=code, in_s=delay, why=child.last_error)
        self._write_state()

    def _write_state(self, ended: bool = False) -> None:
        processes = {c.name: {"pid": None if ended or not c.proc else c.proc.pid, "restarts": c.crashes,
                              "last_error": c.last_error} for c in self.children}
        if ended:
            state, name = {"ended": self.ended, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "processes": processes}, \
                "supervisor-ended.json"
        else:
            state, name = {"pid": os.getpid(), "children": {c.name: c.proc.pid for c in self.children if c.proc},
                           "processes": processes}, "supervisor.json"
        tmp = self.run_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.run_dir / name)  # readers (status, stop) never see half a file

    def shutdown(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child (agents first, the hub last so they can say goodbye), then SIGKILL."""
        running = [c for c in self.children if c.proc and c.proc.poll() is None]
        for child in sorted(running, key=lambda c: c.name.startswith("hub")):
            child.proc.terminate()
        deadline = time.monotonic() + grace_s
        for child in running:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("killing", name=child.name)
                child.proc.kill()
                child.proc.wait()
        from launch.attached import terminate_attached

        if self.board is not None:
            self.board.close()  # the run's last points
        terminate_attached(self.run_dir)  # agents attached on this machine end with the run
        self._write_state(ended=True)  # what status shows of the run's processes once it has ended
        (self.run_dir / "supervisor.json").unlink(missing_ok=True)


def children_for(topology_path: str, topo, roles: tuple[str, ...] = ROLES) -> list[Child]:
    """The processes of `roles` (all by default: one machine runs the whole topology)."""
    worker = [sys.executable, "-m", "launch.worker"]
    children = [Child("hub", [*worker, "hub", topology_path])] if "hub" in roles else []
    for role, count in (("trainer", 1), ("solver", topo.solver.count), ("judge", topo.judge.count if topo.judge else 0)):
        if role in roles:
            command = ranked(topo.trainer.nproc, worker) if role == "trainer" else worker
            children += [Child(f"{role}-{i}", [*command, role, topology_path, "--name", f"{role}-{i}", "--index", str(i)])
                         for i in range(count)]
    if "creator" in roles:
        children.append(Child("creator-0", [*worker, "creator", topology_path, "--name", "creator-0"], finisher=True))
    return children


def ranked(nproc: int, command: list[str]) -> list[str]:
    """`command` (python -m MODULE) as `nproc` ranks on this machine (launch/ranks.py, torchrun's engine); as it is
    for one. A rank that dies ends the group, whose exit code is that rank's: the supervisor restarts the group."""
    if nproc <= 1:
        return command
    return [command[0], "-m", "launch.ranks", str(nproc), *command[1:]]


def supervisor_for(topology_path: str, topo, roles: tuple[str, ...] = ROLES, progress: bool = True) -> Supervisor:
    """The supervisor of a topology's processes (those of `roles`), with its log retention; with `progress`, a
    console line per round event of the creator when it runs here; with the hub here, RUN/tensorboard."""
    log_path = Path(topo.run.dir) / "logs" / "creator-0.jsonl"
    return Supervisor(topo.run.dir, children_for(topology_path, topo, roles),
                      progress=CreatorProgress(log_path) if progress and "creator" in roles else None,
                      log_max_bytes=int(topo.run.log_max_mb * 2**20), log_backups=topo.run.log_backups,
                      max_identical_crashes=topo.run.max_identical_crashes,
                      board=LiveBoard(topo.run.dir) if topo.run.tensorboard and "hub" in roles else None)
