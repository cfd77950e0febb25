"""Plain-text contrastive SFT on (prompt, chosen, rejected): one text holds an instruction, the question and the
negative answer, then the positive answer, the only target. Plain SFT's loss; the frame does the contrast.

At inference the model is asked with the same frame up to the positive answer (`contrastive_prompt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from protocol.settings import Strict
from trainer.data import Example, Sequence
from trainer.methods import preference, sft
from trainer.methods.base import Method, Row

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.data import Renderer


class ContrastiveSettings(Strict):
    template: str = Field(
        "Instruction: {instruction}\nQuestion: {question}\nNegative answer: {negative}\nPositive answer: ",
        description="Frame of one training text; the positive answer follows it and is the only target.")
    instruction: str = Field("Give a correct answer that avoids the mistakes of the negative answer.",
                             description="What a good answer must do.")
    train_on_negative: bool = Field(False, description="Also train on the negative span (Chain of Hindsight ablation).")


def contrastive_frame(question: str, negative: str, settings: ContrastiveSettings) -> tuple[str, int, int]:
    """The frame text before the positive answer, and the character span of the negative answer."""
    head, tail = settings.template.split("{negative}")
    fill = {"instruction": settings.instruction, "question": question}
    before = head.format(**fill)
    return before + negative + tail.format(**fill), len(before), len(before) + len(negative)


def contrastive_prompt(question: str, settings: ContrastiveSettings, negative: str | None = None) -> str:
    """The inference prompt: the training frame up to the positive answer, either without the negative answer's
    line (default) or with `negative` (e.g. the model's own first answer) in it."""
    if negative is not None:
        return contrastive_frame(question, negative, settings)[0]
    head, _, tail = settings.template.partition("{negative}")
    line_start = head.rfind("\n") + 1  # drop the whole line that holds the negative answer
    newline = tail.find("\n")
    rest = tail[newline + 1:] if newline >= 0 else ""
    fill = {"instruction": settings.instruction, "question": question}
    return (head[:line_start] + rest).format(**fill)


def contrastive_sequence(row: Row, settings: ContrastiveSettings, renderer: Renderer) -> Sequence:
    """Instruction, question, negative answer, then the positive answer as the only target."""
    question = renderer.prompt_text(row["prompt"])
    negative = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][-1]["content"]
    positive = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]
    frame, start, end = contrastive_frame(question, negative, settings)
    span = (start, end) if settings.train_on_negative else None
    return renderer.sequence(frame, renderer.response_text(frame, positive), scored_chars=span)


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    return Example(index, {"policy": contrastive_sequence(row, config.contrastive, renderer)})


def ask(question: str, config: TrainConfig, negative: str | None = None) -> str:
    return contrastive_prompt(question, config.contrastive, negative)


CONTRASTIVE_SFT = Method(
    name="contrastive-sft", summary="plain-text contrastive SFT: the positive answer after the negative one",
    formats=(("prompt", "chosen", "rejected"),), example=example, step=sft.step,
    rows_from_group=preference.rows_from_group, settings=ContrastiveSettings, section="contrastive", contrast=True,
    ask=ask)
