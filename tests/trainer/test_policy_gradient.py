"""GRPO and RLOO: advantages and the clipped objective against hand-worked numbers, rows from judged groups,
and the recipe learning from rewards (with and without the sampler's log-probs)."""

import math

import pytest
import torch
from transformers import AutoTokenizer

from protocol.messages import JudgedGroup, Prompt, Sample, Verdict
from tests.trainer.datasets import rows as dataset_rows
from trainer.config import TrainConfig
from trainer.data import DataError, Renderer, collate
from trainer.logps import sequence_logps
from trainer.methods import build_examples, check_rows, get_method, rows_from_groups
from trainer.methods.losses import policy_gradient_loss
from trainer.methods.policy_gradient import grpo_advantages, rloo_advantages
from trainer.recipe import Recipe

T = torch.tensor
LOG = math.log


# ---------------------------------------------------------------------- advantages
def test_grpo_advantages_are_group_normalized_and_dr_grpo_only_centers():
    rewards = T([1.0, 0.0, 0.0, 1.0])
    std = math.sqrt(4 * 0.25 / 3)  # unbiased: sum of squared deviations / (n - 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)]
    assert grpo_advantages(rewards).tolist() == pytest.approx(expected)
    assert grpo_advantages(rewards, scale=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert grpo_advantages(T([0.7])).tolist() == [0.0]  # one answer: no baseline, no signal


def test_rloo_baseline_leaves_the_answer_out():
    # r = (1, 0, 0): A_0 = 1 - (0 + 0) / 2, A_1 = 0 - (1 + 0) / 2, A_2 likewise
    assert rloo_advantages(T([1.0, 0.0, 0.0])).tolist() == pytest.approx([1.0, -0.5, -0.5])
    rewards = T([0.2, 0.9, 0.4, 0.4])
    assert rloo_advantages(rewards).tolist() == pytest.approx((4 / 3 * (rewards - rewards.mean())).tolist())
    assert rloo_advantages(T([1.0])).tolist() == [0.0]


# ---------------------------------------------------------------------- the objective
def test_ratio_is_clipped_only_where_it_would_push_further():
    logps, old = torch.log(T([[0.5, 0.25]])), torch.log(T([[0.25, 0.25]]))  # ratios 2 and 1
    mask = T([[1.0, 1.0]])
    up = policy_gradient_loss(logps, old, T([1.0]), mask)  # A > 0: min(2 A, 1.2 A) = 1.2, then 1
    assert up.loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert up.metrics["clip_fraction"].item() == pytest.approx(0.5)
    down = policy_gradient_loss(logps, old, T([-1.0]), mask)  # A < 0: min(-2, -1.2) = -2: not clipped
    assert down.loss.item() == pytest.approx((2.0 + 1.0) / 2)
    assert down.metrics["clip_fraction"].item() == 0.0
    higher = policy_gradient_loss(logps, old, T([1.0]), mask, epsilon_high=0.28)  # DAPO's clip-higher
    assert higher.loss.item() == pytest.approx(-(1.28 + 1.0) / 2)


def test_kl_is_the_k3_estimate_against_the_reference():
    logps, ref = torch.log(T([[0.5, 0.25]])), torch.log(T([[0.25, 0.25]]))
    out = policy_gradient_loss(logps, logps.detach(), T([0.0]), T([[1.0, 1.0]]), ref_token_logps=ref, kl_beta=0.1)
    k3 = 0.5 - LOG(0.5) - 1  # exp(d) - d - 1 with d = log(0.25 / 0.5)
    assert out.metrics["kl"].item() == pytest.approx(k3 / 2)
    assert out.loss.item() == pytest.approx(0.1 * k3 / 2)
    with pytest.raises(ValueError, match="ref_token_logps"):
        policy_gradient_loss(logps, logps, T([0.0]), T([[1.0, 1.0]]), kl_beta=0.1)


def test_aggregations_weigh_tokens_as_documented():
    logps = torch.log(T([[0.5, 0.25], [0.5, 0.9]]))
    old = torch.log(T([[0.25, 0.25], [0.5, 0.1]]))  # row 0: ratios 2, 1; row 1: ratio 1 (its 2nd token is padding)
    mask, adv = T([[1.0, 1.0], [1.0, 0.0]]), T([1.0, 1.0])
    per_token_sums = [-(1.2 + 1.0), -1.0]
    loss = {kind: policy_gradient_loss(logps, old, adv, mask, loss_type=kind, max_tokens=4).loss.item()
            for kind in ("grpo", "dapo", "dr_grpo", "reinforce")}
    assert loss["grpo"] == pytest.approx((per_token_sums[0] / 2 + per_token_sums[1] / 1) / 2)
    assert loss["dapo"] == pytest.approx(sum(per_token_sums) / 3)
    assert loss["dr_grpo"] == pytest.approx(sum(s / 4 for s in per_token_sums) / 2)
    assert loss["reinforce"] == pytest.approx(sum(per_token_sums) / 2)


def test_importance_weights_scale_the_surrogate_not_the_kl():
    logps = torch.log(T([[0.5, 0.25]]))
    old = logps.detach()
    out = policy_gradient_loss(logps, old, T([1.0]), T([[1.0, 1.0]]), weights=T([[0.5, 2.0]]))
    assert out.loss.item() == pytest.approx(-(0.5 + 2.0) / 2)
    assert out.metrics["importance_weight"].item() == pytest.approx(1.25)


def test_on_policy_gradient_is_reinforce_with_the_group_baseline():
    logps = torch.log(T([[0.5, 0.25, 0.9], [0.3, 0.6, 0.2]])).requires_grad_()
    adv = T([0.8, -0.8])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    policy_gradient_loss(logps, logps.detach(), adv, mask).loss.backward()
    # d/d logp_t of mean_i(-A_i * mean_t ratio_t) at ratio 1 = -A_i / |y_i| / B
    expected = -(adv[:, None] / mask.sum(-1, keepdim=True)) * mask / 2
    torch.testing.assert_close(logps.grad, expected)


# ---------------------------------------------------------------------- rows
def group(scores, pid="p1", ids=True):
    prompt = Prompt(prompt_id=pid, text="What is 2 + 3?", source="seed")
    samples = [Sample(sample_id=f"t.1.0.{i}", prompt_id=pid, text=f"{i}", policy_version=1,
                      token_ids=[10 + i, 2] if ids else [], logprobs=[-0.5, -0.1] if ids else [])
               for i in range(len(scores))]
    verdicts = [Verdict(sample_id=s.sample_id, score=sc) for s, sc in zip(samples, scores, strict=True)]
    return JudgedGroup(prompt=prompt, samples=samples, verdicts=verdicts)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_a_group_becomes_one_rewarded_row_per_answer_and_ties_none(algo):
    rows = rows_from_groups([group([1.0, 0.0, 0.5]), group([1.0, 1.0], pid="tie")], algo)
    assert [(r["completion"], r["reward"], r["prompt_id"]) for r in rows] == [("0", 1.0, "p1"), ("1", 0.0, "p1"),
                                                                              ("2", 0.5, "p1")]
    assert rows[0]["completion_ids"] == [10, 2] and rows[0]["logprobs"] == [-0.5, -0.1]
    check_rows(rows, algo, source="round", empty_responses=True)
    assert rows_from_groups([group([1.0])], algo) == []  # one answer: a tie with itself
    assert "completion_ids" not in rows_from_groups([group([1.0, 0.0], ids=False)], algo)[0]


def test_rows_are_checked_for_a_number_reward_and_matching_token_logprobs():
    with pytest.raises(DataError, match="row 0: 'reward' must be a finite number"):
        check_rows([{"prompt": "q", "completion": "a", "reward": "high"}], "grpo")
    with pytest.raises(DataError, match="row 0: 'reward' must be a finite number"):
        check_rows([{"prompt": "q", "completion": "a", "reward": float("nan")}], "grpo")
    with pytest.raises(DataError, match="'logprobs' needs 'completion_ids'"):
        check_rows([{"prompt": "q", "completion": "a", "reward": 1, "logprobs": [-0.1]}], "rloo")
    with pytest.raises(DataError, match="missing 'reward'"):
        check_rows([{"prompt": "q", "completion": "a"}], "grpo")


def test_examples_take_the_samplers_tokens_and_their_advantage_from_the_group(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models.policy)
    config = TrainConfig(algo="grpo", model="m", data="d", out="o")
    rows = [{"prompt": "What is 2 + 3?", "completion": "5", "reward": 1.0, "completion_ids": [7, 8, 9],
             "logprobs": [-0.1, -0.2, -0.3], "prompt_id": "a"},
            {"prompt": "What is 2 + 3?", "completion": "6", "reward": 0.0, "prompt_id": "a"},
            {"prompt": "What is 4 + 4?", "completion": "8", "reward": 0.5}]
    examples = build_examples(rows, config, Renderer(tok, 64, 32))
    seq = examples[0].sequences["policy"]
    assert [t for t, s in zip(seq.input_ids, seq.score_mask, strict=True) if s] == [7, 8, 9]
    assert examples[0].token_values["logprobs"] == [-0.1, -0.2, -0.3] and examples[1].token_values["logprobs"] == []
    std = math.sqrt(0.5)
    assert [e.values["advantage"] for e in examples] == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0])
    batch = collate(examples, tok.pad_token_id)
    assert torch.isnan(batch.token_values["logprobs"][1]).all()  # unknown: the step uses the round-start policy


# ---------------------------------------------------------------------- the recipe
def margins(recipe, rows):
    """log p(right) - log p(wrong) for each question of `rows` (right and wrong alternate)."""
    renderer = recipe.renderer
    batch = collate([recipe.method.example(i, r, recipe.config, renderer) for i, r in enumerate(rows)],
                    recipe.tokenizer.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(recipe.model, batch.input_ids, batch.attention_mask, batch.score_mask).logps
    return (logps[0::2] - logps[1::2]).tolist()


def make_config(tmp_path, tiny_models, algo, **overrides):
    from tests.trainer.datasets import write

    data = write(tmp_path / "data.jsonl", "rewarded", n=8)
    settings = {"algo": algo, "model": str(tiny_models.policy), "data": str(data), "out": str(tmp_path / "out"),
                "batch_size": 8, "max_steps": 8, "lr": 5e-3, "warmup_ratio": 0.0, "scheduler": "constant",
                "tensorboard": False, "max_length": 64, "max_prompt_length": 32, "lora": {"r": 4, "alpha": 8}}
    return TrainConfig.model_validate({**settings, **overrides})


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_training_on_rewards_moves_probability_to_the_rewarded_answers(tmp_path, tiny_models, algo):
    recipe = Recipe(make_config(tmp_path, tiny_models, algo, **{algo: {"kl_beta": 0.04}}))
    recipe.setup()
    rows = dataset_rows("rewarded", n=8)
    before = margins(recipe, rows)
    metrics = recipe.train()
    after = margins(recipe, rows)
    recipe.cleanup()
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert metrics["kl"] > 0 and 0 <= metrics["clip_fraction"] <= 1
    kinds = {kind for _, _, kind in recipe.logp_cache}
    assert kinds == {"reference", "proximal"}  # KL on, and truncated importance (the default)


def test_without_kl_or_importance_there_is_no_extra_pass(tmp_path, tiny_models):
    config = make_config(tmp_path, tiny_models, "grpo", grpo={"kl_beta": 0.0, "importance": "off"}, max_steps=2)
    recipe = Recipe(config)
    recipe.setup()
    metrics = recipe.train()
    recipe.cleanup()
    assert not recipe.logp_cache and "kl" not in metrics and "importance_weight" not in metrics


def sampler_rows(recipe, behaviour):
    """The dataset's rows with token ids, and 'sampling log-probs' from `behaviour(ids)`."""
    out = []
    for row in dataset_rows("rewarded", n=8):
        ids = recipe.renderer.encode(recipe.renderer.response_text(row["prompt"], row["completion"]), special=False)
        out.append({**row, "completion_ids": ids, "logprobs": behaviour(ids)})
    return out


@pytest.mark.parametrize(("behaviour", "weight"), [
    (lambda ids: [-50.0] * len(ids), "cap"),  # sampled as if 1e-22 likely: pi_old / pi_b is huge, truncated at C
    (lambda ids: [0.0] * len(ids), "below_one"),  # sampled with probability 1: the weight is pi_old(y_t) < 1
])
def test_samplers_logprobs_give_truncated_importance_weights(tmp_path, tiny_models, behaviour, weight):
    config = make_config(tmp_path, tiny_models, "grpo", max_steps=1, grpo={"importance_cap": 2.0})
    recipe = Recipe(config, rows=[])
    recipe.setup()
    metrics = recipe.train_round(sampler_rows(recipe, behaviour))
    recipe.cleanup()
    if weight == "cap":
        assert metrics["importance_weight"] == pytest.approx(2.0) and metrics["importance_truncated"] == 1.0
    else:
        assert 0 < metrics["importance_weight"] < 1 and metrics["importance_truncated"] == 0.0


def test_the_live_trainer_keeps_the_starting_model_as_reference():
    from agents.trainer_agent import live_settings

    config = TrainConfig(algo="grpo", model="m", data="-", out="o")
    assert get_method("grpo").online_reference == "initial" and live_settings(config)["reference"] == "initial"
    assert live_settings(TrainConfig(algo="dpo", model="m", data="-", out="o"))["reference"] == "current"


def test_a_solvers_samples_line_up_with_the_trainers_tokens(tmp_path, tiny_models):
    """The hf backend's tokens and log-probs, through rows and examples, against the trainer's own log-probs of the
    same policy: every importance weight is 1 and no ratio is clipped (a token shifted by one would not be)."""
    from agents.backends.hf import HFGenerator
    from protocol.messages import SamplingParams

    generator = HFGenerator(str(tiny_models.policy), device="cpu")
    prompts = [Prompt(prompt_id=f"q{i}", text=f"What is {i} + {i + 3}?", source="seed") for i in range(4)]
    generated = generator.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=0))
    groups = []
    for prompt, answers in zip(prompts, generated, strict=True):
        samples = [Sample(sample_id=f"t.1.{prompt.prompt_id}.{j}", prompt_id=prompt.prompt_id, text=g.text,
                          token_ids=g.token_ids, logprobs=g.logprobs, policy_version=0) for j, g in enumerate(answers)]
        verdicts = [Verdict(sample_id=s.sample_id, score=float(j)) for j, s in enumerate(samples)]  # distinct rewards
        groups.append(JudgedGroup(prompt=prompt, samples=samples, verdicts=verdicts))
    rows = rows_from_groups(groups, "grpo")
    assert len(rows) == 12 and all(len(r["completion_ids"]) == len(r["logprobs"]) > 0 for r in rows)
    config = make_config(tmp_path, tiny_models, "grpo", batch_size=12, max_steps=1, lora={"r": 4, "alpha": 8},
                         max_length=96, max_prompt_length=32)
    recipe = Recipe(config, rows=[])  # LoRA starts at zero: the policy is the sampler's
    recipe.setup()
    metrics = recipe.train_round(rows)
    recipe.cleanup()
    assert metrics["importance_weight"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["importance_truncated"] == 0.0 and metrics["clip_fraction"] == 0.0
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-4)
