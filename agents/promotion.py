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
from dataclasses import dataclass


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
