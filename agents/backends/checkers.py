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
judgment is the first one given. A checker that raises, or returns a result of the wrong shape or type,
raises CheckerError, which the judge reports on its task without a retry (and `selfplay up` before the run
starts).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from numbers import Real
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


class CheckerError(ValueError):
    """A task's own checker raised, or returned what is not one score per response: the same samples would
    fail the same way again, so the judge fails the task without a retry."""


def as_scorer(fn: Callable[..., Any], name: str = "checker") -> Scorer:
    """`fn` under either contract, as a selfplay scorer whose results are checked. TRL's None ("this reward
    does not apply to this completion") counts 0, as TRL's sum over reward functions does."""
    trl = _is_trl(fn)

    def score(prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool) -> list[Scored]:
        try:
            out = fn(**_arguments(fn, prompts, responses)) if trl else fn(prompts, responses, want_judgment)
        except Exception as e:
            raise CheckerError(f"{name} raised {type(e).__name__}: {e}") from e
        if trl and isinstance(out, list | tuple):
            out = [0.0 if item is None else item for item in out]
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
    """`out` as n (score, judgment | None) pairs; CheckerError naming `name` when it is not that. Numbers of
    any kind count (numpy's and torch's too, and arrays or tensors of them); a pair is any sequence of two."""
    out = out.tolist() if hasattr(out, "tolist") else out
    if not isinstance(out, Sequence) or isinstance(out, str | bytes) or len(out) != n:
        got = f"{type(out).__name__} of {len(out)}" if isinstance(out, Sequence) else type(out).__name__
        raise CheckerError(f"{name} returned {got} for {n} responses; a checker returns one (score, judgment or "
                           "None), or one number, per response")
    pairs = []
    for item in out:
        pair = isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 2
        score, judgment = item if pair else (item, None)
        score = score.item() if hasattr(score, "item") and not isinstance(score, Real) else score
        if isinstance(score, bool) or not isinstance(score, Real) or not math.isfinite(score):
            raise CheckerError(f"{name} returned the score {score!r}; scores are finite numbers")
        if judgment is not None and not isinstance(judgment, str):
            raise CheckerError(f"{name} returned the judgment {judgment!r}; judgments are text or None")
        pairs.append((float(score), judgment))
    return pairs


def _is_trl(fn: Callable[..., Any]) -> bool:
    """TRL's contract names `completions`; selfplay's takes `want_judgment` (whatever it calls the others)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: selfplay's contract
        return False
    return "completions" in parameters and "want_judgment" not in parameters


def _arguments(fn: Callable[..., Any], prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, list[Any]]:
    """TRL's keyword arguments: prompts, completions and the prompt's columns; only those `fn` names unless it
    takes **kwargs."""
    offered = {"prompts": [p.text for p in prompts], "completions": list(responses),
               **{c: [getattr(p, c) for p in prompts] for c in COLUMNS}}
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {k: v for k, v in offered.items() if k in parameters}
