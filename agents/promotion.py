"""Promotion: which policy version a long run serves, decided on a validation set.

    best = Score.of([1.0, 0.5, 1.0, 0.0])                 # mean 0.625, its standard error, n 4
    candidate = Score.of([0.0, 0.0, 0.5, 0.0])
    worse_than(candidate, best, tolerance_se=2.0)         # True: more than 2 standard errors below the best

The creator validates each new version (greedy answers to the validation prompts, judged). A version
whose mean score is below the best so far by more than `tolerance_se` standard errors of the
difference (sqrt(se_candidate^2 + se_best^2)) is rejected: the solvers never generate training data
with it, and the trainer resumes from the best version. Comparing with the best, not the previous
version, bounds a slow drift too: no served version is ever more than the tolerance below the best.
Pure functions, no I/O: tests/agents/test_promotion.py checks them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """A version's validation result: mean verdict score, its standard error, and how many answers."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, scores: Sequence[float]) -> Score:
        """Mean and standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than two."""
        n = len(scores)
        if n == 0:
            raise ValueError("no validation scores: a version is validated on at least one answer")
        mean = sum(scores) / n
        variance = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
        return cls(mean, math.sqrt(variance / n), n)


def gap_in_stderr(candidate: Score, best: Score) -> float:
    """How many standard errors of the difference the candidate is below the best (negative: above it)."""
    gap = best.mean - candidate.mean
    se = math.hypot(candidate.stderr, best.stderr)
    if se == 0.0:
        return 0.0 if gap == 0 else math.copysign(math.inf, gap)
    return gap / se


def worse_than(candidate: Score, best: Score, tolerance_se: float) -> bool:
    """True when the candidate is below the best by more than `tolerance_se` standard errors of the difference."""
    return gap_in_stderr(candidate, best) > tolerance_se


@dataclass
class Promotion:
    """The creator's promotion state: validation scores, the best version, a pending rollback, the rollbacks done.
    Decisions only; the creator asks for the scores and sends the restores.

        state = Promotion(tolerance_se=2.0)
        state.decide(0, Score.of(scores_v0))      # False: the first version is the best
        state.decide(1, Score.of(scores_v1))      # True: rejected; state.pending == 1 until rolled_back(...)
    """

    tolerance_se: float
    validation: dict[int, Score] = field(default_factory=dict)  # version -> its validation score
    best: int | None = None  # the best version validated so far
    pending: int | None = None  # a rejected version not yet rolled back (journaled: a restart rolls it back)
    rollbacks: list[dict] = field(default_factory=list)  # {"rejected", "restored", "version", "why"} of each

    def decide(self, version: int, score: Score) -> bool:
        """Record `version`'s score; True when it is rejected (then `pending` until `rolled_back`). A version that
        is not rejected and scores above the best becomes the best."""
        self.validation[version] = score
        best = self.validation.get(self.best) if self.best is not None else None
        rejected = best is not None and worse_than(score, best, self.tolerance_se)
        if rejected:
            self.pending = version
        elif best is None or score.mean > best.mean:
            self.best = version
        return rejected

    def gap(self, version: int) -> float:
        """How many standard errors `version` scored below the best."""
        return gap_in_stderr(self.validation[version], self.validation[self.best]) if self.best is not None else 0.0

    def rolled_back(self, version: int, why: str) -> None:
        """`version` is a copy of the best, published by a restore: it is the best from now on."""
        self.rollbacks.append({"rejected": self.pending, "restored": self.best, "version": version, "why": why})
        self.validation[version] = self.validation[self.best]  # the same weights
        self.best, self.pending = version, None

    def below_best(self, version: int) -> bool:
        """Whether `version` scored below the best on validation (the run should not end on it)."""
        return (self.best is not None and version in self.validation
                and self.validation[version].mean < self.validation[self.best].mean)

    def to_json(self) -> dict:
        return {"validation": {v: [s.mean, s.stderr, s.n] for v, s in self.validation.items()}, "best": self.best,
                "pending": self.pending, "rollbacks": self.rollbacks}

    def load(self, state: dict) -> None:
        self.validation = {int(v): Score(*s) for v, s in state.get("validation", {}).items()}
        self.best, self.pending = state.get("best"), state.get("pending")
        self.rollbacks = state.get("rollbacks", [])
