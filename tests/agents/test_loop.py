"""eva + DPO for two rounds: hub, creator, solver, judge and trainer over real sockets and SQLite,
with tiny real models (agents as threads here; as processes once `selfplay up` lands)."""

import re
import sqlite3
import threading

from agents.agent import AgentLink, LinkConfig
from agents.backends.hf import HFGenerator
from agents.backends.scoring import RewardModelScorer
from agents.creator import Creator, CreatorConfig
from agents.judge import Judge
from agents.solver import Solver
from agents.trainer_agent import TrainerAgent
from protocol.messages import Prompt
from tests.agents.test_hub import Running
from trainer.config import TrainConfig


def add_operand(prompt, mutation, rng):
    """A tiny programmatic mutator: every mutation kind adds one more operand (answers stay exact)."""
    numbers = [int(n) for n in re.findall(r"\d+", prompt.text)]
    extra = rng.randint(1, 9)
    text = "What is " + " + ".join(map(str, [*numbers, extra])) + "?"
    return Prompt(prompt_id="tmp", text=text, answer=str(sum(numbers) + extra))


def test_eva_dpo_two_rounds(tmp_path, tiny_models):
    r = Running(tmp_path, lease_s=120, heartbeat_interval_s=0.2, liveness=50)
    stop = threading.Event()

    def link(name, role, kinds=()):
        agent = AgentLink(LinkConfig(name=name, role=role, task_kinds=list(kinds), control=r.hub.endpoints["control"]),
                          r.ctx)
        r.links.append(agent)
        agent.start()
        return agent

    try:
        solver = Solver(link("solver-0", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)),
                        r.hub.endpoints["data"])
        judge = Judge(link("judge-0", "judge", ["judge"]), RewardModelScorer(str(tiny_models.reward)))
        config = TrainConfig(algo="dpo", model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                             batch_size=8, lr=1e-3, lora={"r": 4, "alpha": 8}, max_length=64, max_prompt_length=32)
        trainer = TrainerAgent(link("trainer-0", "trainer", ["train"]), config, r.hub.endpoints["data"])
        for worker in (solver, judge, trainer):
            threading.Thread(target=worker.run, args=(stop,), daemon=True).start()

        seeds = [Prompt(prompt_id=f"seed{i}", text=f"What is {i + 3} + {2 * i + 5}?", answer=str(3 * i + 8))
                 for i in range(6)]
        creator = Creator(link("creator-0", "creator"), CreatorConfig(
            algo="dpo", samples_per_prompt=3, max_new_tokens=6, sample_fraction=0.5, rewrites_per_prompt=2,
            train_groups=8, seed=0), seeds, mutator=add_operand)
        reports = creator.run(rounds=2)

        assert [rep.policy_version for rep in reports] == [1, 2]  # the policy advanced each round
        assert solver.generator.version >= 1  # the solver switched to a published policy
        db = sqlite3.connect(r.hub.run_dir / "ledger.sqlite")
        evolved = db.execute("SELECT prompt_id, parent_id, mutation FROM prompts WHERE source = 'evolved'").fetchall()
        assert evolved and all(parent and mutation for _, parent, mutation in evolved)
        known = {row[0] for row in db.execute("SELECT prompt_id FROM prompts")}
        assert all(parent in known for _, parent, _ in evolved)  # lineage points at recorded prompts
        versions = {row[0] for row in db.execute("SELECT DISTINCT policy_version FROM samples")}
        assert {0, 1} <= versions  # round 2 was answered by the round-1 policy
        assert db.execute("SELECT COUNT(*) FROM policies").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'dead'").fetchone()[0] == 0
        db.close()
    finally:
        stop.set()
        r.close()
