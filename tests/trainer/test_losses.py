"""Losses against numbers worked by hand (the docstrings show the arithmetic)."""

import math

import pytest
import torch

from trainer.methods.losses import cut_loss, dpo_loss, gsil_loss, log1mexp, sft_loss, simpo_loss, spin_loss

T = torch.tensor


def test_sft_is_token_mean_nll():
    """Tokens -1, -2 (example 0) and -3 (example 1, one token masked): (1 + 2 + 3) / 3 = 2."""
    logps = T([[-1.0, -2.0], [-3.0, -9.0]])
    mask = T([[1, 1], [1, 0]])
    out = sft_loss(logps, mask)
    assert out.loss.item() == pytest.approx(2.0)
    assert out.per_example.tolist() == pytest.approx([1.5, 3.0])


def test_dpo_sigmoid_is_ln2_when_policy_equals_reference():
    logps = T([-5.0, -12.5, -0.3])
    out = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert out.per_example.tolist() == pytest.approx([math.log(2)] * 3)
    assert out.metrics["accuracy"].item() == 0.0


def test_dpo_variants_by_hand():
    """r_w = -1 - (-2) = 1, r_l = -3 - (-2) = -1, delta = 2, beta = 0.5 -> beta*delta = 1.
    sigmoid: -log sigmoid(1) = log(1 + e^-1) = 0.31326;  hinge: relu(1 - 1) = 0.
    ipo with lengths 2 and 4: delta_avg = 1/2 - (-1/4) = 0.75; (0.75 - 1/(2*0.5))^2 = 0.0625."""
    args = T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])
    assert dpo_loss(*args, beta=0.5).loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert dpo_loss(*args, beta=0.5, loss_type="hinge").loss.item() == pytest.approx(0.0)
    ipo = dpo_loss(*args, beta=0.5, loss_type="ipo", chosen_lengths=T([2.0]), rejected_lengths=T([4.0]))
    assert ipo.loss.item() == pytest.approx(0.0625)
    out = dpo_loss(*args, beta=0.5)
    assert out.metrics["r_chosen"].item() == 1.0 and out.metrics["r_rejected"].item() == -1.0
    assert out.metrics["margin"].item() == pytest.approx(1.0) and out.metrics["accuracy"].item() == 1.0
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(*args, loss_type="ipo")


def test_dpo_nll_term_by_hand():
    """RPO's term: chosen log-prob -1 over 2 tokens -> NLL 0.5 per token; alpha 2 adds 1.0 to the
    sigmoid loss of the example above (0.31326); its gradient raises the chosen log-prob even when the
    pair is already separated."""
    args = T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])
    out = dpo_loss(*args, beta=0.5, nll_alpha=2.0, chosen_lengths=T([2.0]))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)) + 1.0)
    assert out.metrics["nll"].item() == pytest.approx(0.5)
    chosen = T([-1.0], requires_grad=True)
    dpo_loss(chosen, T([-30.0]), T([-2.0]), T([-2.0]), beta=0.5, nll_alpha=1.0,
             chosen_lengths=T([2.0])).loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.5, abs=1e-6)  # the DPO part is saturated; NLL pulls up
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(*args, nll_alpha=1.0)


def test_simpo_by_hand():
    """avg_w = -4/2 = -2, avg_l = -9/3 = -3; beta 2, gamma = 0.25*2 = 0.5: -log sigmoid(2*1 - 0.5)
    = log(1 + e^-1.5) = 0.20141; with cpo_alpha 1: + NLL(y_w) = + 2."""
    args = T([-4.0]), T([-9.0]), T([2.0]), T([3.0])
    expected = math.log(1 + math.exp(-1.5))
    assert simpo_loss(*args).loss.item() == pytest.approx(expected)
    assert simpo_loss(*args, cpo_alpha=1.0).loss.item() == pytest.approx(expected + 2.0)


def test_spin_is_pairwise_invariant_to_a_shared_shift():
    """Adding the same constant to both log-ratios changes nothing (the weakness GSIL fixes)."""
    real, gen, ref_real, ref_gen = T([-2.0]), T([-5.0]), T([-3.0]), T([-4.0])
    a = spin_loss(real, gen, ref_real, ref_gen).loss
    b = spin_loss(real - 7, gen - 7, ref_real, ref_gen).loss
    assert a.item() == pytest.approx(b.item())
    assert a.item() == pytest.approx(math.log(1 + math.exp(-0.1 * 2)))  # r_real 1, r_gen -1


@pytest.mark.parametrize("variant, real_term, generated_term", [
    # s_real = 0.1*2 + 0.1 = 0.3, s_gen = 0.1*(-1) + 0.1 = 0.0
    ("logistic", math.log(1 + math.exp(-0.3)), math.log(2)),
    ("brier", (1 / (1 + math.exp(-0.3)) - 1) ** 2, 0.25),
    ("hinge", 0.7, 1.0),
    ("kliep", -0.3, 1.0),
    ("lsif", -math.exp(0.3), 0.5),
])
def test_gsil_variants_by_hand(variant, real_term, generated_term):
    """r_real = -1 - (-3) = 2, r_gen = -5 - (-4) = -1, scale beta 0.1, shift gamma 0.1."""
    out = gsil_loss(T([-1.0]), T([-5.0]), T([-3.0]), T([-4.0]), beta=0.1, gamma=0.1, variant=variant)
    assert out.metrics["real_term"].item() == pytest.approx(real_term, rel=1e-5)
    assert out.metrics["generated_term"].item() == pytest.approx(generated_term, rel=1e-5)
    assert out.loss.item() == pytest.approx(real_term + generated_term, rel=1e-5)


def test_gsil_is_pointwise_unlike_spin():
    """Shifting both sides by the same constant changes GSIL's loss: raising r(y_real) alone helps."""
    args = T([-1.0]), T([-5.0]), T([-3.0]), T([-4.0])
    base = gsil_loss(*args).loss.item()
    shifted = gsil_loss(T([-1.0 + 3]), T([-5.0 + 3]), T([-3.0]), T([-4.0])).loss.item()
    assert shifted != pytest.approx(base)


def test_log1mexp_is_accurate_at_both_ends():
    for logp in [-1e-8, -1e-3, -0.5, -0.7, -5.0, -50.0]:
        p = math.exp(logp)
        expected = math.log1p(-p) if p < 1 - 1e-6 else math.log(1e-6)
        assert log1mexp(T([logp], dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-4)


def test_cut_flags_exactly_tokens_whose_ratio_exceeds_lambda():
    """One bad response, 4 tokens, p(y_t|x) = 0.5 each; p(y_t|x,j) = 0.9, 0.55, 0.5, 0.2.
    Ratios 1.8, 1.1, 1.0, 0.4; with lambda 1.05 exactly tokens 0 and 1 are flagged."""
    px = torch.full((1, 4), math.log(0.5), requires_grad=True)
    pj = torch.log(T([[0.9, 0.55, 0.5, 0.2]]))
    out = cut_loss(px, pj, torch.ones(1, 4), T([True]), threshold=1.05, alpha=1.0)
    assert out.metrics["flagged_fraction"].item() == pytest.approx(0.5)
    # L1: tokens 0,1 unlikelihood -log(1-0.5) = ln 2; tokens 2,3 MLE -log 0.5 = ln 2 -> L1 = ln 2
    assert out.metrics["l1"].item() == pytest.approx(math.log(2))
    # L2: Align-N MLE on [x, j]: mean(-log 0.9, -log 0.55, -log 0.5, -log 0.2)
    l2 = -sum(math.log(p) for p in [0.9, 0.55, 0.5, 0.2]) / 4
    assert out.metrics["l2"].item() == pytest.approx(l2)
    assert out.loss.item() == pytest.approx((math.log(2) + l2) / 2)
    out.loss.backward()
    grad = px.grad[0]
    # unlikelihood pushes p(y_t|x) down (positive gradient on logp), MLE pushes it up (negative)
    assert grad[0] > 0 and grad[1] > 0 and grad[2] < 0 and grad[3] < 0


def test_cut_without_negatives_is_l2_alone_and_sum_combination():
    """Only Align-P examples: the released code trains on L2 alone; 'sum' would add L1 = 0."""
    px = torch.log(T([[0.5, 0.25]]))
    out = cut_loss(px, torch.zeros(1, 2), torch.ones(1, 2), T([False]))
    assert out.loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert out.metrics["l1"].item() == 0.0 and out.metrics["flagged_fraction"].item() == 0.0
    mixed = cut_loss(torch.log(T([[0.5], [0.5]])), torch.log(T([[0.9], [0.9]])), torch.ones(2, 1), T([False, True]),
                     threshold=1.1, combine="sum")
    # L1: token flagged (1.8 > 1.1): ln 2; L2: (-log 0.5 [Align-P] - log 0.9 [Align-N]) / 2
    assert mixed.loss.item() == pytest.approx(math.log(2) + (math.log(2) - math.log(0.9)) / 2)


def test_cut_padding_is_ignored():
    px = torch.log(T([[0.5, 0.9]]))
    pj = torch.log(T([[0.9, 0.1]]))
    a = cut_loss(px, pj, T([[1.0, 0.0]]), T([True]), threshold=1.1)
    b = cut_loss(px[:, :1], pj[:, :1], T([[1.0]]), T([True]), threshold=1.1)
    assert a.loss.item() == pytest.approx(b.loss.item())


def test_registry_lists_every_method():
    from trainer.methods import names

    assert set(names()) == {"sft", "dpo", "ipo", "simpo", "spin", "gsil", "cut", "contrastive-sft", "grpo", "rloo"}
