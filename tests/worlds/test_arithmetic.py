"""The arithmetic world: exact answers, graded scores, judgments that name the wrong digit, mutations
that keep answers exact, noisy demonstrations and a held-out set disjoint from training sets."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.creator import MUTATIONS
from agents.worlds import arithmetic as A


def test_problem_text_value_difficulty_and_worked_solution():
    p = A.Problem((37, 48))
    assert (p.text, p.value, p.difficulty) == ("What is 37 + 48?", 85, 2)
    assert p.solution() == "7+8=15, 3+4+1=8, so 85"
    assert A.Problem((95, 97)).solution() == "5+7=12, 9+9+1=19, so 192"
    assert A.Problem((123, 45, 6)).solution() == "3+5+6=14, 2+4+1=7, 1=1, so 174"
    assert A.Problem((123, 45, 6)).difficulty == 4  # three digits, one operand beyond two
    assert A.parse("What is 12 + 3 + 400?") == A.Problem((12, 3, 400))
    assert A.parse("What is 12 - 3?") is None and A.parse("Tell me a joke") is None


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_make_problem_has_exactly_the_level_asked(level):
    rng = random.Random(level)
    assert all(A.make_problem(level, rng).difficulty == level for _ in range(200))


@pytest.mark.parametrize("level, operands", [(2, 2), (2, 3), (3, 3), (4, 3), (3, 4)])
def test_make_problem_with_operands_has_that_many_and_the_level_asked(level, operands):
    rng = random.Random(level * 10 + operands)
    made = [A.make_problem(level, rng, operands) for _ in range(200)]
    assert all(p.difficulty == level and len(p.operands) == operands for p in made)
    with pytest.raises(ValueError, match="difficulty 2 has 2 to 3 operands, not 4"):
        A.make_problem(2, rng, 4)


def test_a_second_held_out_set_is_disjoint_from_the_first():
    test = A.held_out({2: 60, 3: 50})
    validation = A.held_out({2: 60, 3: 50}, seed=20_000, prefix="validation", exclude={p.text for p in test})
    assert not {p.text for p in test} & {p.text for p in validation}
    assert not {p.prompt_id for p in test} & {p.prompt_id for p in validation}
    assert all(p.prompt_id.startswith("validation-") for p in validation)


def test_grade_is_graded_by_digit_and_the_judgment_names_what_is_wrong():
    p = A.Problem((37, 48)).prompt("p")
    assert A.grade(p, "7+8=15, 3+4+1=8, so 85") == (1.0, "Correct: 37 + 48 is 85.")
    assert A.grade(p, "so 75") == (0.5, "The tens digit is wrong: 37 + 48 is 85, not 75.")
    assert A.grade(p, "so 74") == (0.0, "The ones and tens digits are wrong: 37 + 48 is 85, not 74.")
    assert A.grade(p, "so 185") == (2 / 3, "The answer has 3 digits but should have 2: 37 + 48 is 85, not 185.")
    assert A.grade(p, "so -85")[0] == 0.0 and "sign" in A.grade(p, "so -85")[1]
    assert A.grade(p, "I do not know") == (0.0, "There is no number in the answer: 37 + 48 is 85.")
    assert A.Checker()([p, p], ["so 85", "so 75"], False) == [(1.0, None), (0.5, None)]
    assert A.Checker()([p], ["so 75"], True)[0][1].startswith("The tens digit is wrong")


@given(st.integers(0, 2**32), st.sampled_from(MUTATIONS), st.integers(1, 5))
def test_every_mutation_keeps_the_answer_exact(seed, mutation, level):
    rng = random.Random(seed)
    parent = A.make_problem(level, rng).prompt("p")
    child = A.mutate(parent, mutation, rng)
    if child is None:  # only when the mutation could not change the text
        return
    assert child.text != parent.text
    assert int(child.answer) == A.parse(child.text).value
    assert child.difficulty == A.parse(child.text).difficulty


def test_mutations_make_the_kinds_they_promise():
    rng = random.Random(0)
    parent = A.Problem((37, 48)).prompt("p")
    assert len(A.parse(A.mutate(parent, "add_constraint", rng).text).operands) == 3
    assert len(A.parse(A.mutate(parent, "more_reasoning", rng).text).operands) == 3
    assert A.parse(A.mutate(parent, "deepen", rng).text).difficulty == 3
    concrete = A.parse(A.mutate(parent, "concretize", rng).text).operands
    assert all(int(d) >= 5 for x in concrete for d in str(x))  # every column carries
    assert A.mutate(A.Problem((1, 2)).prompt("p").model_copy(update={"text": "not arithmetic"}), "deepen", rng) is None


def test_demonstrations_are_wrong_in_the_fraction_asked():
    rng = random.Random(0)
    demos = A.demonstrations(A.problems(400, [2, 3], rng), rng, wrong_fraction=0.25)
    wrong = [d for d in demos if A.grade(d, d.demonstration)[0] < 1.0]
    assert 0.18 < len(wrong) / len(demos) < 0.32
    assert all(A.grade(d, d.demonstration)[0] > 0 for d in wrong)  # one digit off, not nonsense
    clean = A.demonstrations(A.problems(50, [2], rng), rng)
    assert all(d.demonstration == A.parse(d.text).solution() for d in clean)


def test_held_out_set_is_disjoint_and_reproducible():
    held = A.held_out({2: 60, 3: 50, 4: 40})
    assert held == A.held_out({2: 60, 3: 50, 4: 40})
    assert len({p.text for p in held}) == 150 and {p.source for p in held} == {"eval"}
    assert [sum(p.difficulty == level for p in held) for level in (2, 3, 4)] == [60, 50, 40]
    train = A.problems(2000, [2, 3], random.Random(1), exclude={p.text for p in held}, distinct=False)
    assert not {p.text for p in train} & {p.text for p in held}
    with pytest.raises(ValueError, match="cannot draw"):
        A.problems(101, [1], random.Random(0))  # there are only 100 one-digit sums
