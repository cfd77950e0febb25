"""Policy gradient from verifiable rewards with a group baseline: GRPO and RLOO.

Both learn from n answers to one prompt with a reward each; they differ in the baseline:
    GRPO (Shao et al. 2024):      A_i = (r_i - mean(r)) / (std(r) + eps)   (Dr. GRPO, Liu et al. 2025: no std)
    RLOO (Ahmadian et al. 2024):  A_i = r_i - mean_{j != i} r_j            (leave-one-out)
and share one token-level objective. With rho_t = pi(y_t) / pi_old(y_t):
    loss_t = -w_t * min(rho_t * A, clip(rho_t, 1 - eps, 1 + eps_high) * A) + kl_beta * KL_t
KL_t is the k3 estimate exp(ref - logp) - (ref - logp) - 1 against the reference (the starting model).

pi_old and w_t: the solver returns pi_behaviour(y_t), the log-prob each token had when it was sampled.
With importance = "truncated" (default), pi_old is the policy at the start of the round (one no-grad pass)
and w_t = min(pi_old(y_t) / pi_behaviour(y_t), importance_cap): the clip keeps the round's steps near
where it began, and the truncated weight corrects for answers sampled by an older policy (max_staleness >= 1)
or by another engine (decoupled PPO, Hilton et al. 2022; AReaL, Fu et al. 2025; TIS, Yao et al. 2025).
With importance = "off", pi_old is pi_behaviour itself and w_t = 1 (the papers' synchronous loop).

Rows: {"prompt", "completion", "reward"}, optionally "completion_ids" and "logprobs" (the sampler's tokens
and their log-probs) and "prompt_id" (rows sharing it, else sharing the prompt, form a group).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor

from protocol.settings import Strict
from trainer.data import Example
from trainer.methods.base import Method, Row, prompt_field, row_meta, scored
from trainer.methods.losses import LossOutput, LossType, policy_gradient_loss

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Batch, Renderer
    from trainer.recipe import Recipe

class GRPOSettings(Strict):
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range of the ratio: [1 - epsilon, 1 + epsilon_high].")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (DAPO's clip-higher uses 0.28); None: "
                                                                "epsilon.")
    kl_beta: float = Field(0.0, ge=0, description="Weight of the KL to the starting model (k3 estimate); 0 = off "
                                                  "and no reference pass (TRL's default; DeepSeekMath used 0.04).")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's reward std (GRPO); false: "
                                                  "Dr. GRPO's unscaled advantages.")
    loss_type: LossType = Field("grpo", description="How token losses become one number: grpo (mean over each "
                                                    "answer's tokens, then over answers), dapo (mean over all tokens "
                                                    "of the batch), dr_grpo (sum over tokens / answers / the "
                                                    "response length cap), reinforce (sum over each answer's "
                                                    "tokens, mean over answers).")
    importance: Literal["truncated", "off"] = Field(
        "truncated", description="truncated: clip against the round's starting policy and weight tokens by "
                                 "min(pi_old / pi_behaviour, importance_cap); off: clip against the sampler's "
                                 "log-probs directly.")
    importance_cap: float = Field(2.0, ge=1, description="Truncation C of the importance weight (TIS uses 2).")


class RLOOSettings(GRPOSettings):
    kl_beta: float = Field(0.0, ge=0, description="Weight of the KL to the starting model (k3 estimate, as a loss "
                                                  "term; the paper puts it in the reward); 0 = off.")
    scale_rewards: bool = Field(False, description="Also divide advantages by the group's reward std.")
    loss_type: LossType = Field("reinforce", description="As for GRPO; reinforce (the paper's sequence-level "
                                                         "objective) by default.")


# ---------------------------------------------------------------------- advantages (pure)
def grpo_advantages(rewards: Tensor, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """(r - mean) / (std + eps) over one group, std unbiased; unscaled with scale=False. One answer: 0."""
    if len(rewards) < 2:
        return torch.zeros_like(rewards)
    centered = rewards - rewards.mean()
    return centered / (rewards.std() + eps) if scale else centered


def rloo_advantages(rewards: Tensor, *, scale: bool = False, eps: float = 1e-4) -> Tensor:
    """r_i minus the mean of the other answers' rewards, = n / (n - 1) * (r_i - mean). One answer: 0."""
    n = len(rewards)
    if n < 2:
        return torch.zeros_like(rewards)
    advantages = rewards - (rewards.sum() - rewards) / (n - 1)
    return advantages / (rewards.std() + eps) if scale else advantages


# ---------------------------------------------------------------------- rows and examples
def check(row: Row) -> str | None:
    reward = row["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        return f"'reward' must be a finite number, not {reward!r}"
    if "logprobs" in row and len(row["logprobs"]) != len(row.get("completion_ids") or ()):
        return "'logprobs' needs 'completion_ids' of the same length (the tokens they were sampled for)"
    return None


def rows_from_group(group: JudgedGroup, good_score: float) -> list[Row]:
    """Every sample with its reward, its tokens and their sampling log-probs; none when all rewards are equal
    (every advantage would be 0: DAPO's dynamic-sampling filter)."""
    ranked = scored(group)
    if len({verdict.score for _, verdict in ranked}) < 2:
        return []
    return [{"prompt": prompt_field(group.prompt), "completion": sample.text, "reward": verdict.score,
             **({"completion_ids": sample.token_ids, "logprobs": sample.logprobs}
                if sample.token_ids and len(sample.logprobs) == len(sample.token_ids) else {}),
             **row_meta(group)} for sample, verdict in ranked]


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    prompt, ids = row["prompt"], row.get("completion_ids")
    if ids:  # the sampler's own tokens, so its log-probs line up with ours
        sequence = renderer.sequence_ids(renderer.prompt_text(prompt), ids, plain_prompt=isinstance(prompt, str))
    else:
        sequence = renderer.pair(prompt, row["completion"])
    scored_tokens = sum(sequence.score_mask)
    behaviour = [float(x) for x in row["logprobs"][:scored_tokens]] if ids and "logprobs" in row else []
    group = str(row.get("prompt_id") or json.dumps(prompt, sort_keys=True))
    return Example(index, {"policy": sequence}, values={"reward": float(row["reward"])},
                   token_values={"logprobs": behaviour}, group=group)


def _prepare(section: str, advantage_fn):
    def prepare(examples: list[Example], config: TrainConfig) -> list[Example]:
        """Each example's advantage from the rewards of its group (the examples sharing its prompt)."""
        scale = getattr(config, section).scale_rewards
        groups: dict[str, list[Example]] = defaultdict(list)
        for e in examples:
            groups[e.group].append(e)
        for members in groups.values():
            rewards = torch.tensor([e.values["reward"] for e in members], dtype=torch.float64)
            for e, a in zip(members, advantage_fn(rewards, scale=scale).tolist(), strict=True):
                e.values["advantage"] = a
        return examples
    return prepare


def _fit(values: Tensor, width: int, fill: float) -> Tensor:
    """(B, W) -> (B, width): cut, or padded with `fill`."""
    if values.shape[1] >= width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]), value=fill)


def step(recipe: Recipe, batch: Batch) -> LossOutput:
    cfg = recipe.config
    s = recipe.method.settings_of(cfg)
    out = recipe.policy_logps(batch).rows(batch.slices["policy"])
    width = out.token_logps.shape[1]
    behaviour = _fit(batch.token_values["logprobs"], width, float("nan")).to(out.token_logps.dtype)
    known = ~torch.isnan(behaviour)
    weights = None
    truncated = None
    if s.importance == "truncated":
        old = _fit(recipe.cached_token_logps(batch, "policy", "proximal"), width, 0.0)
        raw = torch.where(known, torch.exp(old - behaviour), torch.ones_like(old))
        weights, truncated = raw.clamp(max=s.importance_cap), raw > s.importance_cap
    else:
        old = torch.where(known, behaviour, out.token_logps.detach())
    ref = _fit(recipe.cached_token_logps(batch, "policy", "reference"), width, 0.0) if s.kl_beta else None
    result = policy_gradient_loss(out.token_logps, old, batch.values["advantage"], out.mask, ref_token_logps=ref,
                                  weights=weights, epsilon=s.epsilon, epsilon_high=s.epsilon_high, kl_beta=s.kl_beta,
                                  loss_type=s.loss_type, max_tokens=cfg.max_length - cfg.max_prompt_length)
    if truncated is not None:  # the share of tokens whose weight was cut to importance_cap
        result.metrics["importance_truncated"] = (truncated & out.mask).float().sum() / out.mask.sum().clamp(min=1)
    return result


def _group_relative(name: str, summary: str, settings: type[GRPOSettings], advantage_fn) -> Method:
    """GRPO and RLOO differ in their advantages and defaults only; each keeps its settings at TrainConfig.<name>."""
    return Method(
        name=name, summary=summary, settings=settings, section=name, prepare=_prepare(name, advantage_fn),
        formats=(("prompt", "completion", "reward"),), example=example, step=step, rows_from_group=rows_from_group,
        check=check, contrast=True, online_reference="initial",
        reference=lambda config: ("policy",) if getattr(config, name).kl_beta else (),
        proximal=lambda config: ("policy",) if getattr(config, name).importance == "truncated" else ())


GRPO = _group_relative("grpo", "GRPO: group-normalized rewards, clipped token ratios (Shao et al. 2024)",
                       GRPOSettings, grpo_advantages)
RLOO = _group_relative("rloo", "RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024)",
                       RLOOSettings, rloo_advantages)
