"""Every training objective (docs/algorithms.md) as a pure function on log-probs; each method's module in
`trainer.methods` calls its own.

Inputs are *sums* of response-token log-probs per sequence (`*_logps`, shape (B,)) and response token
counts (`*_lengths`, (B,)), or per-token log-probs with masks (`*_token_logps`, `*_mask`, (B, L)) for the
token-level objectives. Each returns a `LossOutput`: the batch objective to backpropagate, each
example's own value (detached), and detached metrics with every term logged separately.
Log-probs are computed in one place, `trainer.logps`; nothing here touches a model.

    out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    out.loss.backward()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossOutput:
    loss: Tensor  # scalar: the batch objective (mean over examples, or token mean where stated)
    per_example: Tensor  # (B,) each example's own value, detached
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached scalars
    # the denominator of `loss`'s mean (tokens for a token mean); None: the examples, len(per_example). Ranks that
    # each hold a share of a batch weight their losses by it (trainer/distributed.py)
    count: Tensor | None = None

    def denominator(self) -> float:
        return float(self.count) if self.count is not None else float(self.per_example.numel())


def _metrics(**values: Tensor) -> dict[str, Tensor]:
    return {k: v.detach().float().mean() for k, v in values.items()}


# --------------------------------------------------------------------------------------------------
# 1. SFT
# --------------------------------------------------------------------------------------------------

def sft_loss(token_logps: Tensor, mask: Tensor) -> LossOutput:
    """Token-mean negative log-likelihood of the response: -sum(logp * mask) / sum(mask).

    token_logps, mask: (B, L). Also the loss of plain-text contrastive SFT, whose builder puts the mask
    on the positive answer only (docs/algorithms.md).
    """
    mask = mask.to(token_logps.dtype)
    nll = -(token_logps * mask)
    per_example = nll.sum(-1) / mask.sum(-1).clamp(min=1)
    loss = nll.sum() / mask.sum().clamp(min=1)
    return LossOutput(loss, per_example.detach(), _metrics(nll=loss, tokens=mask.sum()), count=mask.sum().detach())


# --------------------------------------------------------------------------------------------------
# 2. DPO family and SimPO (pairs x, y_w, y_l)
# --------------------------------------------------------------------------------------------------

def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             *, beta: float = 0.1, loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid",
             chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
             nll_alpha: float = 0.0) -> LossOutput:
    """DPO (Rafailov et al. 2023) and its hinge / IPO (Azar et al. 2023) variants. All inputs (B,).

    r(y) = logp(y) - ref_logp(y), delta = r(y_w) - r(y_l)
      sigmoid: -log sigmoid(beta * delta)
      hinge:   relu(1 - beta * delta)
      ipo:     (delta_avg - 1 / (2 beta))^2, delta_avg from length-averaged log-probs (needs the lengths)
    plus nll_alpha * NLL(y_w) / |y_w| (Iterative RPO, Pang et al. 2024: keeps the chosen answer's
    likelihood from falling with the rejected one's on reasoning tasks; off by default, needs the lengths).
    With policy == reference, sigmoid gives ln 2 for every pair.
    """
    r_chosen = chosen_logps - ref_chosen_logps
    r_rejected = rejected_logps - ref_rejected_logps
    delta = r_chosen - r_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo needs chosen_lengths and rejected_lengths (length-averaged log-probs)")
        delta_avg = r_chosen / chosen_lengths - r_rejected / rejected_lengths
        losses = (delta_avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    extra = {}
    if nll_alpha:
        if chosen_lengths is None:
            raise ValueError("nll_alpha needs chosen_lengths (the NLL is length-averaged)")
        nll = -chosen_logps / chosen_lengths
        losses = losses + nll_alpha * nll
        extra["nll"] = nll
    metrics = _metrics(r_chosen=r_chosen, r_rejected=r_rejected, margin=beta * delta,
                       accuracy=(delta > 0).float(), kl_proxy=(r_chosen + r_rejected) / 2,
                       logps_chosen=chosen_logps, logps_rejected=rejected_logps, **extra)
    return LossOutput(losses.mean(), losses.detach(), metrics)


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
               *, beta: float = 2.0, gamma_beta_ratio: float = 0.25, cpo_alpha: float = 0.0) -> LossOutput:
    """SimPO (Meng et al. 2024), reference-free. All inputs (B,).

    -log sigmoid(beta * (avg_logp(y_w) - avg_logp(y_l)) - gamma), gamma = gamma_beta_ratio * beta,
    plus cpo_alpha * NLL(y_w) (CPO's term, token-mean; off by default). Defaults: the authors' code.
    """
    avg_chosen = chosen_logps / chosen_lengths
    avg_rejected = rejected_logps / rejected_lengths
    gamma = gamma_beta_ratio * beta
    losses = -F.logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)
    nll_chosen = -avg_chosen
    if cpo_alpha:
        losses = losses + cpo_alpha * nll_chosen
    metrics = _metrics(avg_logps_chosen=avg_chosen, avg_logps_rejected=avg_rejected,
                       margin=beta * (avg_chosen - avg_rejected), accuracy=(avg_chosen > avg_rejected).float(),
                       nll_chosen=nll_chosen)
    return LossOutput(losses.mean(), losses.detach(), metrics)


# --------------------------------------------------------------------------------------------------
# 3-4. SPIN and GSIL (demonstrations y_real, self-generated y_gen)
# --------------------------------------------------------------------------------------------------

def spin_loss(real_logps: Tensor, generated_logps: Tensor, ref_real_logps: Tensor, ref_generated_logps: Tensor,
              *, beta: float = 0.1) -> LossOutput:
    """SPIN (Chen et al. 2024): -log sigmoid(beta * (r(y_real) - r(y_gen))). All inputs (B,).

    The reference is the start-of-iteration policy, which also generated y_gen. Pairwise: adding a
    constant to both log-ratios changes nothing, so r(y_real) may fall below zero (logged, to see it).
    """
    r_real = real_logps - ref_real_logps
    r_generated = generated_logps - ref_generated_logps
    losses = -F.logsigmoid(beta * (r_real - r_generated))
    metrics = _metrics(r_real=r_real, r_generated=r_generated, margin=beta * (r_real - r_generated),
                       kl_proxy=(r_real + r_generated) / 2)
    return LossOutput(losses.mean(), losses.detach(), metrics)


GSILVariant = Literal["logistic", "brier", "hinge", "kliep", "lsif"]


def gsil_terms(s_real: Tensor, s_generated: Tensor, variant: GSILVariant) -> tuple[Tensor, Tensor]:
    """The real-class and generated-class terms of GSIL's density-ratio objectives, pointwise (B,)."""
    if variant == "logistic":  # Bernoulli likelihood of a classifier with logit s
        return -F.logsigmoid(s_real), -F.logsigmoid(-s_generated)
    if variant == "brier":
        return (torch.sigmoid(s_real) - 1) ** 2, torch.sigmoid(s_generated) ** 2
    if variant == "hinge":
        return torch.relu(1 - s_real), torch.relu(1 + s_generated)
    if variant == "kliep":
        return -s_real, torch.exp(s_generated)
    if variant == "lsif":
        return -torch.exp(s_real), 0.5 * torch.exp(s_generated) ** 2
    raise ValueError(f"unknown GSIL variant {variant!r}")


def gsil_loss(real_logps: Tensor, generated_logps: Tensor, ref_real_logps: Tensor, ref_generated_logps: Tensor,
              *, beta: float = 0.1, gamma: float = 0.1, variant: GSILVariant = "logistic") -> LossOutput:
    """GSIL (Xiao et al. 2024): real is class 1, generated class 0, logit s(y) = beta * r(y) + gamma.

    Loss = real_term(s(y_real)) + generated_term(s(y_gen)), each *pointwise* (unlike SPIN), so the
    real data's likelihood ratio is pushed up on its own. beta is the paper's scale a, gamma its shift b
    (defaults a = b = 0.1, the released code's). All inputs (B,).
    """
    r_real = real_logps - ref_real_logps
    r_generated = generated_logps - ref_generated_logps
    real_term, generated_term = gsil_terms(beta * r_real + gamma, beta * r_generated + gamma, variant)
    losses = real_term + generated_term
    metrics = _metrics(real_term=real_term, generated_term=generated_term, r_real=r_real,
                       r_generated=r_generated, kl_proxy=(r_real + r_generated) / 2)
    return LossOutput(losses.mean(), losses.detach(), metrics)


# --------------------------------------------------------------------------------------------------
# 6. CUT (x, y, judgment)
# --------------------------------------------------------------------------------------------------

def log1mexp(logp: Tensor) -> Tensor:
    """log(1 - exp(logp)) for logp <= 0, accurate at both ends (Mächler 2012); p clamped below 1."""
    logp = logp.clamp(max=-1e-6)
    return torch.where(logp > -math.log(2), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def cut_loss(token_logps: Tensor, judged_token_logps: Tensor, mask: Tensor, negative: Tensor, *,
             threshold: float = 1.1, alpha: float = 1.0, combine: Literal["mean", "sum"] = "mean") -> LossOutput:
    """CUT, contrastive unlikelihood training (Xu et al. 2024).

    token_logps:        (B, L) log p(y_t | x) of the response tokens, left-aligned
    judged_token_logps: (B, L) log p(y_t | x, j) of the same tokens under the judgment-conditioned
                        template (read only where `negative`)
    mask:               (B, L) response tokens;  negative: (B,) bool, y was judged bad
    Align-P (y good):    MLE on y given x.
    Align-N (y bad):     MLE on y given [x, j].
    Misalign (y bad):    a token is inappropriate when p(y_t|x,j) / p(y_t|x) > threshold (ratio detached);
                         inappropriate tokens get unlikelihood -alpha * log(1 - p(y_t|x)), the others MLE.
    L1 = token mean of Misalign; L2 = token mean of MLE over Align-P and Align-N tokens.
    combine="mean": (L1 + L2) / 2, or L2 alone when the batch has no Align-N example (released code);
    combine="sum": L1 + L2 (the paper's formula). Defaults: online threshold 1.1, alpha 1.0.
    """
    mask = mask.to(token_logps.dtype)
    neg = negative.to(token_logps.dtype)[:, None] * mask  # (B, L) tokens of bad responses
    pos = mask - neg
    ratio = torch.exp(judged_token_logps - token_logps).detach()
    flagged = (ratio > threshold).to(token_logps.dtype) * neg
    unlikely = -alpha * log1mexp(token_logps)
    misalign = flagged * unlikely - (neg - flagged) * token_logps  # (B, L), zero outside bad responses
    mle = -(pos * token_logps) - (neg * judged_token_logps)  # Align-P on x, Align-N on [x, j]
    n_neg, n_mle = neg.sum(), mask.sum()
    l1 = misalign.sum() / n_neg.clamp(min=1)
    l2 = mle.sum() / n_mle.clamp(min=1)
    if combine == "sum":
        loss = l1 + l2
    elif combine == "mean":
        loss = (l1 + l2) / 2 if n_neg > 0 else l2
    else:
        raise ValueError(f"unknown CUT combine {combine!r}")
    per_example = (misalign + mle).sum(-1) / (mask + neg).sum(-1).clamp(min=1)
    metrics = {"l1": l1.detach(), "l2": l2.detach(),
               "flagged_fraction": (flagged.sum() / n_neg.clamp(min=1)).detach(),
               "align_n": negative.float().sum(), "align_p": (~negative.bool()).float().sum()}
    # L1 and L2 are token means over different token sets: ranks are weighted by response tokens, an approximation
    return LossOutput(loss, per_example.detach(), metrics, count=n_mle.detach())


# --------------------------------------------------------------------------------------------------
# 7. GRPO and RLOO (n answers per prompt, each with an advantage; trainer/methods/policy_gradient.py)
# --------------------------------------------------------------------------------------------------

LossType = Literal["grpo", "dapo", "dr_grpo", "reinforce"]


def policy_gradient_loss(token_logps: Tensor, old_token_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                         ref_token_logps: Tensor | None = None, weights: Tensor | None = None,
                         epsilon: float = 0.2, epsilon_high: float | None = None, kl_beta: float = 0.0,
                         loss_type: LossType = "grpo", max_tokens: int | None = None) -> LossOutput:
    """The clipped token-level surrogate with an optional KL term, aggregated by `loss_type`.

    token_logps, old_token_logps, ref_token_logps, weights, mask: (B, L); advantages: (B,).
    At the start of a round (ratio 1, no KL) the loss of grpo is -mean_i(A_i) and its gradient the REINFORCE
    gradient with the group baseline.
    """
    mask = mask.to(token_logps.dtype)
    log_ratio = token_logps - old_token_logps
    ratio = torch.exp(log_ratio)
    high = epsilon if epsilon_high is None else epsilon_high
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + high) * a)
    per_token = -surrogate if weights is None else -surrogate * weights
    metrics: dict[str, Tensor] = {}
    if kl_beta:
        if ref_token_logps is None:
            raise ValueError("kl_beta > 0 needs ref_token_logps")
        delta = ref_token_logps - token_logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_beta * kl
        metrics["kl"] = (kl * mask).sum() / mask.sum().clamp(min=1)
    tokens = mask.sum(-1)
    per_example = (per_token * mask).sum(-1)
    if loss_type == "grpo":
        per_example = per_example / tokens.clamp(min=1)
        loss = per_example.mean()
    elif loss_type == "dapo":
        loss = per_example.sum() / tokens.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        if not max_tokens:
            raise ValueError("dr_grpo needs max_tokens (the response length cap)")
        per_example = per_example / max_tokens
        loss = per_example.mean()
    elif loss_type == "reinforce":
        loss = per_example.mean()
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    clipped = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + high) & (a > 0))
    denominator = mask.sum().clamp(min=1)
    metrics |= {"clip_fraction": (clipped.to(mask.dtype) * mask).sum() / denominator,
                "ratio": (ratio * mask).sum() / denominator,
                "advantage": advantages.mean(), "advantage_abs": advantages.abs().mean()}
    if weights is not None:
        metrics["importance_weight"] = (weights * mask).sum() / denominator
    return LossOutput(loss, per_example.detach(), {k: v.detach().float() for k, v in metrics.items()},
                      count=tokens.sum().detach() if loss_type == "dapo" else None)
