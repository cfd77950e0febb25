"""Scoring backends and the judge process against a real hub."""

import threading
import time

import pytest

from agents.backends.scoring import AnswerVerifier, LLMJudge, RewardModelScorer, parse_judgment
from agents.judge import Judge
from protocol.messages import ChatTurn, JudgedGroup, JudgeTask, Prompt, Sample
from tests.agents.test_hub import Running

Q = Prompt(prompt_id="q", text="What is 37 + 48?", answer="85")


def test_verifier_reads_the_last_number_and_writes_judgments():
    verify = AnswerVerifier()
    out = verify([Q, Q, Q, Q], ["37 + 48 = 85", "I think 75", "no idea", "85.0"], True)
    assert out == [(1.0, "Correct."), (0.0, "Incorrect: the answer is 85, not 75."),
                   (0.0, "Incorrect: the answer is 85, not no answer."), (1.0, "Correct.")]
    word = Prompt(prompt_id="w", text="Capital of France?", answer="Paris")
    assert verify([word, word], ["paris.", "Lyon"], False) == [(1.0, None), (0.0, None)]
    with pytest.raises(ValueError, match="no answer"):
        verify([Prompt(prompt_id="x", text="?")], ["1"], False)


def test_reward_model_scores_are_batch_independent(tiny_models):
    rm = RewardModelScorer(str(tiny_models.reward), batch_size=3)
    prompts = [Q, Q, Prompt(prompt_id="c", text="", messages=[ChatTurn(role="user", content="Hi")])]
    responses = ["85", "75 because the tens digit was dropped", "Hello"]
    batched = [s for s, _ in rm(prompts, responses, True)]
    alone = [rm([p], [r], True)[0][0] for p, r in zip(prompts, responses, strict=True)]
    assert batched == pytest.approx(alone, rel=1e-4, abs=1e-5)
    assert len(set(batched)) == 3
    assert "<|assistant|>\nHello" in rm.text(prompts[2], "Hello")


def test_llm_judge_reply_parsing():
    assert parse_judgment("Critique: the tens digit is wrong.\nScore: 3") == (0.3, "the tens digit is wrong.")
    assert parse_judgment("critique = fine\nscore=10") == (1.0, "fine")
    assert parse_judgment("Score: 14") == (1.0, "Score: 14")  # clamped; no critique: the whole reply
    assert parse_judgment("rambling") == (0.0, "rambling")


class FakeGenerator:
    """Stands in for a judge *model's* text only; the judge logic around it is real."""

    def __init__(self, reply):
        self.reply, self.asked = reply, []

    def generate(self, prompts, sampling):
        self.asked += prompts
        return [[type("G", (), {"text": self.reply})()] for _ in prompts]


def test_llm_judge_asks_with_the_instruction_and_response():
    gen = FakeGenerator("Critique: wrong sum.\nScore: 2")
    assert LLMJudge(gen)([Q], ["75"], True) == [(0.2, "wrong sum.")]
    assert "Instruction: What is 37 + 48?" in gen.asked[0].text and "Response: 75" in gen.asked[0].text


def test_judge_process_writes_verdicts_and_judgments(tmp_path):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=25)
    stop = threading.Event()
    try:
        creator, judge_link = r.link("creator-0", "creator"), r.link("judge-0", "judge", ["judge"])
        threading.Thread(target=Judge(judge_link, AnswerVerifier()).run, args=(stop,), daemon=True).start()
        samples = [Sample(sample_id=f"s{i}", prompt_id="q", text=t, policy_version=0)
                   for i, t in enumerate(["85", "84"])]
        [task_id] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Q, samples=samples, verdicts=[])],
                                              want_judgment=True)])
        [bad] = creator.submit([JudgeTask(groups=[JudgedGroup(prompt=Prompt(prompt_id="n", text="?"),
                                                              samples=samples[:1], verdicts=[])])])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (r.task(task_id)["state"] != "done" or r.task(bad)["state"] != "dead"):
            time.sleep(0.05)
        verdicts = r.task(task_id)["result"].verdicts
        assert [(v.sample_id, v.score, v.judgment) for v in verdicts] == [
            ("s0", 1.0, "Correct."), ("s1", 0.0, "Incorrect: the answer is 85, not 84.")]
        dead = r.task(bad)
        assert dead["state"] == "dead" and "no answer to verify" in dead["reason"]
    finally:
        stop.set()
        r.close()


def test_llm_judge_runs_on_a_real_model(tiny_models):
    """The untrained tiny model writes nonsense; the pipeline must still give one score in [0, 1] each."""
    from agents.backends.hf import HFGenerator

    out = LLMJudge(HFGenerator(str(tiny_models.policy)), max_new_tokens=8)([Q, Q], ["85", "75"], True)
    assert len(out) == 2 and all(0.0 <= score <= 1.0 for score, _ in out)
