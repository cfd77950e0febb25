"""Promotion end to end (hub, creator, solver, judge and trainer on threads, real sockets, SQLite and tiny
models): a version that a trainer setting wrecks is rejected on validation, never generates training data,
and the run goes on from the best version's adapter and optimizer."""

import math

import pytest
import torch
from peft import get_peft_model_state_dict

from agents.backends.hf import HFGenerator
from agents.backends.scoring import AnswerVerifier, RewardModelScorer
from agents.creator import Creator, CreatorConfig
from agents.ledger_query import LedgerReader
from launch.status import format_status
from protocol.messages import PolicyFetch, Prompt, SamplingParams
from tests.agents.test_loop import World, seeds

MAX_NEW_TOKENS = 6


def known_to_the_start(tiny_models, n=16):
    """Validation and test prompts whose expected answer is the starting policy's own greedy answer: the start
    scores 1 on them, and a policy that forgot what it knew scores about 0 (a stand-in for a task it can do)."""
    prompts = [Prompt(prompt_id=f"k{i}", text=f"Say {i} then {2 * i + 1}.", answer="?") for i in range(n)]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    answers = HFGenerator(str(tiny_models.policy)).generate(prompts, sampling)
    return [p.model_copy(update={"answer": g.text}) for p, [g] in zip(prompts, answers, strict=True)
            if g.text.strip()]


class VerifiedOrRewarded:
    """The judge: prompts with an answer are checked exactly (validation and test), the others scored by the tiny
    reward model (training prompts: every pair differs, so every round trains)."""

    def __init__(self, tiny_models):
        self.verifier, self.reward = AnswerVerifier(), RewardModelScorer(str(tiny_models.reward))

    def __call__(self, prompts, responses, want_judgment):
        if all(p.answer is not None for p in prompts):
            return self.verifier(prompts, responses, want_judgment)
        assert not any(p.answer is not None for p in prompts)  # the creator never mixes the sets in a task
        return self.reward(prompts, responses, want_judgment)


def test_a_wrecked_version_is_not_served_and_the_run_goes_on_from_the_best(tmp_path, tiny_models):
    known = known_to_the_start(tiny_models)
    validation, test = known[::2], known[1::2]
    world = World(tmp_path, tiny_models, "dpo", VerifiedOrRewarded(tiny_models), trainer={"lr": 10.0})  # lr wrecks it
    try:
        config = CreatorConfig(algo="dpo", samples_per_prompt=2, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                               evolve=False, train_groups=8, seed=0, promotion=True, promotion_tolerance_se=2.0)
        training = [p.model_copy(update={"answer": None}) for p in seeds(8)]  # scored by the reward model
        creator = Creator(world.link("creator-0", "creator"), config, training, eval_prompts=test,
                          validation_prompts=validation)
        reports = creator.run(rounds=2)
        # each round's version was rejected and replaced by the best (v0's weights) as the next version
        assert [r.policy_version for r in reports] == [1, 3]
        state = creator.promotion
        assert [(r["rejected"], r["restored"], r["version"]) for r in state.rollbacks] == [(1, 0, 2), (3, 2, 4)]
        assert creator.policy_version == 4 and state.best == 4 and state.pending is None
        assert state.validation[0].mean == 1.0 and state.validation[1].mean < 0.5 and state.validation[3].mean < 0.5
        assert creator.eval_rewards[4] == creator.eval_rewards[0] == 1.0  # the run ends on its best: the start's

        with LedgerReader.for_run(world.r.hub.run_dir) as ledger:
            # no rejected version ever answered a training prompt; round 2 generated with the restored v2
            by_version = ledger.reward_by_version("train")
            assert set(by_version) == {0, 2}
            assert set(ledger.reward_by_version("validation")) == {0, 1, 3}  # v2 and v4 copy a validated version
            assert ledger.restores() == {2: 0, 4: 2}
            keeps = [(t.round, t.best, t.restore) for t in ledger.train_tasks()]
        assert keeps == [(1, 0, None), (1, 0, 0), (2, 2, None), (2, 2, 2)]  # the best is named in every train task

        # the served version holds exactly the starting adapter, and the trainer went on from its optimizer state
        fetcher = world.r.client("fetcher", "data")
        world.r.client("fetcher").ready("solver")
        fetched = {}
        for version in (2, 4):
            fetcher.send(PolicyFetch(version=version))
            fetched[version] = fetcher.recv().tensors
        start = get_peft_model_state_dict(world.trainer.recipe.model)  # the trainer holds v4 = v0's weights now
        assert all(torch.equal(fetched[4][k], start[k]) and torch.equal(fetched[2][k], start[k]) for k in start)
        assert all(not torch.any(start[k]) for k in start if "lora_B" in k)  # a fresh LoRA's B is zero: v0
        assert not world.trainer.recipe.optimizer.state  # v0's optimizer: no step taken yet

        status = format_status(world.link("observer-0", "observer").status())
        assert "validation (promotion decides on it)" in status
        assert "v2    = v0 again" in status and "v4    = v2 again" in status
    finally:
        world.close()



def test_a_rollback_a_crash_interrupted_is_done_before_the_next_round(tmp_path, tiny_models):
    """The creator rejects v1 and dies before the rollback; the one that takes over from its journal rolls back
    first: no round ever generates with v1."""
    known = known_to_the_start(tiny_models)
    world = World(tmp_path, tiny_models, "dpo", VerifiedOrRewarded(tiny_models), trainer={"lr": 10.0})
    try:
        config = CreatorConfig(algo="dpo", samples_per_prompt=2, max_new_tokens=MAX_NEW_TOKENS, evolve=False,
                               train_groups=8, seed=0, promotion=True)
        training = [p.model_copy(update={"answer": None}) for p in seeds(8)]
        journal = tmp_path / "creator" / "creator-0.json"
        first = Creator(world.link("creator-0", "creator"), config, training, validation_prompts=known,
                        state_path=journal)

        def killed(why):
            raise KeyboardInterrupt("killed between the rejection and the rollback")

        first.roll_back = killed
        with pytest.raises(KeyboardInterrupt):
            first.run(rounds=2)
        assert first.promotion.pending == 1 and first.policy_version == 1

        second = Creator(world.link("creator-1", "creator"), config, training, validation_prompts=known,
                         state_path=journal)
        assert second.promotion.pending == 1  # the decision was journaled before the crash
        second.run(rounds=2)
        rollbacks = second.promotion.rollbacks
        assert (rollbacks[0]["rejected"], rollbacks[0]["restored"], rollbacks[0]["version"]) == (1, 0, 2)
        assert all(r["restored"] == 2 for r in rollbacks[1:])  # v3 then was rejected, or the run ended on v2
        with LedgerReader.for_run(world.r.hub.run_dir) as ledger:
            assert set(ledger.reward_by_version("train")) == {0, 2}  # v1 and v3 never generated training data
    finally:
        world.close()


def test_a_run_ends_on_its_best_version(tmp_path, tiny_models):
    """An infinite tolerance rejects nothing: the wrecked v1 is served, but the run ends on v0's weights."""
    known = known_to_the_start(tiny_models)
    world = World(tmp_path, tiny_models, "dpo", VerifiedOrRewarded(tiny_models), trainer={"lr": 10.0})
    try:
        config = CreatorConfig(algo="dpo", samples_per_prompt=2, max_new_tokens=MAX_NEW_TOKENS, evolve=False,
                               train_groups=8, seed=0, promotion=True, promotion_tolerance_se=math.inf)
        training = [p.model_copy(update={"answer": None}) for p in seeds(8)]
        creator = Creator(world.link("creator-0", "creator"), config, training, validation_prompts=known[::2],
                          eval_prompts=known[1::2])
        creator.run(rounds=1)
        state = creator.promotion
        assert state.validation[1].mean < state.validation[0].mean  # worse, but within the tolerance: served
        assert [(r["rejected"], r["restored"], r["version"], r["why"]) for r in state.rollbacks] == [
            (None, 0, 2, "final")]
        assert creator.policy_version == 2 and creator.eval_rewards[2] == creator.eval_rewards[0] == 1.0
        with LedgerReader.for_run(world.r.hub.run_dir) as ledger:
            assert ledger.restores() == {2: 0}
    finally:
        world.close()
