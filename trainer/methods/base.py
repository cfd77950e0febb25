"""What a training method is: everything the trainer, the creator, the demo and the CLI need to know about it.

A method module builds one or more `Method`s and the registry (`trainer.methods`) lists them. Nothing
outside the registry names a method: config validation, dataset checks, the live trainer's rows, the
recipe's step, the creator's judging and the demo all ask the `Method` instead.

    method = get_method(config.algo)
    method.check_row(row)                     # None, or what is wrong with a dataset row
    rows = method.rows_from_group(group, 1.0) # a judged group from the live loop -> dataset rows
    examples = method.prepare([method.example(i, row, config, renderer) for i, row in ...], config)
    out = method.step(recipe, batch)          # a LossOutput to backpropagate
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from protocol.messages import JudgedGroup, Prompt, Sample, Verdict
from protocol.settings import Strict

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.data import Batch, Example, Renderer
    from trainer.methods.losses import LossOutput
    from trainer.recipe import Recipe

Row = dict[str, Any]
TEXT_FIELDS = {"prompt", "completion", "chosen", "rejected", "judgment", "messages", "generated"}  # never empty


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line: what it learns from and its objective (help strings, docs)
    formats: tuple[tuple[str, ...], ...]  # the field sets a dataset row may have (any one of them)
    example: Callable[[int, Row, TrainConfig, Renderer], Example]  # one row -> its token sequences
    step: Callable[[Recipe, Batch], LossOutput]  # one micro-batch -> its loss
    rows_from_group: Callable[[JudgedGroup, float], list[Row]]  # a judged group (and good_score) -> rows
    settings: type[Strict] | None = None  # its settings model, at TrainConfig.<section>
    section: str | None = None  # the TrainConfig field holding `settings` (several methods may share one)
    reference: Callable[[TrainConfig], tuple[str, ...]] = lambda config: ()  # roles needing reference log-probs
    proximal: Callable[[TrainConfig], tuple[str, ...]] = lambda config: ()  # roles needing round-start log-probs
    judge: Literal["none", "score", "judgment"] = "score"  # what the live loop asks judges for ("none": the method
    # learns from the prompts' demonstrations)
    contrast: bool = False  # learns only from groups whose scores differ (pairs, group-relative advantages)
    samples_own_answers: bool = False  # rows without "generated" get one sampled from the starting policy
    online: Mapping[str, Any] = field(default_factory=dict)  # settings the live trainer uses unless the config sets them
    online_reference: Literal["initial", "current"] = "current"  # reference of the live trainer
    prepare: Callable[[list[Example], TrainConfig], list[Example]] = lambda examples, config: examples
    check: Callable[[Row], str | None] = lambda row: None  # a method-specific row check: the problem, or None
    # how the trained model is asked a question (and optionally shown a negative answer), when not as it is
    ask: Callable[[str, TrainConfig, str | None], str] | None = None

    def check_row(self, row: Row) -> str | None:
        """What is wrong with a dataset row for this method, or None."""
        if not any(all(k in row for k in fields) for fields in self.formats):
            fields = max(self.formats, key=lambda fs: sum(k in row for k in fs))
            missing = ", ".join(repr(k) for k in fields if k not in row)
            options = " or ".join("/".join(fs) for fs in self.formats)
            return f"missing {missing} ({self.name} needs {options})"
        return self.check(row)

    def settings_of(self, config: TrainConfig) -> Any:
        """This method's settings in `config` (None for a method without settings)."""
        return getattr(config, self.section) if self.section else None


# ---------------------------------------------------------------------- helpers for rows_from_group
def prompt_field(prompt: Prompt) -> str | list[dict[str, str]]:
    """A prompt as a dataset row holds it: plain text, or chat messages."""
    return [t.model_dump() for t in prompt.messages] if prompt.messages else prompt.text


def row_meta(group: JudgedGroup) -> Row:
    return {"prompt_id": group.prompt.prompt_id, "source": group.prompt.source}


def scored(group: JudgedGroup) -> list[tuple[Sample, Verdict]]:
    """Each sample with its verdict; a sample without one is an error naming it."""
    by_id = {v.sample_id: v for v in group.verdicts}
    missing = [s.sample_id for s in group.samples if s.sample_id not in by_id]
    if missing:
        raise ValueError(f"prompt {group.prompt.prompt_id}: no verdict for samples {missing}")
    return [(s, by_id[s.sample_id]) for s in group.samples]
