"""Pairwise preference methods on (prompt, chosen, rejected): DPO, IPO and SimPO.

In the live loop a group's best- and worst-scored answers are the pair (eva's pairs); a group whose
scores are all equal carries no preference and gives no row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from protocol.settings import Strict
from trainer.data import Example
from trainer.methods import losses
from trainer.methods.base import Method, Row, prompt_field, row_meta, scored

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Batch, Renderer
    from trainer.recipe import Recipe

PAIR = ("chosen", "rejected")


class DPOSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward (eva used 0.05).")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid", description="DPO's logistic loss, its hinge variant, or IPO (algo 'ipo' sets this).")
    nll_alpha: float = Field(0.0, ge=0, description="Weight of a length-averaged NLL term on the chosen answer "
                                                    "(Iterative RPO, Pang et al. 2024); 0 = off.")


class SimPOSettings(Strict):
    beta: float = Field(2.0, gt=0, description="Reward scale on length-averaged log-probs.")
    gamma_beta_ratio: float = Field(0.25, ge=0, description="Target margin gamma as a fraction of beta.")
    cpo_alpha: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen answer (CPO); 0 = off.")


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    return Example(index, {"chosen": renderer.pair(row["prompt"], row["chosen"]),
                           "rejected": renderer.pair(row["prompt"], row["rejected"])})


def rows_from_group(group: JudgedGroup, good_score: float) -> list[Row]:
    """The best- and worst-scored samples as chosen / rejected; none when every score is equal."""
    ranked = scored(group)
    best = max(ranked, key=lambda sv: sv[1].score)
    worst = min(ranked, key=lambda sv: sv[1].score)
    if best[1].score <= worst[1].score:
        return []
    return [{"prompt": prompt_field(group.prompt), "chosen": best[0].text, "rejected": worst[0].text,
             "margin": best[1].score - worst[1].score, **row_meta(group)}]


def _dpo_step(loss_type: Literal["sigmoid", "hinge", "ipo"] | None):
    def step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
        """DPO / IPO / hinge on (chosen, rejected), both sides in one forward."""
        s, out = recipe.config.dpo, recipe.policy_logps(batch)
        chosen, rejected = out.rows(batch.slices["chosen"]), out.rows(batch.slices["rejected"])
        ref = recipe.reference_logps(batch, PAIR)
        return losses.dpo_loss(chosen.logps, rejected.logps, ref["chosen"], ref["rejected"], beta=s.beta,
                               loss_type=loss_type or s.loss_type, chosen_lengths=chosen.lengths,
                               rejected_lengths=rejected.lengths, nll_alpha=s.nll_alpha)
    return step


def simpo_step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
    """SimPO on (chosen, rejected): reference-free, length-averaged."""
    s, out = recipe.config.simpo, recipe.policy_logps(batch)
    chosen, rejected = out.rows(batch.slices["chosen"]), out.rows(batch.slices["rejected"])
    return losses.simpo_loss(chosen.logps, rejected.logps, chosen.lengths, rejected.lengths, beta=s.beta,
                             gamma_beta_ratio=s.gamma_beta_ratio, cpo_alpha=s.cpo_alpha)


_PAIRS = dict(formats=(("prompt", "chosen", "rejected"),), example=example, rows_from_group=rows_from_group,
              contrast=True)

DPO = Method(name="dpo", summary="DPO on best/worst pairs (Rafailov et al. 2023)", step=_dpo_step(None),
             settings=DPOSettings, section="dpo", reference=lambda config: PAIR, **_PAIRS)
IPO = Method(name="ipo", summary="IPO: DPO's squared-margin variant (Azar et al. 2023)", step=_dpo_step("ipo"),
             settings=DPOSettings, section="dpo", reference=lambda config: PAIR, **_PAIRS)
SIMPO = Method(name="simpo", summary="SimPO: reference-free, length-averaged margin (Meng et al. 2024)",
               step=simpo_step, settings=SimPOSettings, section="simpo", **_PAIRS)
