"""eva's creator logic (docs/live.md, *eva's rounds*) as pure functions: estimate, sample, evolve, mix.

    scores = informativeness(group_rewards, "reward_gap")       # one number per prompt
    chosen = sample_prompts(scores, fraction=0.25, rng=rng)      # indices, without replacement
    meta = meta_prompt(prompt.text, "deepen")                    # what an LLM evolver is asked
    new_text = parse_rewrite(llm_output)                         # its answer, cleaned (or None)
    keep = filter_prompts(candidates, existing, max_chars=2000)  # no empties, duplicates, over-long
    batch = mix(old_pairs, new_pairs, total=64, old_fraction=0.2, rng=rng)

The creator process (agents/creator.py) is the event loop around these; a task world can
replace the LLM evolver with a programmatic mutator of the same kinds.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal, TypeVar

Informativeness = Literal["reward_gap", "reward_maxmean", "reward_var", "reward_mean", "uniform"]
MUTATIONS = ("add_constraint", "deepen", "concretize", "more_reasoning", "breadth")
T = TypeVar("T")


def informativeness(rewards: Sequence[float], method: Informativeness = "reward_gap") -> float:
    """How much a prompt can teach, from the rewards of its n sampled answers.

    reward_gap (default): max - min, the margin of the (best, worst) pair it would give;
    reward_maxmean: max - mean; reward_var: variance; reward_mean: -mean (hard prompts first);
    uniform: 1.
    """
    if not rewards:
        raise ValueError("informativeness needs at least one reward")
    mean = sum(rewards) / len(rewards)
    if method == "reward_gap":
        return max(rewards) - min(rewards)
    if method == "reward_maxmean":
        return max(rewards) - mean
    if method == "reward_var":
        return sum((r - mean) ** 2 for r in rewards) / len(rewards)
    if method == "reward_mean":
        return -mean
    if method == "uniform":
        return 1.0
    raise ValueError(f"unknown informativeness {method!r}")


def sample_prompts(scores: Sequence[float], *, fraction: float = 0.25, method: Literal["weighted", "greedy"] = "weighted",
                   rng: random.Random) -> list[int]:
    """Indices of round(fraction * n) prompts (at least 1), without replacement.

    weighted (eva): weights = min-max normalised scores / their sum. The least informative prompt
    gets weight 0, as in the released code; when fewer prompts have a positive weight than are
    asked for, the rest are drawn uniformly from the others (the released code would fail there).
    greedy: the top-k scores.
    """
    n = len(scores)
    k = min(n, max(1, round(fraction * n)))
    if method == "greedy":
        return sorted(range(n), key=lambda i: (-scores[i], i))[:k]
    low, high = min(scores), max(scores)
    weights = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
    chosen: list[int] = []
    pool = [i for i in range(n) if weights[i] > 0]
    while pool and len(chosen) < k:  # sequential weighted draws = sampling without replacement
        pick = rng.choices(pool, weights=[weights[i] for i in pool])[0]
        chosen.append(pick)
        pool.remove(pick)
    rest = [i for i in range(n) if i not in chosen]
    chosen += rng.sample(rest, k - len(chosen))
    return chosen


_INSTRUCTIONS = {
    "add_constraint": "Rewrite the prompt so that it adds one more constraint or requirement the answer must meet.",
    "deepen": "Rewrite the prompt so that it asks about the same topic in more depth and breadth.",
    "concretize": "Rewrite the prompt so that it replaces general concepts with more specific ones.",
    "more_reasoning": "Rewrite the prompt so that answering it explicitly needs several steps of reasoning.",
    "breadth": "Write a brand-new prompt in the same domain as the given one, on a rarer, less common topic.",
}
_REWRITE_FORMAT = ("Keep it self-contained and answerable, do not answer it, and reply with the new prompt only, "
                   "after the line '#New Prompt#:'.")


def meta_prompt(prompt: str, mutation: str) -> str:
    """The instruction an LLM evolver receives for one mutation (in-depth kinds and in-breadth)."""
    if mutation not in _INSTRUCTIONS:
        raise ValueError(f"unknown mutation {mutation!r}; one of {', '.join(MUTATIONS)}")
    return f"{_INSTRUCTIONS[mutation]} {_REWRITE_FORMAT}\n\n#Given Prompt#:\n{prompt}\n\n#New Prompt#:\n"


_LABEL = re.compile(r"^\s*#?\s*(new|rewritten|created|given)\s+prompt\s*#?\s*:?\s*", re.IGNORECASE)


def parse_rewrite(output: str) -> str | None:
    """The evolver's new prompt: text after the last '#New Prompt#:' marker, labels stripped; None if empty."""
    text = output.rsplit("#New Prompt#:", 1)[-1]
    text = _LABEL.sub("", text.strip()).strip()
    return text or None


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def filter_prompts(candidates: Sequence[str | None], existing: Sequence[str], *, max_chars: int = 2000) -> list[int]:
    """Indices of candidates to keep: not empty, not over-long, not a duplicate of the pool or of each other."""
    seen = {_normal(t) for t in existing}
    keep = []
    for i, text in enumerate(candidates):
        if not text or not text.strip() or len(text) > max_chars:
            continue
        key = _normal(text)
        if key in seen:
            continue
        seen.add(key)
        keep.append(i)
    return keep


def mix(old: Sequence[T], new: Sequence[T], *, total: int, old_fraction: float = 0.2, rng: random.Random) -> list[T]:
    """`total` items, old_fraction of them from `old` (eva: 20% old prompts, 80% evolved), the rest
    from `new`; a side that runs short is topped up from the other. Drawn without replacement."""
    want_old = min(len(old), round(old_fraction * total))
    want_new = min(len(new), total - want_old)
    want_old = min(len(old), total - want_new)  # top up from old if new ran short
    picked = rng.sample(list(old), want_old) + rng.sample(list(new), want_new)
    rng.shuffle(picked)
    return picked
