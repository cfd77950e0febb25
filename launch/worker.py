"""One process of a topology (what `selfplay up` starts, and what `selfplay attach` runs).

    python -m launch.worker hub runs/demo/topology.toml
    python -m launch.worker solver topology.toml --name solver-3 [--control tcp://hub:5555 --data tcp://hub:5556]

The hub writes its endpoints to RUN/hub.json; agents on its machine read them from there, agents on
another machine dial `hub.address` at the topology's ports (or --control/--data). SIGTERM or Ctrl-C
stops the process cleanly (agents send DISCONNECT).

Exit codes, which the supervisor acts on: 0 done (the creator: its rounds are run, which ends the run);
EXIT_RUN_FAILED (the creator stopped after failed rounds: the run ends, failed); EXIT_FATAL (the
process cannot run as set up, e.g. a damaged ledger: restarting would fail the same way, so the run
stops and the supervisor shows the one line the process printed); anything else is a crash, restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROLES = ("hub", "creator", "solver", "judge", "trainer")
EXIT_RUN_FAILED = 3
EXIT_FATAL = 78  # sysexits.h EX_CONFIG
EXIT_NO_HUB = 75  # sysexits.h EX_TEMPFAIL: no hub answered in time; restarted, never a crash loop
TASK_KINDS = {"solver": ["generate"], "judge": ["judge"], "trainer": ["train"], "creator": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.worker", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("topology", help="topology file")
    parser.add_argument("--name", help="agent name (default: ROLE-0)")
    parser.add_argument("--control", help="hub control endpoint (default: from RUN/hub.json)")
    parser.add_argument("--data", help="hub data endpoint (default: from RUN/hub.json)")
    parser.add_argument("--index", type=int, default=0, help="its place among this machine's agents of its role "
                                                           "(vLLM solvers take GPUs by it; default 0)")
    parser.add_argument("--device", help="solver only: its device instead of the topology's [solver] device")
    args = parser.parse_args(argv)

    from launch.logs import configure_logging
    from launch.topology import load_topology

    topo = load_topology(args.topology, solver_device=args.device)
    run_dir = Path(topo.run.dir)
    name = args.name or f"{args.role}-0"
    rank = int(os.environ.get("RANK", "0"))  # a trainer's rank when torchrun started it ([trainer] nproc)
    if args.role == "trainer" and rank > 0:
        name = f"{name}-rank{rank}"
    configure_logging(topo.run.log_level, json_path=run_dir / "logs" / f"{name}.jsonl",
                      max_bytes=int(topo.run.log_max_mb * 2**20), backups=topo.run.log_backups)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.role == "hub":
        return run_hub(topo, stop)
    if args.role == "trainer" and rank > 0:  # only rank 0 talks to the hub; this rank makes the calls it makes
        from agents.trainer_agent import follow

        follow(topo.trainer_config())
        return 0
    control, data = args.control, args.data
    if control is None and topo.hub.address is not None:  # the hub is on another machine
        control, data = topo.agent_endpoints()
    control, data = endpoints(run_dir, control, data, stop)
    return run_agent(args.role, name, topo, control, data, stop, args.index)


def run_hub(topo, stop: threading.Event) -> int:
    from agents.hub import Hub
    from agents.ledger import LedgerError

    hub = Hub(topo.hub_config())
    try:
        hub.start()
    except LedgerError as e:  # one line, and no restart: a restarted hub would find the same ledger
        print(f"hub: {e}", file=sys.stderr, flush=True)
        return EXIT_FATAL
    (Path(topo.run.dir) / "hub.json").write_text(json.dumps(hub.endpoints))
    try:
        hub.run(stop)
    finally:
        hub.close()
    return 0


def endpoints(run_dir: Path, control: str | None, data: str | None, stop: threading.Event) -> tuple[str, str | None]:
    if control:
        return control, data
    path = run_dir / "hub.json"
    while not path.exists():  # the hub may still be starting
        if stop.wait(0.2):
            raise SystemExit(0)
    found = json.loads(path.read_text())
    return found["control"], data or found["data"]


def run_agent(role: str, name: str, topo, control: str, data: str | None, stop: threading.Event,
              index: int = 0) -> int:
    from agents.agent import AgentLink, LinkConfig

    capacity = topo.solver.capacity if role == "solver" else 1
    link = AgentLink(LinkConfig(name=name, role=role, control=control, data=data, capacity=capacity,
                                task_kinds=TASK_KINDS[role], keys_dir=topo.hub.keys_dir,
                                heartbeat_interval_s=topo.hub.heartbeat_interval_s, liveness=topo.hub.liveness))
    try:
        link.start(timeout_s=300)
    except TimeoutError as e:  # no hub yet (it is starting, or another machine's is down): retried for ever
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        link.stop()
        return EXIT_NO_HUB
    except (PermissionError, OSError, ValueError) as e:  # a missing key, a name or role its key does not allow
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        link.stop()
        return EXIT_FATAL
    try:
        if role == "creator":
            return run_creator(link, topo)
        worker = build_worker(role, link, topo, index)
        worker.run(stop)
        return 0
    finally:
        link.stop()


def build_worker(role: str, link, topo, index: int = 0):

    if role == "solver":
        from agents.solver import Solver

        s = topo.solver
        if s.backend == "vllm":
            import torch

            from agents.backends.vllm import VLLMGenerator, solver_gpus, visible_gpus

            per_solver = (int(s.engine_args.get("tensor_parallel_size", 1))
                          * int(s.engine_args.get("pipeline_parallel_size", 1)))
            visible = visible_gpus(dict(os.environ), torch.cuda.device_count())
            # vLLM takes the first visible GPUs: make them this solver's own
            os.environ["CUDA_VISIBLE_DEVICES"] = solver_gpus(s.device, index, per_solver, visible)
            adapters = Path(topo.run.dir) / "solver-adapters" / link.config.name
            return Solver(link, VLLMGenerator(s.model, adapters, max_staleness=topo.hub.max_staleness,
                                              max_lora_rank=s.max_lora_rank, engine_args=s.engine_args))
        from agents.backends.hf import HFGenerator

        if topo.solver.threads is not None:
            import torch

            torch.set_num_threads(topo.solver.threads)
        return Solver(link, HFGenerator(topo.solver.model, device=topo.solver.device, batch_size=topo.solver.batch_size))
    if role == "judge":
        from agents.backends import scoring
        from agents.judge import Judge

        j = topo.judge
        if j.backend == "verifier":
            from agents.backends.checkers import load_scorer

            scorer = load_scorer(j.checkers()) if j.checkers() else scoring.AnswerVerifier()
        elif j.backend == "reward_model":
            scorer = scoring.RewardModelScorer(j.model, device=j.device)
        elif j.api is not None:
            from agents.backends.openai_api import OpenAIChat

            scorer = scoring.LLMJudge(OpenAIChat(j.api), max_new_tokens=j.max_new_tokens)
        else:
            from agents.backends.hf import HFGenerator

            scorer = scoring.LLMJudge(HFGenerator(j.model, device=j.device), max_new_tokens=j.max_new_tokens)
        return Judge(link, scorer)
    if role == "trainer":
        from agents.trainer_agent import TrainerAgent

        return TrainerAgent(link, topo.trainer_config())
    raise ValueError(role)


def run_creator(link, topo) -> int:
    from agents.creator import Creator, RunStopped
    from agents.plugins import load_object
    from launch.preflight import read_prompts

    chat = topo.creator.chat
    seeds = read_prompts(topo.creator.prompts, "seed", "seed", chat)
    held_out = read_prompts(topo.creator.eval_prompts, "eval", "eval", chat) if topo.creator.eval_prompts else None
    validation = (read_prompts(topo.creator.validation_prompts, "validation", "validation", chat)
                  if topo.creator.validation_prompts else None)
    mutator = load_object(topo.creator.mutator) if topo.creator.mutator else None
    evolver = None
    if topo.creator.evolver is not None:
        from agents.backends.openai_api import OpenAIChat

        evolver = OpenAIChat(topo.creator.evolver)
    started = time.time()
    creator = Creator(link, topo.creator_config(), seeds, mutator=mutator, eval_prompts=held_out,
                      state_path=Path(topo.run.dir) / "creator" / f"{link.config.name}.json",
                      validation_prompts=validation, evolver=evolver)
    stopped = None
    try:
        creator.run(rounds=topo.run.rounds)
    except RunStopped as e:
        stopped = str(e)
        print(f"creator: the run stops: {e}", file=sys.stderr, flush=True)
    summary = {"rounds": creator.round, "policy_version": creator.policy_version,
               "seconds": time.time() - started, "eval_reward": creator.eval_rewards,
               "failed_rounds": creator.failures, "stopped": stopped, "best_version": creator.promotion.best,
               "rollbacks": creator.promotion.rollbacks,
               "validation": {v: score.mean for v, score in creator.promotion.validation.items()}}
    (Path(topo.run.dir) / "creator-done.json").write_text(json.dumps(summary))
    return EXIT_RUN_FAILED if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
