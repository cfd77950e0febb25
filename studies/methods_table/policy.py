"""One arm's policy: the SFT start with a fresh LoRA adapter, trained round by round by the trainer's recipe.

    policy = Policy(budget, model_dir, out_dir, seed, "gsil", lr=1.5e-5, gsil={"variant": "brier"})
    answers = policy.answer(["What is 2 + 3?"], n=4)      # sampled from the current policy
    policy.train(rows)                                    # one pass of Recipe.train_round over the rows
    scores = policy.evaluate(held_out)                    # greedy answers, graded: {level: [score, ...]}

Training uses the live trainer's recipe and the method's online reference (the policy at the start of each
round, or the SFT start for GRPO/RLOO and with reference="initial"), so the table measures the objectives the
live system trains with; the learning rate is the arm's (one point of its grid), with the authors' schedule
planned over the whole arm: warmup over the budget's share of rounds x K / batch steps, then cosine decay.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.worlds import arithmetic as world
from protocol.messages import Prompt
from studies.methods_table.world import Budget
from trainer.config import TrainConfig
from trainer.generate import sample_responses
from trainer.methods import get_method
from trainer.recipe import Recipe

Frames = Callable[["Policy", Sequence[Prompt]], list[str]]  # held-out prompts -> the texts the model is asked


def plain(policy: Policy, prompts: Sequence[Prompt]) -> list[str]:
    return [p.text for p in prompts]


@dataclass
class Record:
    """What an arm measured: held-out scores, accuracy after each round, training traces, costs."""

    scores: dict[int, list[float]] = field(default_factory=dict)  # difficulty -> graded score per held-out prompt
    validation: dict[int, list[float]] = field(default_factory=dict)  # the same on the validation set, at the end
    variants: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # other inference frames
    by_round: list[float] = field(default_factory=list)  # held-out exact accuracy after each round
    trace: list[dict[str, float]] = field(default_factory=list)  # per optimizer step: loss terms, r_real, ...
    examples: int = 0
    train_s: float = 0.0  # data generation, judging and training (evaluation excluded)
    eval_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


class Policy:
    def __init__(self, budget: Budget, model: Path, out: Path, seed: int, algo: str, *, lr: float,
                 reference: str | None = None, **settings: Any) -> None:
        reference = reference or get_method(algo).online_reference  # as the live trainer, unless told
        config = TrainConfig(
            algo=algo, model=str(model), data="(methods table)", out=str(out), lr=lr,
            batch_size=budget.batch_size, lora={"r": budget.lora_r, "alpha": 2 * budget.lora_r},
            max_length=budget.max_length, max_prompt_length=budget.max_prompt_length, seed=seed,
            scheduler=budget.scheduler, warmup_ratio=budget.warmup_ratio, reference=reference, save_every=10**9,
            log_every=1, tensorboard=False, **settings)
        self.budget, self.seed, self.calls = budget, seed, 0
        self.recipe = Recipe(config, rows=[])
        # before setup, which builds the scheduler and takes step 0's rate from it
        self.recipe.schedule_steps = budget.rounds * -(-budget.examples_per_round // budget.batch_size)
        self.recipe.setup()
        self.record = Record()

    @property
    def config(self) -> TrainConfig:
        return self.recipe.config

    def answer(self, texts: Sequence[str], *, n: int = 1, temperature: float | None = None) -> list[list[str]]:
        """n answers per prompt text from the current policy (greedy when temperature is 0)."""
        self.calls += 1
        flat = sample_responses(self.recipe.model, self.recipe.tokenizer, [t for t in texts for _ in range(n)],
                                max_new_tokens=self.budget.max_new_tokens,
                                temperature=self.budget.temperature if temperature is None else temperature,
                                top_p=self.budget.top_p, batch_size=64, seed=self.seed * 1_000_003 + self.calls)
        return [flat[i * n:(i + 1) * n] for i in range(len(texts))]

    def train(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """One pass over `rows`; every optimizer step's metrics go to the record's trace."""
        first = self.recipe.cursor.step
        metrics = self.recipe.train_round(rows)
        self.record.examples += len(self.recipe.examples)
        lines = (Path(self.config.out) / "metrics.jsonl").read_text().splitlines()
        self.record.trace += [m for m in map(json.loads, lines) if m["step"] > first]
        return metrics

    def evaluate(self, held_out: Sequence[Prompt], frames: Frames = plain) -> dict[int, list[float]]:
        """Greedy answers to the held-out prompts (asked through `frames`), graded by the world's checker."""
        started = time.perf_counter()
        answers = self.answer(frames(self, held_out), temperature=0.0)
        scores: dict[int, list[float]] = defaultdict(list)
        for prompt, [text] in zip(held_out, answers, strict=True):
            scores[prompt.difficulty].append(world.grade(prompt, text)[0])
        self.record.eval_s += time.perf_counter() - started
        return dict(sorted(scores.items()))

    def close(self) -> None:
        self.recipe.cleanup()


def exact(scores: dict[int, list[float]]) -> float:
    """Share of exactly right answers over every level."""
    flat = [s for level in scores.values() for s in level]
    return sum(s >= 1.0 for s in flat) / len(flat) if flat else 0.0
