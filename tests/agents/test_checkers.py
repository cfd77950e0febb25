"""A task's checkers under selfplay's contract and TRL's, alone and weighted, as the judge process uses them."""

import sys
import threading
import time

import pytest

from agents.backends.checkers import as_scorer, load_scorer, normalize
from agents.judge import Judge
from protocol.messages import JudgedGroup, JudgeTask, Prompt, Sample
from tests.agents.test_hub import Running

Q = Prompt(prompt_id="q", text="What is 37 + 48?", answer="85", difficulty=2)

REWARDS = '''
def check(prompts, responses, want_judgment):            # selfplay's contract
    return [(float(r.strip() == p.answer), "right" if r.strip() == p.answer else "wrong")
            for p, r in zip(prompts, responses)]

def accuracy(prompts, completions, answer, **kwargs):    # TRL's: the columns it names, and **kwargs
    assert kwargs["difficulty"] == [2] * len(completions)
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def short(completions):                                  # TRL's, no columns
    return [1.0 if len(c) <= 2 else 0.0 for c in completions]

class Length:                                            # a class made with no arguments
    def __call__(self, prompts, responses, want_judgment):
        return [float(len(r)) for r in responses]         # numbers alone: no judgment
'''


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    name = f"rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_both_contracts_and_a_weighted_sum(rewards_module):
    m = rewards_module
    responses = ["85", "84", "85 "]
    assert load_scorer([(f"{m}:check", 1.0)])([Q] * 3, responses, True) == [
        (1.0, "right"), (0.0, "wrong"), (1.0, "right")]
    assert load_scorer([(f"{m}:accuracy", 1.0)])([Q] * 3, responses, True) == [(1.0, None), (0.0, None), (1.0, None)]
    assert load_scorer([(f"{m}:Length", 1.0)])([Q], ["abc"], True) == [(3.0, None)]
    combined = load_scorer([(f"{m}:accuracy", 1.0), (f"{m}:short", 0.5), (f"{m}:check", 2.0)])
    assert combined([Q] * 3, responses, True) == [(3.5, "right"), (0.5, "wrong"), (3.0, "right")]


@pytest.mark.parametrize("out, problem", [
    (0.5, "returned float for 1 responses"),
    ([1.0, 0.0], "returned list of 2 for 1 responses"),
    ([None], "returned the score None"),  # TRL's 'not applicable' is for TRL's contract only
    ([[1.0, "a", "b"]], "returned the score"),
    ("1", "returned str"),
    ([float("inf")], "returned the score inf"),
    ([True], "returned the score True"),
    ([(1.0, 3)], "returned the judgment 3"),
])
def test_a_result_of_the_wrong_shape_is_named(out, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        normalize(out, 1, "mine")
    with pytest.raises(ValueError, match="mine returned"):
        as_scorer(lambda prompts, responses, want: out, "mine")([Q], ["85"], True)


def test_numbers_of_any_kind_and_pairs_of_any_sequence_are_scores():
    import numpy as np
    import torch

    assert normalize(np.array([1, 0.5]), 2, "m") == [(1.0, None), (0.5, None)]
    assert normalize(torch.tensor([0.25, 1.0]), 2, "m") == [(0.25, None), (1.0, None)]
    assert normalize([np.float32(0.5), torch.tensor(2.0), np.int64(3)], 3, "m") == [
        (0.5, None), (2.0, None), (3.0, None)]
    assert normalize([[1.0, "right"], (0, None)], 2, "m") == [(1.0, "right"), (0.0, None)]
    with pytest.raises(ValueError, match="the score True"):
        normalize([np.bool_(True)], 1, "m")


def test_trl_none_counts_zero_and_the_contract_follows_want_judgment():
    def trl(completions, **kwargs):
        return [None if c == "skip" else 1.0 for c in completions]

    assert as_scorer(trl)([Q, Q], ["85", "skip"], False) == [(1.0, None), (0.0, None)]

    def mine(prompts, completions, want_judgment):  # selfplay's contract, whatever it calls the responses
        return [(1.0, "ok" if want_judgment else None) for _ in completions]

    assert as_scorer(mine)([Q], ["85"], True) == [(1.0, "ok")]


def test_the_judge_process_scores_with_weighted_trl_rewards(tmp_path, rewards_module):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=25)
    stop = threading.Event()
    try:
        scorer = load_scorer([(f"{rewards_module}:accuracy", 1.0), (f"{rewards_module}:short", 0.25)])
        creator, judge_link = r.link("creator-0", "creator"), r.link("judge-0", "judge", ["judge"])
        threading.Thread(target=Judge(judge_link, scorer).run, args=(stop,), daemon=True).start()
        samples = [Sample(sample_id=f"s{i}", prompt_id="q", text=t, policy_version=0)
                   for i, t in enumerate(["85", "84", "it is 85"])]
        [task_id] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Q, samples=samples, verdicts=[])])])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and r.task(task_id)["state"] != "done":
            time.sleep(0.05)
        assert [(v.sample_id, v.score) for v in r.task(task_id)["result"].verdicts] == [
            ("s0", 1.25), ("s1", 0.25), ("s2", 0.0)]
    finally:
        stop.set()
        r.close()


def test_a_checker_that_raises_fails_its_task_and_the_judge_goes_on(tmp_path, rewards_module):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=25)
    stop = threading.Event()
    try:
        scorer = load_scorer([(f"{rewards_module}:accuracy", 1.0)])  # asserts difficulty 2: Q passes, this fails
        creator, judge_link = r.link("creator-0", "creator"), r.link("judge-0", "judge", ["judge"])
        threading.Thread(target=Judge(judge_link, scorer).run, args=(stop,), daemon=True).start()
        other = Prompt(prompt_id="o", text="What is 1 + 1?", answer="2", difficulty=1)
        sample = Sample(sample_id="s0", prompt_id="o", text="2", policy_version=0)
        [bad] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=other, samples=[sample], verdicts=[])])])
        good = Sample(sample_id="s1", prompt_id="q", text="85", policy_version=0)
        [ok] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Q, samples=[good], verdicts=[])])])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (r.task(bad)["state"] != "dead" or r.task(ok)["state"] != "done"):
            time.sleep(0.05)
        assert r.task(bad)["state"] == "dead" and f"{rewards_module}:accuracy raised AssertionError" in r.task(bad)["reason"]
        assert [v.score for v in r.task(ok)["result"].verdicts] == [1.0]
    finally:
        stop.set()
        r.close()


def test_a_backend_scorer_that_fails_once_is_retried_not_killed(tmp_path):
    """Only a task's own checker fails its task for good; a scorer's transient error (a reward model out of
    memory, a judge server restarting) fails the attempt, and the hub dispatches the task again."""
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=25)
    stop = threading.Event()
    calls = []

    def flaky(prompts, responses, want_judgment):
        calls.append(len(responses))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return [(1.0, None)] * len(responses)

    try:
        creator, judge_link = r.link("creator-0", "creator"), r.link("judge-0", "judge", ["judge"])
        threading.Thread(target=Judge(judge_link, flaky).run, args=(stop,), daemon=True).start()
        sample = Sample(sample_id="s0", prompt_id="q", text="85", policy_version=0)
        [task_id] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Q, samples=[sample], verdicts=[])])])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and r.task(task_id)["state"] not in ("done", "dead"):
            time.sleep(0.05)
        assert r.task(task_id)["state"] == "done" and len(calls) == 2
    finally:
        stop.set()
        r.close()
