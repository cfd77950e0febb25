"""One log-prob path: equal to the full-logits computation, padding-proof, reference = adapter off."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer.logps import reference_logps, selective_logps, sequence_logps


@pytest.fixture(scope="module")
def model(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models.policy).eval()


def _batch():
    ids = torch.tensor([[5, 10, 11, 12, 13, 0, 0], [5, 20, 21, 22, 23, 24, 25]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    score = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    return ids, attention, score


def test_selective_logps_equals_log_softmax():
    logits = torch.randn(5, 11)
    targets = torch.tensor([0, 3, 10, 7, 7])
    expected = torch.log_softmax(logits, -1)[torch.arange(5), targets]
    torch.testing.assert_close(selective_logps(logits, targets), expected)


def test_matches_full_logits_and_ignores_padding(model):
    ids, attention, score = _batch()
    out = sequence_logps(model, ids, attention, score)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits, -1)
    per_token = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
    expected = (per_token * score[:, 1:]).sum(-1)
    torch.testing.assert_close(out.logps, expected, rtol=1e-5, atol=1e-5)
    assert out.lengths.tolist() == [3, 4]
    assert out.mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    torch.testing.assert_close(out.token_logps[0, :3], per_token[0, 1:4], rtol=1e-5, atol=1e-5)
    assert out.token_logps[0, 3] == 0
    # the same row alone, unpadded, gives the same numbers
    alone = sequence_logps(model, ids[:1, :5], attention[:1, :5], score[:1, :5])
    torch.testing.assert_close(alone.logps, out.logps[:1], rtol=1e-5, atol=1e-5)


def test_reference_is_the_model_with_its_adapter_disabled(tiny_models):
    base = AutoModelForCausalLM.from_pretrained(tiny_models.policy)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    ids, attention, score = _batch()
    with torch.no_grad():
        base_out = sequence_logps(base, ids, attention, score)
        policy_out = sequence_logps(peft_model, ids, attention, score)
    peft_model.train()
    ref = reference_logps(peft_model, ids, attention, score)
    assert peft_model.training  # train mode restored after the reference's eval-mode pass
    torch.testing.assert_close(ref.logps, base_out.logps, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy_out.logps, base_out.logps)  # random (non-zero) LoRA changes the policy
    frozen = reference_logps(peft_model, ids, attention, score, frozen_reference=base)
    torch.testing.assert_close(frozen.logps, base_out.logps)


def test_gradients_flow_only_through_the_policy(tiny_models):
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                LoraConfig(r=4, target_modules="all-linear"))
    ids, attention, score = _batch()
    out = sequence_logps(peft_model, ids, attention, score)
    assert out.logps.requires_grad
    assert not reference_logps(peft_model, ids, attention, score).logps.requires_grad
