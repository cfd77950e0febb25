"""Hub at scale: fake agents (no models) against a real hub process, as the ledger grows and the cluster widens.

    python bench/hub_scale.py [--sizes 0,100000,1000000] [--agents 1,16,64,256] [--seconds 5]
                              [--result-kb 10,1024,8192] [--cache /tmp/selfplay-hub-scale]

The hub runs in its own process, on a copy of a prefilled ledger; the fake agents run in this one: raw DEALER
sockets speaking the protocol, solvers that answer each task the moment it arrives, and a creator that keeps
the queue full. Every figure is measured in this run:
1. tasks/s through 1, 16, 64 and 256 solvers (capacity 2 each) on an empty ledger, and the share of a core the hub
   used (below one, the benchmark's own process, which serves every fake agent, is what limits the figure);
2. tasks/s through 16 solvers, and `status` latency (median and slowest of 5, the loop idle), on a ledger
   prefilled with each of --sizes tasks;
3. MB/s of results of each --result-kb through 8 solvers on an empty ledger, and the ledger's bytes (file and
   blobs, after the hub closed it) per result byte it took;
4. on the largest ledger: 8 solvers returning the largest results while `status` is asked every second:
   the largest gap between two of the hub's heartbeats seen by any agent, and the slowest status.
With --postgres, phases 2-4 again on a PostgreSQL ledger (a throwaway server, tests/pgserver.py), at --pg-sizes.
Prefilled ledgers are built through the Ledger API (half generate tasks with one sample each, half judge
tasks with one verdict each, all done) and cached in --cache by size and schema version.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.ledger import MARKER, SCHEMA_VERSION, Ledger
from protocol.codec import decode, encode, new_msg_id
from protocol.constants import SIGNATURE
from protocol.messages import (
    GenerateResult,
    GenerateTask,
    Heartbeat,
    JudgedGroup,
    JudgeResult,
    JudgeTask,
    Prompt,
    Ready,
    Sample,
    StatusQuery,
    Submit,
    Verdict,
)
from protocol.transport import agent_socket, ipc_endpoint

CAPACITY = 2
SUBMIT_BATCH = 256
TOKEN_BYTES = 16  # a token's share of an encoded sample: its id, its log-prob and about four characters of text


# ---------------------------------------------------------------------------------------------- the ledgers
def prefill(where: Path | str, tasks: int) -> None:
    """A ledger holding `tasks` done tasks: generate tasks with one sample each and judge tasks with one verdict."""
    ledger = Ledger(where, check=False)
    now, made, started = time.time(), 0, time.monotonic()
    while made < tasks:
        n = min(1000, (tasks - made) // 2) or 1
        prompts = [Prompt(prompt_id=f"pre{made}-{i}", text=f"{i} + {made} =", answer=str(i + made)) for i in range(n)]
        ids = ledger.submit([GenerateTask(prompts=[p]) for p in prompts], now=now)
        samples = []
        for lease in ledger.lease("generate", "solver-pre", n, 60.0, now):
            prompt = lease.task.prompts[0]
            sample = Sample(sample_id=f"{lease.task_id}.1.0.0", prompt_id=prompt.prompt_id, text=prompt.answer or "",
                            policy_version=0)
            ledger.complete(lease.task_id, lease.attempt, GenerateResult(samples=[sample]), now)
            samples.append((prompt, sample))
        ledger.submit([JudgeTask(groups=[JudgedGroup(prompt=p, samples=[s], verdicts=[])]) for p, s in samples], now=now)
        for lease in ledger.lease("judge", "judge-pre", n, 60.0, now):
            sample = lease.task.groups[0].samples[0]
            ledger.complete(lease.task_id, lease.attempt,
                            JudgeResult(verdicts=[Verdict(sample_id=sample.sample_id, score=1.0)]), now)
        made += len(ids) * 2
        if made % 100_000 < 2 * n:
            print(f"  prefilled {made:,} of {tasks:,} tasks ({time.monotonic() - started:.0f} s)", flush=True)
    ledger.close()


class SqliteLedgers:
    """Prefilled SQLite ledgers, cached in `cache` by size and schema version; each phase runs on a copy."""

    name = "sqlite"

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def prepare(self, tasks: int, run_dir: Path) -> str | None:
        """A fresh run directory holding a copy of the cached ledger of `tasks` tasks (built the first time)."""
        cached = self.cache / f"ledger-s{SCHEMA_VERSION}-{tasks}.sqlite"
        if tasks and not cached.exists():
            print(f"prefilling a ledger of {tasks:,} tasks into {cached} (once)", flush=True)
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            for leftover in self.cache.glob(partial.name + "*"):
                leftover.unlink()
            prefill(partial, tasks)
            partial.rename(cached)
        fresh_run_dir(run_dir)
        if tasks:
            shutil.copyfile(cached, run_dir / "ledger.sqlite")
        return None

    def size(self, run_dir: Path, url: str | None) -> int:
        """The ledger's size on disk: its file (and WAL, if any is left) and its blobs."""
        files = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith("hub-")
                 and p.name != "ledger.id" and "adapters" not in p.parts]
        return sum(p.stat().st_size for p in files)


class PostgresLedgers:
    """Ledgers on a throwaway PostgreSQL server (tests/pgserver.py): each size prefilled once into a template
    database, and each phase on a new database copied from it."""

    name = "postgresql"

    def __init__(self) -> None:
        from tests.pgserver import PgServer

        self.server = PgServer()
        self.templates: dict[int, str] = {}

    def prepare(self, tasks: int, run_dir: Path) -> str | None:
        if tasks not in self.templates:
            url = self.server.new_database()
            ledger_id = None
            if tasks:
                print(f"prefilling a PostgreSQL ledger of {tasks:,} tasks", flush=True)
                prefill(url, tasks)
                ledger = Ledger(url)
                ledger_id = ledger.ledger_id
                ledger.close()
            self.templates[tasks] = (url.split("?")[0].rsplit("/", 1)[1], ledger_id)
        fresh_run_dir(run_dir)
        template, ledger_id = self.templates[tasks]
        if ledger_id:  # the copy is this run's ledger: the run directory says so, as a hub that made it would
            (run_dir / MARKER).write_text(ledger_id + "\n")
        return self.server.new_database(template=template)

    def size(self, run_dir: Path, url: str | None) -> int:
        """The ledger's tables with their indexes and out-of-line (compressed) values."""
        from agents.database import PostgresDatabase

        db = PostgresDatabase(url)
        try:
            return db.size_bytes()
        finally:
            db.close()

    def close(self) -> None:
        self.server.close()


def fresh_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)


# ---------------------------------------------------------------------------------------------- the hub
def hub_main(run_dir: str, ledger: str | None, started, stop, settings: dict | None = None) -> None:
    import structlog

    from agents.hub import Hub, HubConfig

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # no line per agent

    hub = Hub(HubConfig(run_dir=run_dir, ledger=ledger, **(settings or {})))
    hub.start()
    started.set()
    try:
        hub.run(stop)
    finally:
        hub.close()


class HubProcess:
    def __init__(self, run_dir: Path, ledger: str | None = None, settings: dict | None = None) -> None:
        """A hub on `run_dir` (`settings`: more [hub] settings) in a process of its own."""
        ctx = mp.get_context("spawn")
        self.started, self.stop = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=hub_main, args=(str(run_dir), ledger, self.started, self.stop, settings),
                                daemon=True)
        self.proc.start()
        if not self.started.wait(300):
            raise RuntimeError("the hub did not start within 300 s")
        self.endpoint = ipc_endpoint(run_dir, "hub-control")

    def cpu_s(self) -> float:
        """CPU seconds the hub process has used (user and system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.stop.set()
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.kill()


# ---------------------------------------------------------------------------------------------- the agents
def result_shape(kb: float) -> tuple[int, int]:
    """(samples, tokens per sample) of a generate result of about `kb` KiB: one sample up to 64 KiB, 64 up to
    2 MiB, else 384 (64 prompts x 6 answers, a 7B model's group at this size)."""
    samples = 1 if kb <= 64 else 64 if kb <= 2048 else 384
    return samples, max(1, round(kb * 1024 / (TOKEN_BYTES * samples)))


class Fleet:
    """`n` fake solvers and one creator on raw sockets, served by one poller in this process."""

    def __init__(self, ctx: zmq.Context, endpoint: str, n: int, result_kb: float,
                 results_per_s: float | None = None) -> None:
        """`results_per_s`: the solvers together answer no faster (None: each task the moment it arrives)."""
        self.results_per_s, self.backlog, self.next_send = results_per_s, deque(), 0.0
        self.samples, tokens = result_shape(result_kb)
        self.prompts_per_task = math.ceil(self.samples / 6)
        tail = {"text": "abcd" * tokens, "token_ids": [1000 + i % 30000 for i in range(tokens)],
                "logprobs": [-0.5 - (i % 97) / 97 for i in range(tokens)], "policy_version": 0, "finish_reason": "stop"}
        self.sample_tail = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in tail.items())  # 5 of a sample's 7
        self.solvers = {agent_socket(ctx, endpoint, "control", name=f"solver-{i}"): f"solver-{i}" for i in range(n)}
        self.creator = agent_socket(ctx, endpoint, "control", name="creator-0")
        self.poller = zmq.Poller()
        for sock in [*self.solvers, self.creator]:
            self.poller.register(sock, zmq.POLLIN)
        self.ready = {sock: Ready(role="solver", name=name, capacity=CAPACITY, task_kinds=["generate"])
                      for sock, name in self.solvers.items()}
        self.ready[self.creator] = Ready(role="creator", name="creator-0", capacity=1, task_kinds=[])
        for sock, ready in self.ready.items():
            self._send(sock, ready.name, ready)
        self.rejoining: set[zmq.Socket] = set()  # told not_ready (the hub buried it): Ready sent again
        self.rejoined, self.prompts_refused, self.submit_id = 0, 0, None
        self.result_ids: dict[str, tuple[str, int]] = {}  # msg id of a result sent -> its lease, until answered
        self.welcomed, self.accepted, self.result_bytes, self.submitted, self.prompt_counter = 0, 0, 0, 0, 0
        self.submit_pending = False
        self.answering = True  # solvers answer the tasks they are assigned (not while the fleet drains)
        self.pending_bytes: dict[tuple[str, int], int] = {}  # result bytes sent, by lease, until acknowledged
        self.last_heartbeat: dict[zmq.Socket, float] = {}
        self.max_gap, self.status_sent, self.status_ms, self.buried = 0.0, None, [], 0
        self._wait(lambda: self.welcomed == n + 1, 60, "welcome")

    @staticmethod
    def _send(sock: zmq.Socket, name: str, message) -> int:
        frames = encode(message, sender=name)
        sock.send_multipart(frames)
        return len(frames[2])

    def _wait(self, done, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout_s} s")
            self.turn(time.monotonic())

    def _result_frames(self, name: str, assign) -> list[bytes]:
        """A Result's frames, as `encode` would make them, assembled from pre-packed parts: the fake solver answers
        without spending the benchmark's own CPU (shared with the hub) on packing megabytes each time."""
        prompts = assign.task.prompts
        packer = msgpack.Packer()
        samples = b"".join(
            packer.pack_map_header(7) + packer.pack("sample_id") + packer.pack(f"{assign.task_id}.{assign.attempt}.{i}.0")
            + packer.pack("prompt_id") + packer.pack(prompts[i % len(prompts)].prompt_id) + self.sample_tail
            for i in range(self.samples))
        body = (packer.pack_map_header(1) + packer.pack("result") + packer.pack_map_header(2) + packer.pack("kind")
                + packer.pack("generate_result") + packer.pack("samples") + packer.pack_array_header(self.samples)
                + samples)
        msg_id = new_msg_id()
        self.result_ids[msg_id] = (assign.task_id, assign.attempt)
        header = packer.pack(["result", msg_id, name, assign.task_id, assign.attempt, None, []])
        return [SIGNATURE, header, body]

    def top_up(self) -> None:
        """Keep about four tasks per unit of capacity queued or in flight, in Submits of SUBMIT_BATCH."""
        if self.submit_pending or self.submitted - self.accepted >= 4 * CAPACITY * len(self.solvers) + SUBMIT_BATCH:
            return
        tasks = []
        for _ in range(SUBMIT_BATCH):
            prompts = [Prompt(prompt_id=f"q{self.prompt_counter + j}", text="1 + 1 =", answer="2")
                       for j in range(self.prompts_per_task)]
            self.prompt_counter += self.prompts_per_task
            tasks.append(GenerateTask(prompts=prompts))
        self.submit_id = new_msg_id()  # a refusal replies to it
        self.creator.send_multipart(encode(Submit(tasks=tasks), sender="creator-0", msg_id=self.submit_id))
        self.submitted += SUBMIT_BATCH
        self.submit_pending = True

    def ask_status(self, now: float) -> None:
        if self.status_sent is None:
            self.status_sent = now
            self._send(self.creator, "creator-0", StatusQuery())

    def heartbeat(self) -> None:
        for sock, name in self.solvers.items():
            self._send(sock, name, Heartbeat())
        self._send(self.creator, "creator-0", Heartbeat())

    def turn(self, now: float, timeout_ms: int = 5) -> None:
        for sock, _ in self.poller.poll(timeout_ms):
            while sock.poll(0):
                env = decode(sock.recv_multipart(copy=False))
                self._on(sock, env, time.monotonic())
        while self.backlog and time.monotonic() >= self.next_send:  # paced answers, when they are due
            self.next_send = max(self.next_send + 1 / self.results_per_s, time.monotonic() - 1.0)
            self._answer(*self.backlog.popleft())

    def _answer(self, sock: zmq.Socket, assign) -> None:
        frames = self._result_frames(self.solvers[sock], assign)
        sock.send_multipart(frames)
        self.pending_bytes[(assign.task_id, assign.attempt)] = len(frames[2])

    def _on(self, sock: zmq.Socket, env, now: float) -> None:
        kind = env.message.kind
        if kind == "welcome":
            self.welcomed += 1
            if sock in self.rejoining:
                self.rejoining.discard(sock)
                self.rejoined += 1
        elif kind == "heartbeat":
            if sock in self.last_heartbeat:
                self.max_gap = max(self.max_gap, now - self.last_heartbeat[sock])
            self.last_heartbeat[sock] = now
        elif kind == "assign" and self.answering:
            if self.results_per_s is None:
                self._answer(sock, env.message)
            else:
                self.backlog.append((sock, env.message))
        elif kind == "ack" and sock is self.creator:
            self.submit_pending = False
        elif kind == "ack":
            self.result_ids.pop(env.header.reply_to, None)
            size = self.pending_bytes.pop((env.message.task_id, env.message.attempt), 0)
            if env.message.status == "accepted":
                self.accepted += 1
                self.result_bytes += size
        elif kind == "status_reply":
            self.status_ms.append((now - self.status_sent) * 1000)
            self.status_sent = None
        elif kind == "error":
            lease = self.result_ids.pop(env.header.reply_to, None)
            if lease is not None:  # a result refused: no ack will come
                self.pending_bytes.pop(lease, None)
            self.buried += env.message.code == "not_ready"
            if self.buried <= 3 or env.message.code != "not_ready":
                print(f"  error from the hub: {env.message.code}: {env.message.detail[:200]}", flush=True)
            if env.message.code == "not_ready" and sock not in self.rejoining:  # buried while this process
                self.rejoining.add(sock)  # stalled: join again, as a real agent does (agents/agent.py)
                self._send(sock, self.ready[sock].name, self.ready[sock])
            if sock is self.creator and env.header.reply_to == self.submit_id:  # the submit was refused: no task
                self.submit_pending, self.submitted = False, self.submitted - SUBMIT_BATCH  # queued, no prompt
                self.prompts_refused += self.prompts_per_task * SUBMIT_BATCH  # recorded; top_up sends another

    def run(self, seconds: float, warm_s: float = 1.0, status_every_s: float | None = None) -> dict:
        """Serve for warm_s + seconds; figures over the last `seconds`."""
        start = time.monotonic()
        last_beat, counted = start, None
        while (now := time.monotonic()) - start < warm_s + seconds:
            if counted is None and now - start >= warm_s:
                counted = (now, self.accepted, self.result_bytes)
                self.max_gap, self.status_ms = 0.0, []
            self.top_up()
            if now - last_beat >= 1.0:
                last_beat = now
                self.heartbeat()
            if status_every_s is not None and counted is not None and (
                    not self.status_ms or now - start >= warm_s + len(self.status_ms) * status_every_s):
                self.ask_status(now)
            self.turn(now)
        t0, n0, b0 = counted
        elapsed = time.monotonic() - t0
        figures = {"tasks_per_s": (self.accepted - n0) / elapsed, "mb_per_s": (self.result_bytes - b0) / elapsed / 1e6,
                   "max_heartbeat_gap_s": self.max_gap, "status_ms_max": max(self.status_ms, default=None),
                   "results": self.accepted - n0}
        self.answering = False  # the results still in flight are acknowledged (and counted) before the hub stops
        self._wait(lambda: not self.pending_bytes, 60, "acknowledgement of the last results")
        figures["result_bytes_stored"] = self.result_bytes  # every accepted result's bytes, warm-up included
        return figures

    def status_latency(self, times: int = 5) -> list[float]:
        self.status_ms = []
        for _ in range(times):
            self.ask_status(time.monotonic())
            self._wait(lambda: self.status_sent is None, 120, "status reply")
        return self.status_ms

    def close(self) -> None:
        for sock in [*self.solvers, self.creator]:
            sock.close(0)


# ---------------------------------------------------------------------------------------------- the phases
def phase(root: Path, ledgers: SqliteLedgers | PostgresLedgers, tasks: int, agents: int, result_kb: float,
          seconds: float, status_every_s: float | None = None, status_idle: bool = False) -> dict:
    run_dir = root / "run"
    url = ledgers.prepare(tasks, run_dir)
    before = ledgers.size(run_dir, url)
    hub = HubProcess(run_dir, url)
    ctx = zmq.Context()
    fleet = Fleet(ctx, hub.endpoint, agents, result_kb)
    try:
        figures = {}
        if status_idle:
            latencies = fleet.status_latency()
            figures["status_ms"] = statistics.median(latencies)
            figures["status_ms_idle_max"] = max(latencies)
        cpu, wall = hub.cpu_s(), time.monotonic()
        figures |= fleet.run(seconds, status_every_s=status_every_s)
        figures["hub_cpu_share"] = (hub.cpu_s() - cpu) / (time.monotonic() - wall)  # of one core
    finally:
        fleet.close()
        ctx.term()
        hub.close()
    stored = ledgers.size(run_dir, url) - before
    figures["ledger_bytes_per_result_byte"] = stored / max(figures["result_bytes_stored"], 1)
    return figures


def by_size_and_result(root: Path, ledgers, sizes: list[int], kbs: list[float], seconds: float) -> dict:
    """Phases 2-4 on one kind of ledger: tasks/s and status by size, MB/s by result size, the stress phase."""
    print(f"2. tasks/s (16 solvers) and idle status latency by ledger size ({ledgers.name})", flush=True)
    by_size = {}
    for size in sizes:
        by_size[size] = phase(root, ledgers, size, 16, 1, seconds, status_idle=True)
        print(f"  {size:9,d} tasks: {by_size[size]['tasks_per_s']:8.0f} tasks/s, status "
              f"{by_size[size]['status_ms']:.1f} ms (slowest {by_size[size]['status_ms_idle_max']:.1f})", flush=True)
    print(f"3. MB/s by result size (8 solvers, empty ledger, {ledgers.name})", flush=True)
    by_kb = {}
    for kb in kbs:
        by_kb[kb] = phase(root, ledgers, 0, 8, kb, seconds)
        print(f"  {kb:7.0f} KiB: {by_kb[kb]['mb_per_s']:7.1f} MB/s, {by_kb[kb]['tasks_per_s']:7.1f} results/s, "
              f"ledger {by_kb[kb]['ledger_bytes_per_result_byte']:.2f} bytes per result byte", flush=True)
    print(f"4. {max(kbs):.0f} KiB results from 8 solvers, status every second, on {max(sizes):,} tasks "
          f"({ledgers.name})", flush=True)
    stress = phase(root, ledgers, max(sizes), 8, max(kbs), max(seconds, 10.0), status_every_s=1.0)
    print(f"  largest heartbeat gap {stress['max_heartbeat_gap_s']:.2f} s, slowest status "
          f"{stress['status_ms_max'] or float('nan'):.0f} ms, {stress['mb_per_s']:.1f} MB/s", flush=True)
    return {
        "tasks_per_s_by_size": {str(s): round(f["tasks_per_s"], 1) for s, f in by_size.items()},
        "status_ms_by_size": {str(s): round(f["status_ms"], 2) for s, f in by_size.items()},
        "mb_per_s_by_result_kb": {str(int(k)): round(f["mb_per_s"], 2) for k, f in by_kb.items()},
        "ledger_bytes_per_result_byte_by_kb": {str(int(k)): round(f["ledger_bytes_per_result_byte"], 3)
                                               for k, f in by_kb.items()},
        "throughput_largest_vs_empty": round(by_size[max(sizes)]["tasks_per_s"] / by_size[min(sizes)]["tasks_per_s"], 3),
        "status_ms_largest": round(by_size[max(sizes)]["status_ms"], 2),
        "max_heartbeat_gap_s": round(stress["max_heartbeat_gap_s"], 3),
        "status_ms_under_load_max": round(stress["status_ms_max"] or -1, 1),
        "ledger_bytes_per_result_byte": round(by_kb[max(kbs)]["ledger_bytes_per_result_byte"], 3),
        "largest_size": max(sizes),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100000,1000000", help="Prefilled ledger sizes, in tasks.")
    parser.add_argument("--agents", default="1,16,64,256", help="Solver counts for the throughput phase.")
    parser.add_argument("--result-kb", default="10,1024,8192", help="Result sizes for the MB/s phase, in KiB.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds of each phase.")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "selfplay-hub-scale"),
                        help="Where prefilled ledgers are kept between runs.")
    parser.add_argument("--postgres", action="store_true",
                        help="Also run phases 2-4 on a PostgreSQL ledger (a throwaway server: tests/pgserver.py).")
    parser.add_argument("--pg-sizes", default="0,100000", help="Prefilled ledger sizes on PostgreSQL, in tasks.")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.agents.split(",")]
    kbs = [float(k) for k in args.result_kb.split(",")]
    with tempfile.TemporaryDirectory(prefix="hub-scale-") as tmp:
        root, sqlite = Path(tmp), SqliteLedgers(Path(args.cache))
        print("1. tasks/s by solver count (empty ledger, 1 KiB results)", flush=True)
        by_agents = {}
        hub_cpu = {}
        for n in counts:
            figures = phase(root, sqlite, 0, n, 1, args.seconds)
            by_agents[n], hub_cpu[n] = figures["tasks_per_s"], figures["hub_cpu_share"]
            print(f"  {n:4d} solvers: {by_agents[n]:8.0f} tasks/s, the hub using {hub_cpu[n]:.0%} of a core", flush=True)
        out = by_size_and_result(root, sqlite, sizes, kbs, args.seconds)
        if args.postgres:
            postgres = PostgresLedgers()
            try:
                out["postgresql"] = by_size_and_result(root, postgres, [int(s) for s in args.pg_sizes.split(",")],
                                                       kbs, args.seconds)
            finally:
                postgres.close()
    large = max(counts)
    base = 16 if 16 in counts else min(counts)
    out = {"tasks_per_s_by_agents": {str(n): round(v, 1) for n, v in by_agents.items()},
           "hub_cpu_share_by_agents": {str(n): round(v, 2) for n, v in hub_cpu.items()},
           f"throughput_{large}_vs_{base}": round(by_agents[large] / by_agents[base], 3), **out}
    if max(sizes) == 1_000_000:
        out["throughput_1m_vs_empty"] = out["throughput_largest_vs_empty"]
        out["status_ms_1m"] = out["status_ms_largest"]
    if (large, base) == (256, 16):
        out["throughput_256_vs_16"] = out[f"throughput_{large}_vs_{base}"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
