"""Soak: the demo topology under random kill -9s; nothing may be lost.

    python bench/soak.py --minutes 20 [--kill-every 30] [--seed 0] [--run-dir runs/soak]

Runs the demo world (the SFT'd arithmetic model, eva + DPO, 2 solvers, a verifier judge, a trainer)
under `selfplay up` for `--minutes`, killing a random process (hub, creator, a solver, the judge or the
trainer) with SIGKILL every `--kill-every` seconds (jittered). The supervisor restarts what was killed.
Every 5 s it samples each process's RSS and open file descriptors. At the end it stops the run and
checks the ledger and logs:
- lost: acknowledged work missing or repeated - a DONE generate task without its samples, samples of an
  attempt other than the one recorded, a train task trained twice, a gap in the policy versions (must be 0);
- tasks_done, tasks_per_s, tasks_dead (with their reasons), restarts, kills by process;
- rss_growth_max: the largest growth of one process incarnation's RSS between its first and last minute
  (MiB), and fds_max / fd_growth_max.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TARGETS = ("hub", "creator-0", "solver-0", "solver-1", "judge-0", "trainer-0")


def proc_stats(pid: int) -> tuple[float, int] | None:
    """(RSS in MiB, open file descriptors) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, StopIteration, PermissionError):
        return None


def children(run: Path) -> dict[str, int]:
    try:
        return json.loads((run / "supervisor.json").read_text())["children"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_topology(root: Path, run: Path) -> Path:
    from launch import demo
    from trainer.methods import DEFAULT_METHOD

    plan = demo.Plan()
    data = demo.write_data(plan, root / "data")
    model = demo.prepare_model(plan, root / "model", data["warmup"], say=lambda line: print(line, flush=True))
    topo = demo.topology(plan, DEFAULT_METHOD, run, model, data)
    topo["run"]["rounds"] = 10**6  # the soak's clock ends it, not a round count
    topo["creator"]["settings"] |= {"max_wall_s": None, "pool_per_round": 256, "train_groups": 256,
                                    "eval_every": 10**6, "prompts_per_task": 32}
    path = run / "topology.toml"
    path.write_text(demo.to_toml(topo))
    return path


def audit(run: Path) -> dict:
    """What the ledger and logs say about lost or repeated work."""
    from agents.ledger_query import LedgerReader

    with LedgerReader(run / "ledger.sqlite") as ledger:
        tasks = ledger.tasks()
        sample_tasks = ledger.sample_tasks()
        attempts = {t.task_id: t.attempt for t in tasks}
        with_samples = {task_id for _, task_id in sample_tasks}
        wrong_attempt = sum(1 for sample_id, task_id in sample_tasks
                            if sample_id.split(".")[1] != str(attempts.get(task_id)))
        missing = 0
        for t in tasks:
            if t.kind == "generate" and t.state == "done" and t.task_id not in with_samples:
                result = ledger.result(t.task_id)
                missing += bool(getattr(result, "samples", None))
        versions = ledger.policy_versions()
    trained = Counter()
    for path in (run / "logs").glob("trainer-0.jsonl*"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "round trained":
                trained[event["task_id"]] += 1
    twice = sum(n - 1 for n in trained.values() if n > 1)
    gaps = (versions[-1] - len(versions)) if versions else 0
    states = Counter(t.state for t in tasks)
    dead_reasons = Counter((t.reason or "")[:80] for t in tasks if t.state == "dead")
    return {"lost": missing + wrong_attempt + twice + gaps,
            "lost_detail": {"done_without_samples": missing, "samples_of_another_attempt": wrong_attempt,
                            "trained_twice": twice, "version_gaps": gaps},
            "tasks_done": states["done"], "tasks_dead": states["dead"], "tasks_open_at_stop": states["queued"] +
            states["leased"], "dead_reasons": dict(dead_reasons), "policy_version": versions[-1] if versions else 0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long to run (default 20)")
    parser.add_argument("--kill-every", type=float, default=30.0, help="mean seconds between kills (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default 0)")
    parser.add_argument("--run-dir", default="runs/soak", help="where the run lives (wiped first)")
    args = parser.parse_args(argv)

    import shutil

    root = Path(args.run_dir).resolve()
    run = root / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    topology = write_topology(Path("runs/demo").resolve(), run)
    rng = random.Random(args.seed)
    up = subprocess.Popen([sys.executable, "-m", "launch.cli", "up", str(topology)], stdout=subprocess.DEVNULL,
                          stderr=open(root / "up.err", "w"), cwd=Path(__file__).resolve().parents[1])  # noqa: SIM115
    samples: dict[tuple[str, int], list[tuple[float, float, int]]] = defaultdict(list)  # (name, pid) -> (t, rss, fds)
    kills: Counter[str] = Counter()
    started = time.monotonic()
    end = started + args.minutes * 60
    next_kill = started + 60 + rng.uniform(0.5, 1.5) * args.kill_every  # a minute to start up first
    last_sample = 0.0
    try:
        while time.monotonic() < end:
            if up.poll() is not None:
                raise RuntimeError(f"selfplay up exited ({up.returncode}); see {root / 'up.err'}")
            now = time.monotonic()
            pids = children(run)
            if now - last_sample >= 5:
                last_sample = now
                for name, pid in pids.items():
                    if (stats := proc_stats(pid)) is not None:
                        samples[(name, pid)].append((now - started, *stats))
            if now >= next_kill and pids:
                name = rng.choice([n for n in TARGETS if n in pids])
                with contextlib.suppress(ProcessLookupError):  # it may have just exited
                    os.kill(pids[name], signal.SIGKILL)
                    kills[name] += 1
                    print(f"[{(now - started) / 60:5.1f} min] kill -9 {name} (pid {pids[name]})", flush=True)
                next_kill = now + rng.uniform(0.5, 1.5) * args.kill_every
            time.sleep(0.5)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    elapsed = time.monotonic() - started
    growth, fd_growth = {}, {}
    for (name, _), points in samples.items():
        warm = [p for p in points if p[0] - points[0][0] >= 60]  # an incarnation's first minute is warm-up
        if len(warm) >= 12:  # at least a minute of steady state to judge growth on
            first, last = warm[:12], warm[-12:]
            growth[name] = max(growth.get(name, 0.0), max(p[1] for p in last) - min(p[1] for p in first))
            fd_growth[name] = max(fd_growth.get(name, 0), max(p[2] for p in last) - min(p[2] for p in first))
    incarnations = Counter(name for name, _ in samples)
    result = {"bench": "soak", "minutes": round(elapsed / 60, 2), **audit(run), "kills": sum(kills.values()),
              "kills_by_process": dict(kills), "restarts": sum(n - 1 for n in incarnations.values())}
    result["tasks_per_s"] = round(result["tasks_done"] / elapsed, 3)
    result["rss_growth_max"] = round(max(growth.values(), default=0.0), 1)
    result["rss_growth"] = {k: round(v, 1) for k, v in sorted(growth.items())}
    result["fds_max"] = max((p[2] for points in samples.values() for p in points), default=0)
    result["fd_growth_max"] = max(fd_growth.values(), default=0)
    print(f"{result['minutes']} min, {result['kills']} kills, {result['restarts']} restarts, "
          f"{result['tasks_done']} tasks done ({result['tasks_per_s']}/s), {result['tasks_dead']} dead, "
          f"lost {result['lost']}, policy v{result['policy_version']}, RSS growth max {result['rss_growth_max']} MiB, "
          f"fds max {result['fds_max']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
