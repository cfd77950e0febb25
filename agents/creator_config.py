"""The creator's settings (a topology's [creator.settings]): what a round solves, evolves and trains on,
when the run stops, and promotion; agents/creator.py runs them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agents.eva import Informativeness
from protocol.settings import Strict
from trainer.methods import DEFAULT_METHOD, names


class CreatorConfig(Strict):
    algo: str = Field(DEFAULT_METHOD, description="What the trainer runs: decides whether groups need a judge, and "
                                                  "a written judgment.")
    samples_per_prompt: int = Field(6, ge=1, description="n answers per prompt (eva: 6).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the answers (eva: 0.7).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus mass of the answers (eva: 0.9).")
    max_new_tokens: int = Field(256, ge=1, description="Answer length cap.")
    prompts_per_task: int = Field(16, ge=1, description="Most prompts per generation/judge task (a round's prompts "
                                                       "are split into tasks of equal size): smaller spreads a round "
                                                       "over more solvers, larger batches better on one GPU.")
    evolve: bool = Field(True, description="Evolve the prompt set (eva); False: the static-prompt baseline.")
    pool_per_round: int | None = Field(None, ge=1, description="Solve at most this many prompts of the pool per "
                                                                "round, drawn at random (None: all of it, as eva).")
    informativeness: Informativeness = Field("reward_gap", description="How a prompt's rewards rate it.")
    sample_fraction: float = Field(0.25, gt=0, le=1, description="Share of prompts evolved each round.")
    sample_method: str = Field("weighted", pattern="^(weighted|greedy)$", description="weighted (eva) or greedy.")
    rewrites_per_prompt: int = Field(4, ge=1, description="Chained rewrites per sampled prompt (released code: 4).")
    max_prompt_chars: int = Field(2000, ge=1, description="Longer evolved prompts are dropped.")
    old_fraction: float = Field(0.2, ge=0, le=1, description="Share of old-prompt groups in a training batch.")
    min_train_score: float | None = Field(None, description="Train only on groups whose best answer scores at least "
                                                            "this (with an exact checker, 1.0: the chosen answer of "
                                                            "every pair is right); None: every group.")
    train_groups: int = Field(64, ge=1, description="Groups per training task.")
    max_staleness: int = Field(0, ge=0, description="Train tasks left outstanding while the next round generates: "
                                                    "0 waits for each new policy (synchronous); 1 overlaps round "
                                                    "t+1's generation with round t's training.")
    good_score: float = Field(1.0, description="Score at or above which a CUT response counts as good.")
    wait_s: float = Field(5.0, gt=0, le=60, description="How long one query about submitted tasks may wait at the "
                                                        "hub; the hub answers as soon as they are all finished.")
    task_timeout_s: float = Field(3600.0, gt=0, description="Give up on a round whose tasks take longer.")
    seed: int = Field(0, description="Seed of sampling, mutation choice and mixing.")
    eval_every: int = Field(1, ge=1, description="Evaluate on the held-out prompts every N rounds (and before round 1).")
    max_wall_s: float | None = Field(None, gt=0, description="Stop starting rounds after this many seconds of the run "
                                                           "(journaled: a restarted creator does not start afresh).")
    target_eval_reward: float | None = Field(None, description="Stop once the held-out mean reward reaches this.")
    on_failed_round: Literal["continue", "stop"] = Field(
        "continue", description="A round whose task went DEAD or timed out is recorded (log, journal, summary); then "
                                "the creator goes on with the next round (continue) or ends the run (stop).")
    max_failed_rounds: int = Field(3, ge=1, description="End the run once this many rounds failed in a row, even with "
                                                        "continue: a cause that persists (a policy no solver loads) "
                                                        "should stop the run, not spin through its rounds.")
    promotion: bool = Field(False, description="Validate each new version on the validation prompts before any round "
                                               "generates with it; one worse than the best so far by more than "
                                               "promotion_tolerance_se is rejected and the trainer resumes from the "
                                               "best (adapter and optimizer); the run ends on its best version. "
                                               "Needs validation prompts and max_staleness 0.")
    promotion_tolerance_se: float = Field(2.0, ge=0, description="How far below the best a version may score on "
                                                                 "validation and still be served, in standard errors "
                                                                 "of the difference.")
    promotion_metric: Literal["mean", "solved"] = Field(
        "mean", description="What validation compares: the mean verdict score, or the share of answers scoring at "
                            "least good_score (with an exact checker, the accuracy a report shows).")

    @field_validator("algo")
    @classmethod
    def _known(cls, algo: str) -> str:
        if algo not in names():
            raise ValueError(f"algo {algo!r} is not a method; one of {', '.join(names())}")
        return algo

    @model_validator(mode="after")
    def _promotion_is_synchronous(self) -> CreatorConfig:
        if self.promotion and self.max_staleness:
            raise ValueError("promotion needs max_staleness = 0: with overlap, rounds would generate with a version "
                             "before it is validated")
        return self
