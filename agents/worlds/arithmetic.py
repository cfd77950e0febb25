"""The arithmetic world: the embedded demo's task world, small enough for a CPU, checkable exactly.

    rng = random.Random(0)
    problem = make_problem(2, rng)              # two 2-digit numbers: Problem((37, 48), ("+",))
    prompt = problem.prompt("p0")               # text "What is 37 + 48?", answer "85", difficulty 2
    grade(prompt, "75")                         # (0.5, "The tens digit is wrong: 37 + 48 is 85, not 75.")
    child = mutate(prompt, "deepen", rng)       # eva's mutation kinds, programmatically: answer stays exact

Difficulty is the digits of the longest operand plus one per operand beyond two, so `12 + 7` is 2,
`123 + 45` and `12 + 34 + 5` are 3. A worked answer adds column by column from the ones place, then
states the result: `7+8=15, 3+4+1=8, so 85` (a tiny model learns this in a minute; the bare number,
written most-significant digit first, takes it ten times longer). The checker reads the last number;
the graded reward is the share of its digits right (aligned from the ones place), so a best/worst
pair carries information even when no answer is exact. Every function here is pure and seeded by
the `rng` it is given.

Pieces the demo, the tests and the methods table use:
- `make_problem(level, rng)` and `problems(n, levels, rng)`: the generator (difficulty knobs: digits, operands);
- `grade` / `Checker`: the exact checker with a graded score and a written judgment (CUT's j);
- `mutate`: eva's five mutation kinds for a programmatic creator;
- `demonstrations(...)`: prompts with reference answers, a fraction of them wrong (GSIL vs SFT);
- `held_out(...)`: the evaluation set by difficulty, disjoint from every training prompt set built here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.messages import Prompt

PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]  # non-negative, at least two, added

    @property
    def value(self) -> int:
        return sum(self.operands)

    @property
    def expression(self) -> str:
        return " + ".join(map(str, self.operands))

    @property
    def difficulty(self) -> int:
        return max(len(str(x)) for x in self.operands) + len(self.operands) - 2

    @property
    def text(self) -> str:
        return f"What is {self.expression}?"

    def solution(self, value: int | None = None) -> str:
        """The worked answer: each column's sum from the ones place (with the carry), then the result.
        `value` replaces the stated result (a careless demonstrator's slip)."""
        columns = max(len(str(x)) for x in self.operands)
        carry, steps = 0, []
        for c in range(columns):
            terms = [int(str(x)[-1 - c]) for x in self.operands if c < len(str(x))] + ([carry] if carry else [])
            total = sum(terms)
            steps.append("+".join(map(str, terms)) + f"={total}")
            carry = total // 10
        return ", ".join(steps) + f", so {self.value if value is None else value}"

    def prompt(self, prompt_id: str, **fields) -> Prompt:
        return Prompt(prompt_id=prompt_id, text=self.text, answer=str(self.value), difficulty=self.difficulty,
                      **fields)


def parse(text: str) -> Problem | None:
    """The problem a prompt asks, or None for a text that is not `What is a + b + ...?`."""
    match = re.fullmatch(r"What is (\d+(?: \+ \d+)+)\?", text.strip())
    return Problem(tuple(int(x) for x in match.group(1).split(" + "))) if match else None


def _number(digits: int, rng: random.Random) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def make_problem(level: int, rng: random.Random, operands: int | None = None) -> Problem:
    """A problem of exactly difficulty `level` (>= 1): levels 1-3 are two operands, the longest with
    `level` digits; from level 4 on, extra operands (up to three digits) make up the rest. With `operands`,
    that many, the longest with level - (operands - 2) digits (`make_problem(2, rng, operands=3)`: 3 + 8 + 5)."""
    if level < 1:
        raise ValueError(f"difficulty level must be >= 1, got {level}")
    if operands is not None and not 2 <= operands <= level + 1:
        raise ValueError(f"difficulty {level} has 2 to {level + 1} operands, not {operands}")
    digits = min(level, 3) if operands is None else level - operands + 2
    count = 2 + level - digits
    operands = [_number(digits, rng)] + [_number(rng.randint(1, digits), rng) for _ in range(count - 1)]
    operands[rng.randrange(count)] = _number(digits, rng)  # one operand sets the level
    if max(len(str(x)) for x in operands) < digits:
        operands[0] = _number(digits, rng)
    return Problem(tuple(operands))


def problems(n: int, levels: Sequence[int], rng: random.Random, *, exclude: set[str] = frozenset(),
             distinct: bool = True, operands: int | None = None) -> list[Problem]:
    """`n` problems, levels cycling through `levels` (`operands` as make_problem), none whose text is in `exclude`;
    with `distinct`, no two alike (level 1 has only 100 problems: training sets that repeat use distinct=False)."""
    seen, out = set(exclude), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems at levels {list(levels)}")
        p = make_problem(levels[len(out) % len(levels)], rng, operands)
        if p.text not in seen:
            if distinct:
                seen.add(p.text)
            out.append(p)
    return out


# ---------------------------------------------------------------------- checking and judging
def _given(response: str) -> str | None:
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def grade(prompt: Prompt, response: str) -> tuple[float, str]:
    """(score in [0, 1], written judgment). Score: the share of digit places right, aligned from the
    ones place, over the longer of the two numbers; 1 only for the exact answer."""
    if prompt.answer is None:
        raise ValueError(f"prompt {prompt.prompt_id} has no answer to check against")
    problem = parse(prompt.text)
    statement = f"{problem.expression} is {prompt.answer}" if problem else f"the answer is {prompt.answer}"
    given, answer = _given(response), prompt.answer.strip()
    if given is None:
        return 0.0, f"There is no number in the answer: {statement}."
    if given == answer:
        return 1.0, f"Correct: {statement}."
    if given.startswith("-") != answer.startswith("-"):
        return 0.0, f"The sign is wrong: {statement}, not {given}."
    a, g = answer.lstrip("-"), given.lstrip("-")
    right = sum(x == y for x, y in zip(reversed(a), reversed(g), strict=False))
    score = right / max(len(a), len(g))
    if len(a) != len(g):
        digits = f"{len(g)} digit" + ("s" if len(g) != 1 else "")
        return score, f"The answer has {digits} but should have {len(a)}: {statement}, not {given}."
    wrong = [PLACES[i] if i < len(PLACES) else f"10^{i}" for i, (x, y) in enumerate(zip(reversed(a), reversed(g),
                                                                                          strict=True)) if x != y]
    places = wrong[0] if len(wrong) == 1 else ", ".join(wrong[:-1]) + " and " + wrong[-1]
    verb = "digit is" if len(wrong) == 1 else "digits are"
    return score, f"The {places} {verb} wrong: {statement}, not {given}."


class Checker:
    """The judge's verifier backend for this world: `(prompts, responses, want_judgment) -> [(score, j)]`."""

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool
                 ) -> list[tuple[float, str | None]]:
        graded = [grade(p, r) for p, r in zip(prompts, responses, strict=True)]
        return [(score, judgment if want_judgment else None) for score, judgment in graded]


# ---------------------------------------------------------------------- eva's mutations
def mutate(prompt: Prompt, mutation: str, rng: random.Random) -> Prompt | None:
    """eva's mutation kinds on an arithmetic prompt (the answer stays exact); None if it cannot be mutated.

    add_constraint: one more small operand; deepen: one operand gets a digit more (one more column);
    concretize: digits chosen so that every column carries; more_reasoning: one more operand as long as
    the longest (a whole row more to add); breadth: a new problem of the same shape with rarer, large digits.
    """
    problem = parse(prompt.text)
    if problem is None:
        return None
    xs = list(problem.operands)
    width = max(len(str(x)) for x in xs)
    if mutation == "add_constraint":
        xs.append(_number(rng.randint(1, 2), rng))
    elif mutation == "deepen":
        i = rng.randrange(len(xs))
        xs[i] = xs[i] * 10 + rng.randint(0, 9) if xs[i] else rng.randint(1, 9)
    elif mutation == "concretize":
        xs = [int("".join(str(rng.randint(5, 9)) for _ in str(x))) for x in xs]
    elif mutation == "more_reasoning":
        xs.append(_number(width, rng))
    elif mutation == "breadth":
        xs = [int("".join(str(rng.randint(6, 9)) for _ in str(x))) for x in xs]
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    child = Problem(tuple(xs))
    return None if child.text == prompt.text else child.prompt(prompt.prompt_id)


# ---------------------------------------------------------------------- data sets
def corrupt(value: int, rng: random.Random) -> int:
    """A wrong number one digit away from `value` (what a careless demonstrator writes)."""
    digits = list(str(value))
    i = rng.randrange(len(digits))
    digits[i] = rng.choice([d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)])
    return int("".join(digits))


def demonstrations(problems_: Sequence[Problem], rng: random.Random, *, wrong_fraction: float = 0.0,
                   prefix: str = "seed") -> list[Prompt]:
    """Prompts with a worked demonstration; `wrong_fraction` of them state a wrong result (one digit off)."""
    out = []
    for i, p in enumerate(problems_):
        wrong = rng.random() < wrong_fraction
        demo = p.solution(corrupt(p.value, rng) if wrong else None)
        out.append(p.prompt(f"{prefix}{i}", demonstration=demo))
    return out


def held_out(per_level: Mapping[int, int], seed: int = 10_000, *, prefix: str = "eval",
             exclude: set[str] = frozenset()) -> list[Prompt]:
    """The evaluation set: `per_level[level]` problems of each level, never trained on (seeded apart from
    training sets; build training sets with `exclude={p.text for p in held_out(...)}` to make that certain).
    Ids are PREFIX-LEVEL-I; a second held-out set (validation) takes another prefix and excludes the first's texts."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    for level, count in sorted(per_level.items()):
        for p in problems(count, [level], rng, exclude=set(exclude) | {q.text for q in out}):
            out.append(p.prompt(f"{prefix}-{level}-{len(out)}", source="eval"))
    return out
