"""The promotion rule: pure functions on validation scores."""

import math

import pytest
from pydantic import ValidationError

from agents.creator import CreatorConfig
from agents.promotion import Score, gap_in_stderr, worse_than


def test_a_score_is_the_mean_and_its_standard_error():
    score = Score.of([1.0, 0.0, 1.0, 0.0])
    assert (score.mean, score.n) == (0.5, 4)
    assert score.stderr == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
    assert Score.of([0.7]).stderr == 0.0
    with pytest.raises(ValueError, match="no validation scores"):
        Score.of([])


@pytest.mark.parametrize("candidate, best, tolerance, worse", [
    (Score(0.50, 0.01, 100), Score(0.60, 0.01, 100), 2.0, True),     # 0.10 below, se of the gap 0.014: 7 se
    (Score(0.58, 0.01, 100), Score(0.60, 0.01, 100), 2.0, False),    # 1.4 se: within the tolerance
    (Score(0.58, 0.01, 100), Score(0.60, 0.01, 100), 1.0, True),     # a tighter tolerance rejects it
    (Score(0.70, 0.01, 100), Score(0.60, 0.01, 100), 0.0, False),    # better than the best
    (Score(0.0, 0.0, 8), Score(1.0, 0.0, 8), 5.0, True),             # certain scores: any drop is infinitely many se
    (Score(1.0, 0.0, 8), Score(1.0, 0.0, 8), 0.0, False),
])
def test_a_version_is_worse_when_it_falls_more_than_the_tolerance_below_the_best(candidate, best, tolerance, worse):
    assert worse_than(candidate, best, tolerance) is worse


def test_the_gap_is_in_standard_errors_of_the_difference():
    assert gap_in_stderr(Score(0.5, 0.03, 10), Score(0.6, 0.04, 10)) == pytest.approx(0.1 / 0.05)
    assert gap_in_stderr(Score(0.6, 0.03, 10), Score(0.5, 0.04, 10)) == pytest.approx(-2.0)


def test_promotion_refuses_an_overlapping_loop_and_a_negative_tolerance():
    with pytest.raises(ValidationError, match="promotion needs max_staleness = 0"):
        CreatorConfig(promotion=True, max_staleness=1)
    with pytest.raises(ValidationError, match="promotion_tolerance_se"):
        CreatorConfig(promotion=True, promotion_tolerance_se=-1)
