"""Judged groups (protocol messages) become the same rows the offline trainer reads."""

import pytest

from protocol.messages import ChatTurn, JudgedGroup, Prompt, Sample, Verdict
from trainer.methods import check_rows, rows_from_groups


def group(scores, demonstration=None, judgments=None, pid="p1", chat=False):
    prompt = Prompt(prompt_id=pid, text="What is 37 + 48?", demonstration=demonstration, source="evolved",
                    messages=[ChatTurn(role="user", content="What is 37 + 48?")] if chat else [])
    samples = [Sample(sample_id=f"{pid}-s{i}", prompt_id=pid, text=f"answer {i}", policy_version=1)
               for i in range(len(scores))]
    verdicts = [Verdict(sample_id=s.sample_id, score=sc, judgment=(judgments or [None] * len(scores))[i])
                for i, (s, sc) in enumerate(zip(samples, scores, strict=True))]
    return JudgedGroup(prompt=prompt, samples=samples, verdicts=list(reversed(verdicts)))  # order must not matter


def test_pairs_are_best_versus_worst_and_ties_are_skipped():
    rows = rows_from_groups([group([0.2, 1.0, 0.0, 0.5]), group([0.5, 0.5], pid="tie")], "dpo")
    assert len(rows) == 1
    assert (rows[0]["chosen"], rows[0]["rejected"], rows[0]["margin"]) == ("answer 1", "answer 2", 1.0)
    assert rows[0]["source"] == "evolved"
    check_rows(rows, "dpo")


def test_chat_prompts_stay_conversational():
    (row,) = rows_from_groups([group([1.0, 0.0], chat=True)], "simpo")
    assert row["prompt"] == [{"role": "user", "content": "What is 37 + 48?"}]


def test_demonstrations_feed_sft_gsil_and_spin():
    groups = [group([0.0, 1.0], demonstration="85"), group([0.3], pid="nodemo")]
    sft = rows_from_groups(groups, "sft")
    assert [r["completion"] for r in sft] == ["85", "answer 0"]
    gsil = rows_from_groups(groups, "gsil")
    assert gsil == [{"prompt": "What is 37 + 48?", "completion": "85", "generated": "answer 0",
                     "prompt_id": "p1", "source": "evolved"}]
    check_rows(gsil, "spin")


def test_cut_rows_carry_judgments_and_labels():
    rows = rows_from_groups([group([1.0, 0.0, 0.5], judgments=["Correct.", "The tens digit is wrong.", None])], "cut")
    assert [(r["completion"], r["label"]) for r in rows] == [("answer 0", True), ("answer 1", False)]
    check_rows(rows, "cut")


def test_a_missing_verdict_is_an_error():
    g = group([1.0, 0.0])
    broken = JudgedGroup(prompt=g.prompt, samples=g.samples, verdicts=g.verdicts[:1])
    with pytest.raises(ValueError, match="no verdict"):
        rows_from_groups([broken], "dpo")
