"""The live loop end to end: hub, creator, solver, judge and trainer over real sockets and SQLite with
tiny real models (agents as threads here; tests/launch/test_up.py runs them as processes)."""

import re
import sqlite3
import threading

import msgpack
import pytest

from agents.backends.hf import HFGenerator
from agents.backends.scoring import AnswerVerifier, RewardModelScorer
from agents.creator import Creator, CreatorConfig
from agents.judge import Judge
from agents.ledger_query import LedgerReader
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


def seeds(n=6):
    return [Prompt(prompt_id=f"seed{i}", text=f"What is {i + 3} + {2 * i + 5}?", answer=str(3 * i + 8),
                   demonstration=str(3 * i + 8)) for i in range(n)]


def held(n=3):
    """Held-out prompts: none is a seed (the creator refuses sets that share a prompt)."""
    return [Prompt(prompt_id=f"held{i}", text=f"What is {i + 50} + {i + 7}?", answer=str(2 * i + 57)) for i in range(n)]


class World:
    """A whole run in one process: every agent on its own thread, talking through the hub."""

    def __init__(self, tmp_path, tiny_models, algo, scorer=None, trainer=None, **hub):
        self.r = Running(tmp_path, lease_s=120, heartbeat_interval_s=0.2, liveness=50, **hub)
        self.stop = threading.Event()
        self.solver = Solver(self.link("solver-0", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)))
        workers = [self.solver]
        if scorer is not None:
            workers.append(Judge(self.link("judge-0", "judge", ["judge"]), scorer))
        settings = {"batch_size": 8, "lr": 1e-3, "lora": {"r": 4, "alpha": 8}, "max_length": 64,
                    "max_prompt_length": 32, **(trainer or {})}
        config = TrainConfig(algo=algo, model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                             **settings)
        self.trainer = TrainerAgent(self.link("trainer-0", "trainer", ["train"]), config)
        workers.append(self.trainer)
        for worker in workers:
            threading.Thread(target=worker.run, args=(self.stop,), daemon=True).start()

    def link(self, name, role, kinds=()):
        return self.r.link(name, role, kinds)

    def db(self):
        return sqlite3.connect(self.r.hub.run_dir / "ledger.sqlite")

    def close(self):
        self.stop.set()
        self.r.close()


@pytest.fixture
def world(request, tmp_path, tiny_models):
    algo, scorer, *hub = request.param
    w = World(tmp_path, tiny_models, algo, scorer(tiny_models) if scorer else None, **(hub[0] if hub else {}))
    yield w
    w.close()


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_eva_dpo_two_rounds(world):
    creator_link = world.link("creator-0", "creator")
    held_out = held(3)
    creator = Creator(creator_link, CreatorConfig(
        algo="dpo", samples_per_prompt=3, max_new_tokens=6, sample_fraction=0.5, rewrites_per_prompt=2,
        train_groups=8, seed=0), seeds(), mutator=add_operand, eval_prompts=held_out)
    reports = creator.run(rounds=2)

    assert [rep.policy_version for rep in reports] == [1, 2]  # the policy advanced each round
    assert world.solver.generator.version >= 1  # the solver switched to a published policy
    db = world.db()
    evolved = db.execute("SELECT prompt_id, parent_id, mutation FROM prompts WHERE source = 'evolved'").fetchall()
    assert evolved and all(parent and mutation for _, parent, mutation in evolved)
    known = {row[0] for row in db.execute("SELECT prompt_id FROM prompts")}
    assert all(parent in known for _, parent, _ in evolved)  # lineage points at recorded prompts
    assert {0, 1} <= {row[0] for row in db.execute("SELECT DISTINCT policy_version FROM samples")}
    assert db.execute("SELECT COUNT(*) FROM policies").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'dead'").fetchone()[0] == 0
    db.close()
    status = creator_link.status()
    assert {"reward_mean.v0", "reward_mean.v1"} <= set(status.metrics)  # reward by round, in status
    assert {"eval_reward.v0", "eval_reward.v1", "eval_reward.v2"} <= set(status.metrics)  # held-out, per version
    assert set(creator.eval_rewards) == {0, 1, 2}
    db = world.db()
    trained_on = set()
    for (blob,) in db.execute("SELECT payload FROM tasks WHERE kind = 'train'"):
        trained_on |= {g["prompt"]["prompt_id"] for g in msgpack.unpackb(blob)["groups"]}
    db.close()
    assert trained_on and not trained_on & {p.prompt_id for p in held_out}  # never trained on


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_judging_starts_while_generation_still_runs(world):
    """solve() hands each generation task's answers to the judges as soon as that task is done."""
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="dpo", samples_per_prompt=2, max_new_tokens=6, prompts_per_task=1, seed=0), seeds(6))
    groups = creator.solve(seeds(6))
    assert [g.prompt.prompt_id for g in groups] == [f"seed{i}" for i in range(6)]  # in prompt order
    assert all(len(g.samples) == 2 and [v.sample_id for v in g.verdicts] == [s.sample_id for s in g.samples]
               for g in groups)  # every answer judged, verdicts beside their answers
    db = world.db()
    rows = db.execute("SELECT kind, created, updated FROM tasks WHERE state = 'done'").fetchall()
    db.close()
    generated = [updated for kind, _, updated in rows if kind == "generate"]
    judged = sorted(created for kind, created, _ in rows if kind == "judge")
    assert len(generated) == len(judged) == 6  # one judge task per generation task, as before
    assert judged[0] < max(generated)  # the first judge task was queued before the last generation finished


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_a_reached_target_stops_the_run(world):
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="dpo", evolve=False, samples_per_prompt=2, max_new_tokens=4, train_groups=8,
        target_eval_reward=-1e9), seeds(), eval_prompts=held(2))
    assert len(creator.run(rounds=5)) == 1


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_the_final_policy_is_evaluated_whatever_eval_every(world):
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="dpo", evolve=False, samples_per_prompt=2, max_new_tokens=4, train_groups=8, eval_every=5),
        seeds(), eval_prompts=held(2))
    [report] = creator.run(rounds=1)
    assert set(creator.eval_rewards) == {0, report.policy_version} == {0, 1}


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)), {"max_staleness": 1})],
                         indirect=True)
def test_max_staleness_one_overlaps_generation_with_training(world):
    """Round t+1 is generated by the policy round t started from, while round t trains."""
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="dpo", evolve=False, samples_per_prompt=3, max_new_tokens=6, train_groups=8, max_staleness=1),
        seeds(), eval_prompts=held(2))
    reports = creator.run(rounds=3)
    assert [rep.policy_version for rep in reports] == [1, 2, 3]  # all trained, in order, none left behind
    db = world.db()
    rows = db.execute("SELECT kind, payload, created, updated FROM tasks ORDER BY created").fetchall()
    db.close()
    trains = [(msgpack.unpackb(blob), created, updated) for kind, blob, created, updated in rows if kind == "train"]
    versions = {task["round"]: {s["policy_version"] for g in task["groups"] for s in g["samples"]}
                for task, _, _ in trains}
    assert sorted(versions) == [1, 2, 3]
    # round r trains on top of v(r-1): its answers come from v(r-1) or, overlapped, from v(r-2) - never older
    assert all(r - 2 <= v <= r - 1 for r, vs in versions.items() for v in vs), versions
    assert 0 in versions[2]  # round 2 was generated by v0 while round 1 trained
    _, train1_created, train1_done = trains[0]
    assert any(kind == "generate" and train1_created < created < train1_done for kind, _, created, _ in rows)
    assert set(creator.eval_rewards) == {0, 1, 2, 3}  # every version evaluated (eval_every 1)


@pytest.mark.parametrize("world", [("gsil", None)], indirect=True)
def test_gsil_online_two_iterations(world):
    """Demonstrations, one self-generated answer per prompt, no judge; each iteration a new version."""
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="gsil", evolve=False, samples_per_prompt=1, max_new_tokens=6, train_groups=8), seeds())
    reports = creator.run(rounds=2)
    assert [(rep.policy_version, rep.examples) for rep in reports] == [(1, 6), (2, 6)]
    assert {"real_term", "generated_term", "r_real", "r_generated"} <= set(reports[-1].metrics)
    db = world.db()
    assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 0  # nobody judged
    db.close()


@pytest.mark.parametrize("world", [("cut", lambda m: AnswerVerifier())], indirect=True)
def test_cut_online_with_written_judgments(world):
    creator = Creator(world.link("creator-0", "creator"), CreatorConfig(
        algo="cut", evolve=False, samples_per_prompt=2, max_new_tokens=6, train_groups=8), seeds())
    [report] = creator.run(rounds=1)
    assert report.policy_version == 1 and report.examples == 12  # every answer, with its judgment
    assert {"l1", "l2", "flagged_fraction"} <= set(report.metrics)
    with LedgerReader.for_run(world.r.hub.run_dir) as ledger:
        judgments = [v.judgment for task in ledger.tasks("judge") for v in ledger.result(task.task_id).verdicts]
    assert len(judgments) == 12 and all(j and (j == "Correct." or j.startswith("Incorrect: the answer is"))
                                        for j in judgments)


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_a_restarted_creator_resumes_from_its_journal(world, tmp_path):
    """The creator dies in the middle of round 2; a new one on the same journal finishes the run: round 1
    is not trained again, round 2 is redone, and nothing is trained on twice."""
    config = CreatorConfig(algo="dpo", samples_per_prompt=3, max_new_tokens=6, sample_fraction=0.5,
                           rewrites_per_prompt=2, train_groups=8, seed=0)
    journal = tmp_path / "creator" / "creator-0.json"
    first = Creator(world.link("creator-0", "creator"), config, seeds(), mutator=add_operand, state_path=journal,
                    eval_prompts=held(2))
    calls = {"n": 0}
    real_evolve = first.evolve

    def evolve_then_die(parents):
        calls["n"] += 1
        if calls["n"] == 2:  # round 2, after its pool was generated and judged
            raise KeyboardInterrupt("killed")
        return real_evolve(parents)

    first.evolve = evolve_then_die
    with pytest.raises(KeyboardInterrupt):
        first.run(rounds=2)
    pool_after_round_1 = len(first.pool)

    second = Creator(world.link("creator-1", "creator"), config, seeds(), mutator=add_operand, state_path=journal,
                     eval_prompts=held(2))
    assert (second.round, len(second.pool), second.policy_version) == (1, pool_after_round_1, 1)
    assert set(second.eval_rewards) == {0, 1}  # what the first creator evaluated is kept
    reports = second.run(rounds=2)
    assert [rep.policy_version for rep in reports] == [2] and second.round == 2
    db = world.db()
    rows = db.execute("SELECT payload, state FROM tasks WHERE kind = 'train'").fetchall()
    db.close()
    assert [state for _, state in rows] == ["done", "done"]  # one train task per round, none repeated
    trained = [s["sample_id"] for blob, _ in rows for g in msgpack.unpackb(blob)["groups"] for s in g["samples"]]
    assert len(trained) == len(set(trained))
    assert set(second.eval_rewards) == {0, 1, 2}


@pytest.mark.parametrize("world", [("dpo", lambda m: RewardModelScorer(str(m.reward)))], indirect=True)
def test_a_train_task_is_queued_once_when_its_reply_is_lost_or_its_creator_dies(world, tmp_path):
    """Round 1: the hub queues the train task but its reply is lost; the creator sends it again with the same key.
    Round 2: the hub queues it, then the creator dies before its journal records it; the creator that takes
    over redoes round 2 and gets that task back. Without idempotent submits each would train a round twice."""
    config = CreatorConfig(algo="dpo", samples_per_prompt=3, max_new_tokens=6, evolve=False, train_groups=8, seed=0)
    journal = tmp_path / "creator" / "creator-0.json"
    first = Creator(world.link("creator-0", "creator"), config, seeds(), state_path=journal)
    real_submit, lost = first.link.submit, []

    def submit_then_lose_the_reply(tasks, timeout_s=30.0, key=None):
        ids = real_submit(tasks, timeout_s=timeout_s, key=key)
        if tasks[0].kind == "train_task":
            lost.append(ids)
            if tasks[0].round == 1 and len(lost) == 1:
                raise TimeoutError("reply lost")
            if tasks[0].round == 2:
                raise KeyboardInterrupt("killed before the journal recorded the task")
        return ids

    first.link.submit = submit_then_lose_the_reply
    with pytest.raises(KeyboardInterrupt):
        first.run(rounds=2)
    assert lost[0] == lost[1] and len(lost) == 3  # round 1 sent twice, one task
    second = Creator(world.link("creator-1", "creator"), config, seeds(), state_path=journal)
    assert second.round == 1 and second.journal_id == first.journal_id
    reports = second.run(rounds=2)
    assert [r.policy_version for r in reports] == [2] and reports[0].examples > 0
    db = world.db()
    rows = db.execute("SELECT task_id, state FROM tasks WHERE kind = 'train' ORDER BY created").fetchall()
    db.close()
    assert rows == [(lost[0][0], "done"), (lost[2][0], "done")]  # the task queued before the death was trained
