"""A task world of your own: reverse the letters of a made-up word. `selfplay init` copies this file to
DIR/world.py as the starting point of a new task; edit it into yours (docs/tasks.md, the task contract).

    rng = random.Random(0)
    prompt = make_prompt("p0", 3, rng)           # "Reverse the letters of the word 'kalomi'.", answer "imolak"
    check([prompt], ["imolek"], True)            # [(0.833, "Letter 5 is wrong: 'kalomi' reversed is 'imolak', ...")]
    mutate(prompt, "deepen", rng)                # eva's mutation kinds: a new prompt whose answer is known

Three functions are the contract the processes call (the topology names them as `world:check` and
`world:mutate`; the folder you run `selfplay up` from is on Python's path):
- `check(prompts, responses, want_judgment) -> [(score, judgment or None)]`: the judge's verifier, one
  pair per response; the score is the share of letters in the right place (1 only for the exact answer),
  so a group of wrong answers still ranks; the judgment says what is wrong (CUT and hindsight learn from it);
- `mutate(prompt, mutation, rng) -> Prompt | None`: eva's evolver for prompts the policy finds hard; the
  new prompt carries its own answer, so the checker can judge it;
- `make_prompts(n, rng, prefix, exclude)`: the prompt files (`selfplay init` writes seeds, test and
  validation sets with it; the test and validation words never occur among the seeds).
Difficulty is the number of syllables (two letters each).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from protocol.messages import Prompt

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def word_of(prompt: Prompt) -> str | None:
    """The word a prompt asks about: the text between its last pair of single quotes."""
    parts = prompt.text.split("'")
    return parts[-2] if len(parts) >= 3 else None


def make_prompt(prompt_id: str, syllables: int, rng: random.Random, word: str | None = None) -> Prompt:
    word = word or "".join(rng.choice(SYLLABLES) for _ in range(syllables))
    return Prompt(prompt_id=prompt_id, text=f"Reverse the letters of the word '{word}'.", answer=word[::-1],
                  demonstration=word[::-1], difficulty=len(word) // 2)


def make_prompts(n: int, rng: random.Random, prefix: str, exclude: set[str] = frozenset(),
                 levels: Sequence[int] = (2, 3, 4)) -> list[Prompt]:
    """`n` prompts with distinct words, levels cycling through `levels`, none whose word is in `exclude`."""
    seen, out = set(exclude), []
    while len(out) < n:
        prompt = make_prompt(f"{prefix}{len(out)}", levels[len(out) % len(levels)], rng)
        if word_of(prompt) not in seen:
            seen.add(word_of(prompt))
            out.append(prompt)
    return out


def grade(prompt: Prompt, response: str) -> tuple[float, str]:
    """(score in [0, 1], judgment): the share of letters in place, over the longer of answer and response."""
    if prompt.answer is None:
        raise ValueError(f"prompt {prompt.prompt_id} has no answer to check against")
    answer, given = prompt.answer, response.strip().strip("'\".").lower()
    statement = f"'{word_of(prompt)}' reversed is '{answer}'"
    if given == answer:
        return 1.0, f"Correct: {statement}."
    right = sum(a == g for a, g in zip(answer, given, strict=False))
    score = right / max(len(answer), len(given), 1)
    if len(given) != len(answer):
        return score, f"The answer has {len(given)} letters but should have {len(answer)}: {statement}."
    first = next(i for i, (a, g) in enumerate(zip(answer, given, strict=True)) if a != g) + 1
    return score, f"Letter {first} is wrong: {statement}, not '{given}'."


def check(prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[tuple[float, str | None]]:
    """The judge's verifier: one (score, judgment or None) per response."""
    graded = [grade(p, r) for p, r in zip(prompts, responses, strict=True)]
    return [(score, judgment if want_judgment else None) for score, judgment in graded]


def mutate(prompt: Prompt, mutation: str, rng: random.Random) -> Prompt | None:
    """eva's mutation kinds (add_constraint, deepen, concretize, more_reasoning, breadth) as word edits; None
    for a prompt that is not this world's."""
    word = word_of(prompt)
    if not word:
        return None
    if mutation in ("add_constraint", "deepen", "more_reasoning"):  # harder: one syllable more
        word = word + rng.choice(SYLLABLES)
    elif mutation == "concretize":  # a word of the same length whose syllables repeat less
        word = "".join(rng.sample(SYLLABLES, max(1, len(word) // 2)))
    elif mutation == "breadth":  # another word of the same length
        word = "".join(rng.choice(SYLLABLES) for _ in range(max(1, len(word) // 2)))
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    return make_prompt(prompt.prompt_id, len(word) // 2, rng, word=word)
