"""Loop benchmark: the live system against the same work done in one process without the bus.

    python bench/loop.py [--rounds 4] [--prompts 16] [--hidden 256] [--train-batch 64] [--repeats 3] ...  (--help)

Three runs execute the same creator (eva + DPO, a programmatic arithmetic mutator, fixed seeds) on
fresh copies of the same solver (hf), judge (reward model) and trainer, for the same rounds:
- local: a LocalLink with AgentLink's interface runs every submitted task at once on the workers
  and hands published adapters straight to the solver (no sockets, no ledger, no polling);
- system, max_staleness 0: hub, solver, judge and trainer as agents over real sockets and the
  SQLite ledger, the creator waiting for each new policy (the papers' synchronous loop);
- system, max_staleness 1: the same, the creator generating round t+1 while round t trains.
The system's hub, solver, judge and trainer are processes (`python -m launch.worker`, as `selfplay up`
starts them); the creator runs here in both cases and is timed once every worker is ready. Every
process runs `--threads` torch threads (1: when generation and training overlap, each has a core).
The default workload is balanced: 2 short answers per prompt from a width-256 model, and each round's
pairs trained as one batch, so every policy version is one optimizer step (as in TRL's online DPO,
where each generated batch makes one update that is then synced); training takes about 40% of the
synchronous loop, as it does when a GPU generates with vLLM. `--hidden 64 --train-batch 1` is the
other extreme: 64 tiny steps per version. Each kind of run is repeated (--repeats, interleaved) and
its median wall time counts. Figures:
- async_speedup = wall time at max_staleness 0 / at 1, with the training steps of both printed
  (target >= 1.3 when generation and training have separate cores); async_bound is what the
  synchronous run would take if each round's training ran beside the next round's generation with
  nothing slowed down (G1 + max(T1, G2) + ... + T_last, from its ledger), a yardstick rather than a
  ceiling: overlap also fills the synchronous loop's bubbles, and on a machine with fewer cores than
  busy processes it slows both sides down;
- bus_overhead = system (max_staleness 0) wall time / local wall time (target <= 1.10);
- weight_sync_fraction = (publish + fetch-and-load, median per version) / median optimizer step
  (target <= 0.05); the solver's first load, which also wraps the model in LoRA, is printed apart.
  The loop makes one version per round, so weight_sync_round_fraction divides the same by the median
  training time of a round (the same figure when a round is one step; with many small steps per
  version it is the share of training time that sync adds).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def add_operand(prompt, mutation, rng):
    from protocol.messages import Prompt

    numbers = [int(n) for n in re.findall(r"\d+", prompt.text)]
    extra = rng.randint(1, 9)
    return Prompt(prompt_id="tmp", text="What is " + " + ".join(map(str, [*numbers, extra])) + "?",
                  answer=str(sum(numbers) + extra))


def make_workers(link, models, out: Path, train_batch: int):
    """The solver, judge and trainer of the one-process run (the system's topology() has the same settings)."""
    from agents.backends.hf import HFGenerator
    from agents.backends.scoring import RewardModelScorer
    from agents.judge import Judge
    from agents.solver import Solver
    from agents.trainer_agent import TrainerAgent
    from trainer.config import TrainConfig
    from trainer.methods import DEFAULT_METHOD

    config = TrainConfig(algo=DEFAULT_METHOD, model=str(models.policy), data="-", out=str(out), batch_size=train_batch, lr=1e-3,
                         lora={"r": 8, "alpha": 16}, max_length=96, max_prompt_length=48)
    solver = Solver(link, HFGenerator(str(models.policy)))
    judge = Judge(link, RewardModelScorer(str(models.reward)))
    trainer = TrainerAgent(link, config)
    return solver, judge, trainer


def creator_config(args, max_staleness: int = 0):
    from agents.creator import CreatorConfig

    return CreatorConfig(samples_per_prompt=args.samples, max_new_tokens=args.new_tokens, sample_fraction=0.5,
                         rewrites_per_prompt=2, train_groups=args.train_groups, prompts_per_task=args.prompts_per_task, seed=0,
                         pool_per_round=args.pool_per_round, max_staleness=max_staleness)


def seeds(n: int):
    from protocol.messages import Prompt

    return [Prompt(prompt_id=f"seed{i}", text=f"What is {i + 3} + {2 * i + 5}?", answer=str(3 * i + 8))
            for i in range(n)]


def warm_up(creator) -> None:
    """One generate and judge task, untimed, the same in both runs (first calls are slow: lazy imports, allocator)."""
    creator.solve(creator.pool[:2])


def run_local(models, tmp: Path, args) -> dict:
    from agents.creator import Creator
    from agents.local import LocalLink
    from trainer.adapters import adapter_parameters, read_adapter

    link = LocalLink()
    solver, judge, trainer = make_workers(link, models, tmp / "local", args.train_batch)
    link.workers = {"generate": solver.solve, "judge": judge.judge, "train": trainer.train}
    lora = trainer.config.lora
    adapter = {"r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora.target_modules}

    params = adapter_parameters(trainer.recipe.model)

    def publish(version: int) -> bool:  # straight into the solver's model: no bus
        solver.generator.load_policy(version, adapter, read_adapter(params))
        return True

    trainer.publish = publish
    creator = Creator(link, creator_config(args), seeds(args.prompts), mutator=add_operand)
    warm_up(creator)
    started = time.perf_counter()
    reports = creator.run(args.rounds)
    return {"seconds": time.perf_counter() - started, "versions": [r.policy_version for r in reports],
            "steps": len(trainer.recipe.step_seconds)}


def topology(models, run: Path, args, max_staleness: int) -> Path:
    """The system's topology: the same models and trainer settings as make_workers."""
    run.mkdir(parents=True)
    (run / "seeds.jsonl").write_text("".join(json.dumps({"prompt": p.text, "answer": p.answer}) + "\n"
                                            for p in seeds(args.prompts)))
    path = run / "topology.toml"
    path.write_text(f"""
[run]
dir = "{run}"
log_level = "info"
[hub]
heartbeat_interval_s = 0.5
lease_s = 300
max_staleness = {max_staleness}
[creator]
prompts = "{run / 'seeds.jsonl'}"
[solver]
model = "{models.policy}"
device = "cpu"
threads = {args.threads}
capacity = {args.capacity}
[judge]
backend = "reward_model"
model = "{models.reward}"
device = "cpu"
[trainer]
algo = "dpo"
model = "{models.policy}"
batch_size = {args.train_batch}
lr = 0.001
max_length = 96
max_prompt_length = 48
lora = {{ r = 8, alpha = 16 }}
""")
    return path


def log_events(run: Path, name: str, event: str) -> list[dict]:
    path = run / "logs" / f"{name}.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == event]


def pipelined(trains: list[tuple[float, float]], started_at: float, seconds: float) -> float:
    """What the synchronous loop of these train tasks (submitted, done) would take if each round's training
    ran beside the next round's generation with nothing slowed down: G1 + max(T1, G2) + ... + T_last,
    where G is the time from the previous round's policy (or the start) to the round's train task."""
    ends = [started_at] + [done for _, done in trains]
    rest = [submitted - end for (submitted, _), end in zip(trains, ends, strict=False)]
    train = [done - submitted for submitted, done in trains]
    tail = started_at + seconds - ends[-1]  # after the last policy: the creator's last collect
    return rest[0] + sum(max(t, g) for t, g in zip(train, rest[1:], strict=False)) + train[-1] + tail


def run_system(models, tmp: Path, args, max_staleness: int) -> dict:
    """Hub, solver, judge and trainer as processes (`python -m launch.worker`, what `selfplay up` starts),
    each with `--threads` torch threads; the creator here, timed once the workers are all ready."""
    from agents.agent import AgentLink, LinkConfig
    from agents.creator import Creator
    from agents.ledger_query import LedgerReader

    run = tmp / f"system-{max_staleness}"
    path = topology(models, run, args, max_staleness)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-m", "launch.worker", role, str(path)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(run / f"{role}.err", "w"))  # noqa: SIM115
             for role in ("hub", "solver", "judge", "trainer")]
    link = None
    try:
        deadline = time.monotonic() + 300
        while not (run / "hub.json").exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"the hub did not start: {(run / 'hub.err').read_text()[-2000:]}")
            time.sleep(0.1)
        link = AgentLink(LinkConfig(name="creator-0", role="creator", heartbeat_interval_s=0.5,
                                    control=json.loads((run / "hub.json").read_text())["control"]))
        link.start()
        while {a.name for a in link.status().agents} < {"solver-0", "judge-0", "trainer-0"}:
            dead = [p.args[3] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready (exited: {dead}); see {run}/*.err")
            time.sleep(0.2)
        creator = Creator(link, creator_config(args, max_staleness), seeds(args.prompts), mutator=add_operand)
        warm_up(creator)  # an agent is READY before its model is loaded: wait for that, and for first calls
        started, started_at = time.perf_counter(), time.time()  # the ledger's clock is time.time()
        reports = creator.run(args.rounds)
        seconds = time.perf_counter() - started
    finally:
        if link is not None:
            link.stop()
        for proc in procs[::-1]:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    with LedgerReader(run / "ledger.sqlite") as ledger:  # each train task: submitted, then done
        trains = [(t.created, t.updated) for t in ledger.tasks(kind="train")]
    rounds = log_events(run, "trainer-0", "round trained")
    publishes = log_events(run, "trainer-0", "policy published")
    loads = [e["seconds"] for e in log_events(run, "solver-0", "policy loaded")]
    return {"seconds": seconds, "versions": [r.policy_version for r in reports],
            "steps": reports[-1].step, "train_share": sum(done - submitted for submitted, done in trains) / seconds,
            "pipelined_s": pipelined(trains, started_at, seconds), "step_s": statistics.median(e["step_s"] for e in rounds),
            "round_s": statistics.median(e["round_s"] for e in rounds),
            "publish_s": statistics.median(e["publish_s"] for e in publishes),
            "load_s": statistics.median(loads[1:] or loads), "first_load_s": loads[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="eva rounds (default 4; at least 2)")
    parser.add_argument("--prompts", type=int, default=16, help="seed prompts (default 16)")
    parser.add_argument("--pool-per-round", type=int, default=None,
                        help="pool prompts solved per round, drawn at random (default: the whole pool, which grows "
                             "by the evolved prompts every round)")
    parser.add_argument("--hidden", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt (default 2)")
    parser.add_argument("--new-tokens", type=int, default=8, help="answer length cap in tokens (default 8)")
    parser.add_argument("--prompts-per-task", type=int, default=4,
                        help="prompts per generation/judge task (default 4; the creator's own default is 16)")
    parser.add_argument("--train-groups", type=int, default=64, help="groups per training task (default 64)")
    parser.add_argument("--train-batch", type=int, default=64,
                        help="pairs per optimizer step (default 64: a round's pairs, one step per policy version)")
    parser.add_argument("--capacity", type=int, default=2,
                        help="generation tasks a solver holds at once (default 2, the topology's default: the next "
                             "waits at the solver while one runs; 1: each waits on a round trip to the hub)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    parser.add_argument("--cores", type=lambda s: {int(c) for c in s.split(",")}, default=None,
                        help="CPU ids to pin this run and every process it starts to, e.g. 0 or 0,1 (default: all). "
                             "With one core nothing computes concurrently: bus_overhead is then the bus alone")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each kind, interleaved; the median wall time counts (default 3)")
    args = parser.parse_args(argv)
    if args.rounds < 2:  # weight sync is timed on the solver's loads of versions after the first
        parser.error(f"--rounds must be at least 2, got {args.rounds}")
    if args.cores is not None:
        try:
            os.sched_setaffinity(0, args.cores)  # inherited by every process started below
        except (AttributeError, OSError, ValueError) as e:  # AttributeError: no CPU affinity on this OS
            parser.error(f"--cores {sorted(args.cores)}: {e}")

    import torch

    torch.set_num_threads(args.threads)

    from launch.logs import configure_logging
    from trainer.tiny import save_tiny_models

    configure_logging("warning")
    runs: dict[str, list[dict]] = {"local": [], "system": [], "overlapped": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = save_tiny_models(Path(tmp) / "models", hidden_size=args.hidden, num_layers=args.layers,
                                  intermediate_size=args.hidden * 2)
        for i in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits all three
            runs["local"].append(run_local(models, Path(tmp) / f"r{i}", args))
            runs["system"].append(run_system(models, Path(tmp) / f"r{i}", args, max_staleness=0))
            runs["overlapped"].append(run_system(models, Path(tmp) / f"r{i}", args, max_staleness=1))
    for name, done in runs.items():  # the same work was done in every run
        assert all(r["versions"] == runs["local"][0]["versions"] for r in done), (name, done)
    wall = {name: statistics.median(r["seconds"] for r in done) for name, done in runs.items()}
    system = runs["system"]
    median = {key: statistics.median(r[key] for r in system)
              for key in ("publish_s", "load_s", "first_load_s", "step_s", "round_s", "train_share")}
    share = median["train_share"]
    bound = statistics.median(r["seconds"] / r["pipelined_s"] for r in system)
    result = {
        "bench": "loop",
        "async_speedup": round(wall["system"] / wall["overlapped"], 3),
        "bus_overhead": round(wall["system"] / wall["local"], 3),
        "weight_sync_fraction": round((median["publish_s"] + median["load_s"]) / median["step_s"], 3),
        # one version per round: the share of a round's training that its weight sync adds
        "weight_sync_round_fraction": round((median["publish_s"] + median["load_s"]) / median["round_s"], 4),
        "async_bound": round(bound, 3),  # each round's training beside the next round's generation, nothing slowed
        "train_share": round(share, 3),
        **{f"{name}_s": round(seconds, 2) for name, seconds in wall.items()},
        "all_s": {name: [round(r["seconds"], 2) for r in done] for name, done in runs.items()},
        "train_steps": {name: done[0]["steps"] for name, done in runs.items()},
        "publish_ms": round(median["publish_s"] * 1e3, 1), "load_ms": round(median["load_s"] * 1e3, 1),
        "first_load_ms": round(median["first_load_s"] * 1e3, 1), "train_step_ms": round(median["step_s"] * 1e3, 1),
        "train_round_s": round(median["round_s"], 3),
        **{key: getattr(args, key) for key in ("rounds", "prompts", "pool_per_round", "hidden", "layers", "samples", "new_tokens",
                                                "prompts_per_task", "train_groups", "train_batch", "capacity", "threads", "repeats")},
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,  # Linux only
    }
    print(f"async speedup: max_staleness 0 took {result['system_s']} s, 1 took {result['overlapped_s']} s -> "
          f"{result['async_speedup']}x (target >= 1.3; training is {share:.0%} of the synchronous loop, and running "
          f"each round's beside the next round's generation with nothing slowed would give {result['async_bound']}x); "
          f"training steps {result['train_steps']}")
    print(f"bus overhead: system {result['system_s']} s vs one process {result['local_s']} s -> "
          f"{result['bus_overhead']}x (target <= 1.10)")
    print(f"weight sync: publish {result['publish_ms']} ms + load {result['load_ms']} ms per version (first load "
          f"{result['first_load_ms']} ms) vs {result['train_step_ms']} ms per training step -> "
          f"{result['weight_sync_fraction']} (target <= 0.05); per version, vs the {result['train_round_s']} s of training "
          f"that made it -> {result['weight_sync_round_fraction']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
