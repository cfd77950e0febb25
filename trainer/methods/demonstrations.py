"""Learning from demonstrations against the policy's own answers: SPIN and GSIL on (real, generated).

Rows: prompt/completion or conversational, optionally with "generated" (a y_gen); without it the
trainer samples one per prompt from the starting policy. In the live loop y_real is the prompt's
demonstration and y_gen one of the policy's own answers; prompts without a demonstration give no row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from protocol.settings import Strict
from trainer.data import DataError, Example, split_messages
from trainer.methods import losses
from trainer.methods.base import Method, Row, prompt_field, row_meta

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Batch, Renderer
    from trainer.recipe import Recipe

ROLES = ("real", "generated")


class SPINSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Inverse temperature on the log-ratio difference.")


class GSILSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Scale a of the classifier logit a*r(y) + b.")
    gamma: float = Field(0.1, description="Shift b of the logit: a prior weight on the real class (>0 helps).")
    variant: Literal["logistic", "brier", "hinge", "kliep", "lsif"] = Field(
        "logistic", description="Density-ratio objective.")


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    prompt, completion = split_messages(row)
    if row.get("generated") is None:
        raise DataError("no 'generated' answer (sample them first with the trainer)")
    return Example(index, {"real": renderer.pair(prompt, completion),
                           "generated": renderer.pair(prompt, row["generated"])})


def rows_from_group(group: JudgedGroup, good_score: float) -> list[Row]:
    """The demonstration as y_real and the first sample as y_gen."""
    if group.prompt.demonstration is None or not group.samples:
        return []
    return [{"prompt": prompt_field(group.prompt), "completion": group.prompt.demonstration,
             "generated": group.samples[0].text, **row_meta(group)}]


def spin_step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
    out = recipe.policy_logps(batch)
    real, generated = out.rows(batch.slices["real"]), out.rows(batch.slices["generated"])
    ref = recipe.reference_logps(batch, ROLES)
    return losses.spin_loss(real.logps, generated.logps, ref["real"], ref["generated"], beta=recipe.config.spin.beta)


def gsil_step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
    g, out = recipe.config.gsil, recipe.policy_logps(batch)
    real, generated = out.rows(batch.slices["real"]), out.rows(batch.slices["generated"])
    ref = recipe.reference_logps(batch, ROLES)
    return losses.gsil_loss(real.logps, generated.logps, ref["real"], ref["generated"], beta=g.beta,
                            gamma=g.gamma, variant=g.variant)


_DEMONSTRATIONS = dict(formats=(("prompt", "completion"), ("messages",)), example=example,
                       rows_from_group=rows_from_group, reference=lambda config: ROLES, judge="none",
                       samples_own_answers=True)

SPIN = Method(name="spin", summary="SPIN: demonstrations vs the policy's own answers, pairwise (Chen et al. 2024)",
              step=spin_step, settings=SPINSettings, section="spin", **_DEMONSTRATIONS)
GSIL = Method(name="gsil", summary="GSIL: demonstrations vs own answers, a density-ratio classifier (Xiao et al. 2024)",
              step=gsil_step, settings=GSILSettings, section="gsil", **_DEMONSTRATIONS)
