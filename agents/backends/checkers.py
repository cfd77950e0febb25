"""A task's checkers as the verifier judge calls them: selfplay's contract, TRL's reward functions, and a
weighted sum of several.

    scorer = load_scorer([("mytask.world:check", 1.0), ("mytask.rewards:format_reward", 0.2)])
    scorer(prompts, responses, want_judgment)   # -> [(score, judgment | None)], one per response

Two contracts are accepted (docs/tasks.md):
- selfplay's: `check(prompts: list[Prompt], responses: list[str], want_judgment: bool)` returning one
  `(score, judgment or None)` per response, or one number per response (no judgment);
- TRL's `reward_funcs`: a function with a `completions` parameter, called as
  `f(prompts=[text], completions=[text], answer=[...], demonstration=[...], difficulty=[...])` (only the
  arguments it names, or all of them when it takes **kwargs), returning one number per completion.
A class made with no arguments is instantiated once. Several checkers add up with their weights; the
judgment is the first one given. A result of the wrong shape or type raises ValueError, which the judge
reports on its task (and `selfplay up` before the run starts).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from agents.plugins import load_object
from protocol.messages import Prompt

Scored = tuple[float, str | None]
Scorer = Callable[[Sequence[Prompt], Sequence[str], bool], list[Scored]]
COLUMNS = ("answer", "demonstration", "difficulty")  # Prompt fields a TRL reward function may name


def load_scorer(sources: Sequence[tuple[str, float]]) -> Scorer:
    """The scorer of `module:name` checkers with their weights (one with weight 1: that checker alone)."""
    scorers = []
    for spec, weight in sources:
        obj = load_object(spec)
        scorers.append((as_scorer(obj() if isinstance(obj, type) else obj, spec), weight))
    if len(scorers) == 1 and scorers[0][1] == 1.0:
        return scorers[0][0]
    return weighted(scorers)


def as_scorer(fn: Callable[..., Any], name: str = "checker") -> Scorer:
    """`fn` under either contract, as a selfplay scorer whose results are checked."""
    trl = _takes_completions(fn)

    def score(prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        out = fn(**_arguments(fn, prompts, responses)) if trl else fn(prompts, responses, want_judgment)
        return normalize(out, len(responses), name)

    return score


def weighted(scorers: Sequence[tuple[Scorer, float]]) -> Scorer:
    """Σ weight · score over the scorers; the judgment of the first that writes one."""
    def score(prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        results = [(s(prompts, responses, want_judgment), w) for s, w in scorers]
        return [(sum(w * r[i][0] for r, w in results), next((r[i][1] for r, _ in results if r[i][1]), None))
                for i in range(len(responses))]

    return score


def normalize(out: Any, n: int, name: str) -> list[Scored]:
    """`out` as n (score, judgment | None) pairs; ValueError naming `name` when it is not that."""
    if not isinstance(out, list | tuple) or len(out) != n:
        got = f"{type(out).__name__} of {len(out)}" if isinstance(out, list | tuple) else type(out).__name__
        raise ValueError(f"{name} returned {got} for {n} responses; a checker returns one (score, judgment or None), "
                         "or one number, per response")
    pairs = []
    for item in out:
        score, judgment = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError(f"{name} returned the score {score!r}; scores are finite numbers")
        if judgment is not None and not isinstance(judgment, str):
            raise ValueError(f"{name} returned the judgment {judgment!r}; judgments are text or None")
        pairs.append((float(score), judgment))
    return pairs


def _takes_completions(fn: Callable[..., Any]) -> bool:
    try:
        return "completions" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: selfplay's contract
        return False


def _arguments(fn: Callable[..., Any], prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, list[Any]]:
    """TRL's keyword arguments: prompts, completions and the prompt's columns; only those `fn` names unless it
    takes **kwargs."""
    offered = {"prompts": [p.text for p in prompts], "completions": list(responses),
               **{c: [getattr(p, c) for p in prompts] for c in COLUMNS}}
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {k: v for k, v in offered.items() if k in parameters}
