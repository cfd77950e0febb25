"""The math-verify checker: LaTeX and plain answers compared symbolically, in a process pool whose hard
timeout a pathological answer cannot outlast."""

import time

import pytest

from agents.backends.mathverify import MathVerifier
from protocol.messages import Prompt


def slow_or_real(reference: str, response: str):
    """A stand-in for an expression that takes forever to compare (runs in the pool's processes)."""
    if response == "hang":
        time.sleep(60)
    from agents.backends.mathverify import verify_answer

    return verify_answer(reference, response)


def _prompt(answer: str) -> Prompt:
    return Prompt(prompt_id="p", text="Compute it.", answer=answer)


def test_latex_and_plain_answers_are_compared_symbolically():
    checker = MathVerifier(timeout_s=30)
    try:
        half, root = _prompt("\\frac{1}{2}"), _prompt("\\frac{\\sqrt{2}}{2}")
        scored = checker([half, half, root, half, half],
                         ["The answer is $0.5$.", "so $\\boxed{\\frac{2}{4}}$", "$\\boxed{\\frac{1}{\\sqrt{2}}}$",
                          "I get $\\frac{1}{3}$", "no idea"], True)
    finally:
        checker.close()
    assert [s for s, _ in scored] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert scored[0][1] == "Correct: the answer is \\frac{1}{2}."
    assert scored[3][1] == "The answer \\frac{1}{3} is wrong; the answer is \\frac{1}{2}." and "No final answer" in scored[4][1]
    with pytest.raises(ValueError, match="no answer"):
        MathVerifier()([Prompt(prompt_id="x", text="?")], ["1"], False)


def test_an_answer_past_the_timeout_scores_0_and_the_rest_are_still_checked():
    checker = MathVerifier(timeout_s=3, processes=1, function=slow_or_real)
    started = time.monotonic()
    try:
        scored = checker([_prompt("2")] * 3, ["$2$", "hang", "$1 + 1$"], True)
    finally:
        checker.close()
    assert [s for s, _ in scored] == [1.0, 0.0, 1.0] and "could not be checked in time" in scored[1][1]
    assert time.monotonic() - started < 30  # not the 60 s the stuck answer would take
