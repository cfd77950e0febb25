"""The recipe on a tiny model: every method trains, only what should change changes, resume is exact."""

import contextlib
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.trainer.datasets import FORMAT_OF, write
from trainer.config import TrainConfig
from trainer.data import DataError, collate, read_rows
from trainer.logps import sequence_logps
from trainer.methods import build_examples, get_method
from trainer.recipe import Recipe, run

ALGOS = ["sft", "dpo", "ipo", "simpo", "spin", "gsil", "cut", "contrastive-sft", "grpo", "rloo"]


def make_config(tmp_path, tiny_models, algo, **overrides):
    data = write(tmp_path / "data.jsonl", FORMAT_OF[algo], n=8)
    settings = {"algo": algo, "model": str(tiny_models.policy), "data": str(data), "out": str(tmp_path / "out"),
                "batch_size": 8, "max_steps": 6, "lr": 5e-3, "warmup_ratio": 0.0, "scheduler": "constant",
                "save_every": 3, "tensorboard": False, "max_length": 64, "max_prompt_length": 32,
                "lora": {"r": 4, "alpha": 8}}
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def train_with_snapshot(config):
    """Train to the end and save; returns the recipe and a copy of every weight from before training."""
    recipe = Recipe(config)
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    recipe.train()
    recipe.save_final()
    recipe.cleanup()
    return recipe, before


def losses_logged(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ALGOS)
def test_lora_trains_adapter_only_and_loss_falls_on_a_repeated_batch(tmp_path, tiny_models, algo):
    """8 rows, batch 8: every step sees the same batch, so the loss must fall."""
    recipe, before = train_with_snapshot(make_config(tmp_path, tiny_models, algo))
    changed = {n for n, p in recipe.model.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n in before if "lora_" in n}
    assert lora and changed == lora, "exactly the LoRA weights change"
    losses = losses_logged(tmp_path / "out")
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_adapter_loads_with_peft_and_reproduces_the_policy(tmp_path, tiny_models):
    recipe, _ = train_with_snapshot(make_config(tmp_path, tiny_models, "dpo"))
    ids = torch.tensor([[5, 40, 41, 42, 43]])
    with torch.no_grad():
        trained = recipe.model.eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_models.policy)
        untouched = base(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained)
    assert not torch.allclose(trained, untouched)


@pytest.mark.parametrize("algo", ["sft", "dpo"])
def test_full_finetuning_changes_every_weight(tmp_path, tiny_models, algo):
    recipe, before = train_with_snapshot(make_config(tmp_path, tiny_models, algo, finetune="full", lr=1e-3,
                                                     max_steps=4))
    unchanged = [n for n, p in recipe.model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    if algo == "dpo":  # the reference is the untouched starting model, cached, and its copy freed
        assert recipe.frozen_reference is None
        start = AutoModelForCausalLM.from_pretrained(tiny_models.policy)
        batch = collate(recipe.examples, recipe.tokenizer.pad_token_id)
        with torch.no_grad():
            expected = sequence_logps(start, batch.input_ids, batch.attention_mask, batch.score_mask).logps
        for role in ("chosen", "rejected"):
            cached = [recipe.logp_cache[(batch.indices[b], role, "reference")][0] for b in batch.rows[role]]
            assert cached == pytest.approx(expected[batch.slices[role]].tolist(), rel=1e-5, abs=1e-4)
    losses = losses_logged(tmp_path / "out")
    assert losses[-1] < losses[0]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert all(torch.equal(p, dict(recipe.model.named_parameters())[n]) for n, p in reloaded.named_parameters())


# grpo: clipped against the run's start, kept on resume; with replay: 8 replay rows, 3 a micro-batch, cross epochs
@pytest.mark.parametrize("algo, replay", [("dpo", False), ("gsil", False), ("grpo", False), ("grpo", True)])
def test_resume_is_exact(tmp_path, tiny_models, algo, replay):
    """6 steps straight == 3 steps, a 'crash', and --resume for the other 3: same losses and weights.
    LoRA dropout is on, so the RNG state must be restored too; 8 rows at batch 4 cross an epoch."""
    overrides = {"batch_size": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "scheduler": "cosine",
                 "warmup_ratio": 0.2}
    if replay:
        data = write(tmp_path / "replay.jsonl", "prompt_completion", n=8, seed=1)
        overrides |= {"replay": {"data": str(data), "batch_size": 3}, "grad_accum": 2}  # two replay batches a step
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run(make_config(tmp_path / "a", tiny_models, algo, **overrides))

    split = make_config(tmp_path / "b", tiny_models, algo, **overrides)
    first = Recipe(split)
    first.setup()
    first.train(stop_after=3)
    first.save_checkpoint()
    first.cleanup()
    run(split, resume=True)

    a, b = tmp_path / "a" / "out", tmp_path / "b" / "out"
    assert losses_logged(a) == pytest.approx(losses_logged(b), rel=1e-6, abs=1e-7)
    wa = load_file(a / "checkpoints" / "step-000006" / "trainable.safetensors")
    wb = load_file(b / "checkpoints" / "step-000006" / "trainable.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-6, atol=1e-7)


def test_checkpoints_are_rotated(tmp_path, tiny_models):
    config = make_config(tmp_path, tiny_models, "sft", max_steps=8, save_every=2, keep_checkpoints=2)
    run(config)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-000006", "step-000008"]


@pytest.mark.parametrize("algo", ["dpo", "gsil"])
def test_bf16_autocast_path_runs(tmp_path, tiny_models, algo):
    """The bf16 path a GPU takes (autocast around forward and the reference pass), here on the CPU."""
    config = make_config(tmp_path, tiny_models, algo, precision="bf16", max_steps=2)
    recipe = Recipe(config)
    recipe.setup()
    assert recipe.autocast_bf16
    metrics = recipe.train()
    recipe.cleanup()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(isinstance(total, float) and tokens.dtype == torch.float32
               for total, tokens in recipe.logp_cache.values())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_base_dtype_bf16_keeps_frozen_weights_bf16_and_trained_weights_fp32(tmp_path, tiny_models, finetune):
    """base_dtype: LoRA's frozen base (or full fine-tuning's reference copy) in bf16; what trains stays fp32."""
    config = make_config(tmp_path, tiny_models, "dpo", base_dtype="bf16", finetune=finetune, max_steps=2)
    recipe = Recipe(config)
    recipe.setup()
    frozen = recipe.model if finetune == "lora" else recipe.frozen_reference
    assert {p.dtype for p in frozen.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in recipe.model.parameters() if p.requires_grad} == {torch.float32}
    metrics = recipe.train()
    recipe.cleanup()
    assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_activation_checkpointing_changes_memory_not_results(tmp_path, tiny_models):
    """Recomputed activations give the gradients stored ones give: the same losses and weights."""
    runs = {}
    for on in (False, True):
        (tmp_path / str(on)).mkdir()
        recipe, _ = train_with_snapshot(make_config(tmp_path / str(on), tiny_models, "gsil", max_steps=3,
                                                    activation_checkpointing=on))
        base = recipe.model.get_base_model()  # transformers 5's name, or 4's
        flag = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else \
            "is_gradient_checkpointing"
        assert getattr(base, flag) == on
        runs[on] = (losses_logged(tmp_path / str(on) / "out"), dict(recipe.model.named_parameters()))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    for name, p in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], p, rtol=1e-5, atol=1e-7)


def test_replay_keeps_its_demonstrations_likely(tmp_path, tiny_models):
    """DPO on arithmetic pairs with and without a replay term on other problems' demonstrations: the replay rows
    become more likely only with it, and its NLL is logged each step."""
    replay = write(tmp_path / "replay.jsonl", "prompt_completion", n=8, seed=1)
    nll = {}
    for on in (False, True):
        (tmp_path / str(on)).mkdir()
        config = make_config(tmp_path / str(on), tiny_models, "dpo", **({"replay": {"data": str(replay)}} if on else {}))
        recipe, _ = train_with_snapshot(config)
        examples = build_examples(read_rows(replay), config.model_copy(update={"algo": "sft"}), recipe.renderer)
        batch = collate(examples, recipe.tokenizer.pad_token_id)
        with torch.no_grad():
            out = sequence_logps(recipe.model, batch.input_ids, batch.attention_mask, batch.score_mask)
        nll[on] = float(-(out.token_logps * out.mask).sum() / out.mask.sum())
        logged = [json.loads(line) for line in (tmp_path / str(on) / "out" / "metrics.jsonl").read_text().splitlines()]
        assert all(("replay_nll" in step) == on for step in logged)
        if on:
            assert logged[-1]["replay_nll"] < logged[0]["replay_nll"]
    assert nll[True] < nll[False] - 0.1, nll


@pytest.mark.parametrize("algo", ALGOS)
def test_replay_shares_the_steps_forward_and_gives_the_same_gradient(tmp_path, tiny_models, algo):
    """A step's rows and its replay rows go through the decoder once (one call, not two), and the gradient is the
    one two separate passes give."""
    replay = write(tmp_path / "replay.jsonl", "prompt_completion", n=8, seed=1)
    recipe = Recipe(make_config(tmp_path, tiny_models, algo, replay={"data": str(replay), "batch_size": 3,
                                                                     "weight": 0.5}))
    recipe.setup()
    recipe.precompute_reference()
    batch, replayed = recipe.next_batch(), recipe.replay_batch(0)
    sft = get_method("sft")
    params = [p for p in recipe.model.parameters() if p.requires_grad]

    def gradient(together):
        calls = []
        hook = recipe.model.get_base_model().get_decoder().register_forward_hook(lambda *_: calls.append(1))
        with recipe._one_pass(batch, replayed) if together else contextlib.nullcontext():
            loss = recipe.method.step(recipe, batch).loss + 0.5 * sft.step(recipe, replayed).loss
        hook.remove()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return len(calls), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    (apart_calls, apart), (together_calls, together) = gradient(False), gradient(True)
    assert (apart_calls, together_calls) == (2, 1)
    assert any(g.abs().sum() > 0 for g in together)
    for a, b in zip(apart, together, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    recipe.cleanup()


def test_bad_replay_data_names_the_replay_file(tmp_path, tiny_models):
    config = make_config(tmp_path, tiny_models, "dpo", replay={"data": str(tmp_path / "missing.jsonl")})
    with pytest.raises(DataError, match=r"replay data .*missing\.jsonl"):
        Recipe(config).setup()


def test_ctrl_c_while_loading_saves_nothing_and_during_the_last_step_finishes(tmp_path, tiny_models, monkeypatch):
    from trainer.recipe import Interrupted

    config = make_config(tmp_path, tiny_models, "dpo", max_steps=2)

    def interrupted_setup(self):
        raise KeyboardInterrupt  # as Ctrl-C arrives while the model loads

    with monkeypatch.context() as m:
        m.setattr(Recipe, "setup", interrupted_setup)
        with pytest.raises(Interrupted, match="before training started") as e:
            run(config)
    assert e.value.checkpoint is None
    train = Recipe.train

    def ctrl_c_in_the_last_step(self, *args, **kwargs):
        metrics = train(self, *args, **kwargs)
        self.stop_requested = True  # as the handler sets it when Ctrl-C arrives during the last step
        return metrics

    monkeypatch.setattr(Recipe, "train", ctrl_c_in_the_last_step)
    assert "loss" in run(config, overwrite=True)  # finished, not Interrupted: the run was done
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
