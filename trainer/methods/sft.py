"""SFT: token-mean negative log-likelihood of a demonstration (or, in the live loop, the best-scored answer).

Rows: prompt/completion, conversational messages, or prompt/chosen (the chosen answer is the target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.data import Example, split_messages
from trainer.methods import losses
from trainer.methods.base import Method, Row, prompt_field, row_meta, scored

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Batch, Renderer
    from trainer.recipe import Recipe


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    prompt, completion = split_messages(row)
    return Example(index, {"policy": renderer.pair(prompt, completion)})


def step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
    """Token-mean NLL over the scored tokens (also contrastive SFT's step: its mask does the work)."""
    out = recipe.policy_logps(batch)
    return losses.sft_loss(out.token_logps, out.mask)


def rows_from_group(group: JudgedGroup, good_score: float) -> list[Row]:
    """The demonstration if the prompt has one, else the best-scored sample."""
    demo = group.prompt.demonstration
    completion = demo if demo is not None else max(scored(group), key=lambda sv: sv[1].score)[0].text
    return [{"prompt": prompt_field(group.prompt), "completion": completion, **row_meta(group)}]


SFT = Method(
    name="sft", summary="supervised fine-tuning on demonstrations (token-mean NLL)",
    formats=(("prompt", "completion"), ("messages",), ("prompt", "chosen")),
    example=example, step=step, rows_from_group=rows_from_group)
