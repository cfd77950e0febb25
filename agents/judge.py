"""The judge process: scores every sample of a judge task and, when asked, writes a judgment.

    Judge(link, AnswerVerifier()).run(stop_event)      # or RewardModelScorer / LLMJudge

One verdict per sample, in task order; a task the backend cannot score (say, a verifier meeting a
prompt without an answer, or a scorer giving NaN) fails as not retryable, with the reason, instead of
looping.
"""

from __future__ import annotations

import math
import threading

import structlog

from agents.agent import AgentLink
from agents.backends.scoring import Scorer
from protocol.constants import MAX_REAL
from protocol.messages import Assign, JudgeResult, Verdict

log = structlog.get_logger("agents.judge")


class Judge:
    def __init__(self, link: AgentLink, scorer: Scorer) -> None:
        self.link, self.scorer = link, scorer

    def run(self, stop: threading.Event) -> None:
        self.link.serve(self.judge, stop)

    def judge(self, assign: Assign) -> None:
        task = assign.task
        if task.kind != "judge_task":
            return self.link.fail(assign, f"a judge does not take {task.kind}", retryable=True)
        pairs = [(group.prompt, sample) for group in task.groups for sample in group.samples]
        try:
            scored = self.scorer([p for p, _ in pairs], [s.text for _, s in pairs], task.want_judgment)
        except ValueError as e:  # a prompt it cannot score, or a task's own checker failing (CheckerError)
            log.warning("cannot judge task", task_id=assign.task_id, error=str(e))
            return self.link.fail(assign, str(e), retryable=False)
        bad = next(((s.sample_id, score) for (_, s), (score, _) in zip(pairs, scored, strict=True)
                    if not (math.isfinite(score) and abs(score) <= MAX_REAL)), None)
        if bad is not None:  # the same scorer would say the same again: no retry
            log.warning("score out of range", task_id=assign.task_id, sample_id=bad[0], score=bad[1])
            return self.link.fail(assign, f"the scorer gave sample {bad[0]} the score {bad[1]}; scores must be "
                                          f"finite and at most {MAX_REAL:g} in size", retryable=False)
        verdicts = [Verdict(sample_id=s.sample_id, score=score, judgment=judgment)
                    for (_, s), (score, judgment) in zip(pairs, scored, strict=True)]
        self.link.complete(assign, JudgeResult(verdicts=verdicts))
