"""Loop benchmark: the live system against the same work done in one process without the bus.

    python bench/loop.py [--rounds 2] [--prompts 16] [--hidden 64] [--layers 2]

Both runs execute the same creator (eva + DPO, a programmatic arithmetic mutator, fixed seeds) on
fresh copies of the same solver (hf), judge (reward model) and trainer:
- system: hub, solver, judge and trainer as agents over real sockets and the SQLite ledger;
- local: a LocalLink with AgentLink's interface runs every submitted task at once on the workers
  and hands published adapters straight to the solver (no sockets, no ledger, no polling).
Figures:
- bus_overhead = system wall time / local wall time (target <= 1.10);
- weight_sync_fraction = (publish + fetch-and-load time per version) / mean training step;
- async_speedup: not measured yet - the creator runs rounds one after another, so there is no
  overlap of generation and training to measure (max_staleness >= 1 is enforced by the hub but
  unused); printed as null with the reason.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def add_operand(prompt, mutation, rng):
    from protocol.messages import Prompt

    numbers = [int(n) for n in re.findall(r"\d+", prompt.text)]
    extra = rng.randint(1, 9)
    return Prompt(prompt_id="tmp", text="What is " + " + ".join(map(str, [*numbers, extra])) + "?",
                  answer=str(sum(numbers) + extra))


class LocalLink:
    """AgentLink's interface in one process: a submitted task runs at once on the local workers."""

    def __init__(self) -> None:
        self.hub_policy_version = 0
        self.announcements: queue.Queue = queue.Queue()
        self.config = SimpleNamespace(name="local")
        self.workers: dict[str, object] = {}
        self.results: dict[str, object] = {}

    def submit(self, tasks: list) -> list[str]:
        from protocol.messages import TASK_KIND_OF, Assign

        ids = []
        for task in tasks:
            task_id = os.urandom(6).hex()
            ids.append(task_id)
            self.workers[TASK_KIND_OF[task.kind]](Assign(task_id=task_id, attempt=1, lease_s=1, deadline_unix_s=0,
                                                         task=task))
        return ids

    def complete(self, assign, result) -> None:
        from protocol.messages import TaskInfo

        self.results[assign.task_id] = TaskInfo(task_id=assign.task_id, state="done", attempt=1, result=result)

    def fail(self, assign, reason: str, retryable: bool = True) -> None:
        from protocol.messages import TaskInfo

        self.results[assign.task_id] = TaskInfo(task_id=assign.task_id, state="dead", attempt=1, reason=reason)

    def query(self, task_ids: list[str]) -> list:
        return [self.results[t] for t in task_ids]


def make_workers(link, models, out: Path, data_endpoint):
    from agents.backends.hf import HFGenerator
    from agents.backends.scoring import RewardModelScorer
    from agents.judge import Judge
    from agents.solver import Solver
    from agents.trainer_agent import TrainerAgent
    from trainer.config import TrainConfig

    config = TrainConfig(algo="dpo", model=str(models.policy), data="-", out=str(out), batch_size=8, lr=1e-3,
                         lora={"r": 8, "alpha": 16}, max_length=96, max_prompt_length=48)
    solver = Solver(link["solver"], HFGenerator(str(models.policy)), data_endpoint)
    judge = Judge(link["judge"], RewardModelScorer(str(models.reward)))
    trainer = TrainerAgent(link["trainer"], config, data_endpoint or "inproc://unused")
    return solver, judge, trainer


def creator_config():
    from agents.creator import CreatorConfig

    return CreatorConfig(algo="dpo", samples_per_prompt=4, max_new_tokens=12, sample_fraction=0.5,
                         rewrites_per_prompt=2, train_groups=16, prompts_per_task=4, poll_s=0.02, seed=0)


def seeds(n: int):
    from protocol.messages import Prompt

    return [Prompt(prompt_id=f"seed{i}", text=f"What is {i + 3} + {2 * i + 5}?", answer=str(3 * i + 8))
            for i in range(n)]


def run_local(models, tmp: Path, args) -> dict:
    from peft import get_peft_model_state_dict

    from agents.creator import Creator

    link = LocalLink()
    solver, judge, trainer = make_workers({"solver": link, "judge": link, "trainer": link}, models, tmp / "local", None)
    link.workers = {"generate": solver.solve, "judge": judge.judge, "train": trainer.train}
    lora = trainer.config.lora
    adapter = {"r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora.target_modules}

    def publish(version: int) -> bool:  # straight into the solver's model: no bus
        solver.generator.load_policy(version, adapter, get_peft_model_state_dict(trainer.recipe.model))
        return True

    trainer.publish = publish
    creator = Creator(link, creator_config(), seeds(args.prompts), mutator=add_operand)
    started = time.perf_counter()
    reports = creator.run(args.rounds)
    return {"seconds": time.perf_counter() - started, "versions": [r.policy_version for r in reports]}


def run_system(models, tmp: Path, args) -> dict:
    import zmq

    from agents.agent import AgentLink, LinkConfig
    from agents.creator import Creator
    from agents.hub import Hub, HubConfig

    ctx = zmq.Context()
    hub = Hub(HubConfig(run_dir=str(tmp / "system"), heartbeat_interval_s=0.5, lease_s=300), ctx)
    hub.start()
    stop = threading.Event()
    threading.Thread(target=hub.run, args=(stop,), daemon=True).start()
    links = {}
    for name, role, kinds in [("solver-0", "solver", ["generate"]), ("judge-0", "judge", ["judge"]),
                              ("trainer-0", "trainer", ["train"]), ("creator-0", "creator", [])]:
        links[role] = AgentLink(LinkConfig(name=name, role=role, task_kinds=kinds, control=hub.endpoints["control"],
                                           heartbeat_interval_s=0.5), ctx)
        links[role].start()
    solver, judge, trainer = make_workers(links, models, tmp / "system-trainer", hub.endpoints["data"])
    for worker in (solver, judge, trainer):
        threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    creator = Creator(links["creator"], creator_config(), seeds(args.prompts), mutator=add_operand)
    try:
        started = time.perf_counter()
        reports = creator.run(args.rounds)
        seconds = time.perf_counter() - started
        step = statistics.mean(trainer.recipe.step_seconds)
        sync = statistics.mean(trainer.publish_seconds) + (statistics.mean(solver.sync_seconds)
                                                           if solver.sync_seconds else 0.0)
        return {"seconds": seconds, "versions": [r.policy_version for r in reports], "step_s": step, "sync_s": sync}
    finally:
        stop.set()
        time.sleep(0.5)
        for link in links.values():
            link.stop()
        hub.close()
        ctx.destroy(linger=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="eva rounds (default 2)")
    parser.add_argument("--prompts", type=int, default=16, help="seed prompts (default 16)")
    parser.add_argument("--hidden", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    args = parser.parse_args(argv)

    from launch.logs import configure_logging
    from trainer.tiny import save_tiny_models

    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        models = save_tiny_models(Path(tmp) / "models", hidden_size=args.hidden, num_layers=args.layers,
                                  intermediate_size=args.hidden * 2)
        local = run_local(models, Path(tmp), args)
        system = run_system(models, Path(tmp), args)
    assert local["versions"] == system["versions"], (local, system)  # the same work was done
    result = {
        "bench": "loop",
        "async_speedup": None,
        "async_speedup_why": "not measured: the creator does not overlap generation with training yet",
        "bus_overhead": round(system["seconds"] / local["seconds"], 3),
        "weight_sync_fraction": round(system["sync_s"] / system["step_s"], 3),
        "system_s": round(system["seconds"], 2), "local_s": round(local["seconds"], 2),
        "sync_ms": round(system["sync_s"] * 1e3, 1), "train_step_ms": round(system["step_s"] * 1e3, 1),
        "rounds": args.rounds, "prompts": args.prompts, "hidden": args.hidden, "layers": args.layers,
    }
    print(f"bus overhead: system {result['system_s']} s vs one process {result['local_s']} s -> "
          f"{result['bus_overhead']}x (target <= 1.10)")
    print(f"weight sync: {result['sync_ms']} ms per version vs {result['train_step_ms']} ms per training step -> "
          f"{result['weight_sync_fraction']} (target <= 0.05)")
    print("async speedup: not measured (the creator does not overlap generation with training yet)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
