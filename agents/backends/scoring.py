"""Scoring backends for the judge: a programmatic verifier, a reward model, an LLM judge.

Each is a callable `(prompts, responses, want_judgment) -> [(score, judgment | None)]` over a batch.

    verifier = AnswerVerifier()                            # or a task world's own checker
    rm = RewardModelScorer("./tiny/reward")                # any AutoModelForSequenceClassification
    llm = LLMJudge(HFGenerator("./judge-model"))           # writes a score and a critique (CUT's j)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from protocol.messages import Prompt, SamplingParams

Scored = tuple[float, str | None]
Scorer = Callable[[Sequence[Prompt], Sequence[str], bool], list[Scored]]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _normal(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


class AnswerVerifier:
    """Exact answer check against `Prompt.answer`: the last number in the response when the answer is
    numeric, else the whole normalised text. Score 1 or 0, with a written judgment either way.
    Task worlds with graded rewards or richer critiques pass their own callable instead."""

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        return [self.check(p, r, want_judgment) for p, r in zip(prompts, responses, strict=True)]

    def check(self, prompt: Prompt, response: str, want_judgment: bool) -> Scored:
        if prompt.answer is None:
            raise ValueError(f"prompt {prompt.prompt_id} has no answer to verify against")
        if _NUMBER.fullmatch(prompt.answer.strip()):
            numbers = _NUMBER.findall(response)
            given = numbers[-1] if numbers else None
            correct = given is not None and float(given) == float(prompt.answer)
        else:
            given, correct = response.strip(), _normal(response) == _normal(prompt.answer)
        if not want_judgment:
            return float(correct), None
        if correct:
            return 1.0, "Correct."
        shown = "no answer" if not given else f"{given!s}"
        return 0.0, f"Incorrect: the answer is {prompt.answer.strip()}, not {shown}."


class RewardModelScorer:
    """A sequence-classification reward model's scalar on prompt + response (chat template if any)."""

    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 16) -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else "cpu" if device == "auto" else device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).to(self.device).eval()
        self.batch_size = batch_size

    def text(self, prompt: Prompt, response: str) -> str:
        if prompt.messages:
            turns = [t.model_dump() for t in prompt.messages] + [{"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(turns, tokenize=False)
        return f"{prompt.text}\n{response}"

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        texts = [self.text(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True).to(self.device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return [(s, None) for s in scores]  # a reward model writes no critique


JUDGE_TEMPLATE = ("Judge the response to the instruction. Point out what is wrong, if anything, then rate it.\n"
                  "Instruction: {prompt}\nResponse: {response}\n"
                  "Reply as:\nCritique: <what is right or wrong>\nScore: <0 to 10>\n")
_SCORE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_CRITIQUE = re.compile(r"critique\s*[:=]\s*(.+?)(?:\n\s*score\s*[:=]|$)", re.IGNORECASE | re.DOTALL)


def parse_judgment(text: str, scale: float = 10.0) -> Scored:
    """(score in [0, 1], critique) from an LLM judge's reply; an unreadable score counts as 0."""
    score = _SCORE.search(text)
    critique = _CRITIQUE.search(text)
    value = min(max(float(score.group(1)) / scale, 0.0), 1.0) if score else 0.0
    return value, (critique.group(1).strip() if critique else text.strip()) or None


class LLMJudge:
    """Prompts a generator (HFGenerator, or the vLLM backend) for a critique and a 0-10 score."""

    def __init__(self, generator: Any, max_new_tokens: int = 128, template: str = JUDGE_TEMPLATE) -> None:
        self.generator, self.template = generator, template
        self.sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        asks = [Prompt(prompt_id=p.prompt_id, text=self.template.format(prompt=p.text, response=r))
                for p, r in zip(prompts, responses, strict=True)]
        replies = self.generator.generate(asks, self.sampling)
        return [parse_judgment(group[0].text) for group in replies]
