"""The starter task world `selfplay init` copies: prompts with known answers, a graded checker that writes
what is wrong, and eva's mutations that keep answers."""

import random

import pytest

from agents.worlds.reverse import check, make_prompt, make_prompts, mutate, word_of

KINDS = ["add_constraint", "deepen", "concretize", "more_reasoning", "breadth"]


def test_the_checker_grades_letters_in_place_and_says_which_is_wrong():
    prompt = make_prompt("p", 3, random.Random(0), word="kalomi")
    assert prompt.answer == "imolak" and prompt.difficulty == 3 and word_of(prompt) == "kalomi"
    [(right, said), (close, judgment), (short, length), (none, _)] = check(
        [prompt] * 4, ["imolak", "imolek", "imo", "xyz"], True)
    assert right == 1.0 and said.startswith("Correct")
    assert close == pytest.approx(5 / 6) and judgment == "Letter 5 is wrong: 'kalomi' reversed is 'imolak', not 'imolek'."
    assert short == pytest.approx(0.5) and "has 3 letters but should have 6" in length
    assert none == 0.0 and check([prompt], ["imolak"], False) == [(1.0, None)]


def test_prompt_sets_are_disjoint_and_mutations_keep_answers():
    rng = random.Random(1)
    test = make_prompts(50, rng, "test")
    seeds = make_prompts(200, rng, "seed", exclude={word_of(p) for p in test})
    assert not {word_of(p) for p in test} & {word_of(p) for p in seeds}
    assert len({p.prompt_id for p in seeds}) == 200 and {p.difficulty for p in seeds} == {2, 3, 4}
    for kind in KINDS:
        child = mutate(seeds[0], kind, rng)
        assert child.answer == word_of(child)[::-1] and check([child], [child.answer], False) == [(1.0, None)]
    assert len(word_of(mutate(seeds[0], "deepen", rng))) == len(word_of(seeds[0])) + 2
    assert mutate(make_prompt("x", 2, rng).model_copy(update={"text": "no quotes"}), "deepen", rng) is None
