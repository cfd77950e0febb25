"""A verifier for math answers written in LaTeX or as expressions (`math-verify`, the `judges` extra):
`\\frac{1}{2}`, `0.5` and `$\\boxed{1/2}$` are the same answer.

    [judge]
    backend = "verifier"
    checker = "agents.backends.mathverify:MathVerifier"

The prompt's `answer` is the reference; the response's last boxed or final answer is compared with it
symbolically. Parsing and comparing run in a pool of processes (spawned, so a judge holding a model is not
forked) with a hard timeout per answer: one that takes longer scores 0 with a judgment that says so, and
the pool is replaced, so a pathological expression never stalls the judge. Score 1 for an equal answer, 0
otherwise, with a judgment that names the answer found.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.pool import Pool

import structlog

from protocol.messages import Prompt

log = structlog.get_logger("agents.backends.mathverify")
Found = tuple[bool, str | None]  # (equal to the reference, the answer found in the response or None)


def verify_answer(reference: str, response: str) -> Found:
    """Whether `response`'s answer equals `reference`, and that answer as read (runs in a pool process)."""
    from math_verify import parse, verify

    try:
        gold = parse(reference) or parse(f"${reference}$")
        found = parse(response)
        if not found:
            return False, None
        return bool(gold and verify(gold, found)), str(found[-1])
    except Exception:  # an answer it cannot read is not an answer, and not the judge's failure
        return False, None


class MathVerifier:
    """The judge's checker: `(prompts, responses, want_judgment) -> [(score, judgment or None)]`."""

    def __init__(self, timeout_s: float = 5.0, processes: int = 2,
                 function: Callable[[str, str], Found] = verify_answer) -> None:
        self.timeout_s, self.processes, self.function = timeout_s, processes, function
        self._pool: Pool | None = None

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], want_judgment: bool
                 ) -> list[tuple[float, str | None]]:
        missing = next((p for p in prompts if p.answer is None), None)
        if missing is not None:
            raise ValueError(f"prompt {missing.prompt_id} has no answer to check against")
        found = self._run([(p.answer or "", r) for p, r in zip(prompts, responses, strict=True)])
        return [(1.0 if equal else 0.0, _judgment(p.answer or "", equal, answer) if want_judgment else None)
                for p, (equal, answer) in zip(prompts, found, strict=True)]

    def _run(self, pairs: list[tuple[str, str]]) -> list[Found]:
        """Every pair through the pool; one past the timeout is (False, "timeout") and the pool is replaced."""
        results: list[Found | None] = [None] * len(pairs)
        todo = list(range(len(pairs)))
        while todo:
            pool = self._pool or self._start()
            jobs = {i: pool.apply_async(self.function, pairs[i]) for i in todo}
            stuck = None
            for i in todo:
                try:
                    results[i] = jobs[i].get(timeout=self.timeout_s)
                except multiprocessing.TimeoutError:
                    results[i], stuck = (False, "timeout"), i
                    break
            if stuck is None:
                break
            log.warning("math verification timed out; replacing the pool", timeout_s=self.timeout_s,
                        response=pairs[stuck][1][:200])
            self.close()
            todo = [i for i in todo if results[i] is None]
        return [r for r in results if r is not None]

    def _start(self) -> Pool:
        self._pool = multiprocessing.get_context("spawn").Pool(self.processes)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _judgment(reference: str, equal: bool, answer: str | None) -> str:
    if answer == "timeout" and not equal:
        return f"The answer could not be checked in time; the answer is {reference}."
    if answer is None:
        return f"No final answer was found in the response; the answer is {reference}."
    return f"Correct: the answer is {reference}." if equal else f"The answer {answer} is wrong; the answer is {reference}."
