"""CUT, contrastive unlikelihood training, on (prompt, completion, judgment, label).

Align-P (a good answer): MLE given the prompt. Align-N (a bad one): MLE given the prompt and its
judgment. Misalign: the bad answer's tokens the judgment makes more likely get unlikelihood. In the live
loop every sample with a written judgment is a row; label = score >= good_score.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from protocol.settings import Strict
from trainer.data import Example, Sequence
from trainer.methods import losses
from trainer.methods.base import Method, Row, prompt_field, row_meta, scored

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Batch, Renderer
    from trainer.recipe import Recipe


class CUTSettings(Strict):
    threshold: float = Field(1.2, gt=0, description="lambda: a token is inappropriate when p(y|x,j)/p(y|x) > lambda "
                                                    "(offline default 1.2; the live loop uses 1.1).")
    alpha: float = Field(0.5, ge=0, description="Weight of the unlikelihood term (offline 0.5; live 1.0).")
    combine: Literal["mean", "sum"] = Field("mean", description="(L1+L2)/2 as the released code, or L1+L2.")
    align_p_ratio: float = Field(0.25, ge=0, description="Align-P examples kept, as a multiple of Align-N's count.")
    template: str = Field("{prompt}\nJudgment: {judgment}\nResponse:",
                          description="Judgment-conditioned prompt; the response follows it.")


def check(row: Row) -> str | None:
    if not isinstance(row["label"], bool):
        return "'label' must be true (good response) or false (bad)"
    return None


def example(index: int, row: Row, config: TrainConfig, renderer: Renderer) -> Example:
    prompt_text = renderer.prompt_text(row["prompt"])
    response = renderer.response_text(row["prompt"], row["completion"])
    plain = isinstance(row["prompt"], str)
    sequences = {"plain": renderer.sequence(prompt_text, response, plain_prompt=plain)}
    negative = not row["label"]
    if negative:
        judged_prompt = config.cut.template.format(prompt=prompt_text, judgment=row["judgment"])
        sequences["judged"] = renderer.sequence(judged_prompt, response, plain_prompt=plain)
        _same_response_length(sequences["plain"], sequences["judged"])
    return Example(index, sequences, negative=negative)


def _same_response_length(a: Sequence, b: Sequence) -> None:
    """Trim the longer response so both views score the same tokens (truncation can differ by view)."""
    keep = min(sum(a.score_mask), sum(b.score_mask))
    for seq in (a, b):
        extra = sum(seq.score_mask) - keep
        if extra:
            del seq.input_ids[-extra:], seq.score_mask[-extra:]


def downsample_align_p(examples: list[Example], config: TrainConfig) -> list[Example]:
    """CUT keeps align_p_ratio x (number of Align-N) of the Align-P examples, drawn with a fixed seed."""
    negatives = [e for e in examples if e.negative]
    positives = [e for e in examples if not e.negative]
    keep = min(len(positives), round(config.cut.align_p_ratio * len(negatives))) if negatives else len(positives)
    kept = random.Random(config.seed).sample(positives, keep)
    return sorted(negatives + kept, key=lambda e: e.index)


def rows_from_group(group: JudgedGroup, good_score: float) -> list[Row]:
    """Every sample with its written judgment."""
    return [{"prompt": prompt_field(group.prompt), "completion": sample.text, "judgment": verdict.judgment,
             "label": verdict.score >= good_score, **row_meta(group)}
            for sample, verdict in scored(group) if verdict.judgment]


def step(recipe: Recipe, batch: Batch) -> losses.LossOutput:
    """y | x for every example, y | [x, j] for the bad ones, in one forward."""
    s, out = recipe.config.cut, recipe.policy_logps(batch)
    plain = out.rows(batch.slices["plain"])
    judged_tokens = plain.token_logps.detach().clone()  # placeholder rows for good examples (never read)
    if "judged" in batch.slices:
        judged = out.rows(batch.slices["judged"])  # same response tokens, fewer rows, maybe narrower
        width = plain.token_logps.shape[1] - judged.token_logps.shape[1]
        judged_tokens = judged_tokens.index_put(
            (torch.tensor(batch.rows["judged"], device=judged_tokens.device),),
            torch.nn.functional.pad(judged.token_logps, (0, width)))
    return losses.cut_loss(plain.token_logps, judged_tokens, plain.mask, batch.negative,
                           threshold=s.threshold, alpha=s.alpha, combine=s.combine)


CUT = Method(name="cut", summary="CUT: learns from written judgments (Xu et al. 2024)",
             formats=(("prompt", "completion", "judgment", "label"),), example=example, step=step,
             rows_from_group=rows_from_group, settings=CUTSettings, section="cut", check=check, judge="judgment",
             online={"threshold": 1.1, "alpha": 1.0}, prepare=downsample_align_p)
