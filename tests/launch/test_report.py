"""`summarize` on a small ledger built through agents/ledger.py, the figures worked by hand."""

import json
import math

import pytest

from agents.ledger import Ledger
from launch.report import summarize
from tests.agents.test_ledger_query import build_run


def test_summary_of_a_small_run(tmp_path):
    """Held-out: v0 answers e1 (level 2) right and e2 (level 3) wrong, v1 both right (v0's later second answer
    to e1, wrong, does not count). Training reward: v0 scored 0.5 and 1.0 on p1, v1 0.0. Samples 1 s to 11 s."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    build_run(ledger)
    summary = summarize(tmp_path)
    ledger.close()
    se = math.sqrt(0.5 * 0.5 / 2)
    assert (summary["acc_before"], summary["acc_after"], summary["eval_prompts"]) == (0.5, 1.0, 2)
    assert summary["acc_stderr"] == pytest.approx(se) and summary["gain_in_stderr"] == pytest.approx(0.5 / se)
    assert {lv: (a["before"]["acc"], a["after"]["acc"]) for lv, a in summary["acc_by_difficulty"].items()} == \
        {"2": (1.0, 1.0), "3": (0.0, 1.0)}
    assert summary["reward_by_version"] == {"0": {"mean": 0.75, "samples": 2}, "1": {"mean": 0.0, "samples": 1}}
    assert summary["evolved_by_mutation"] == {"deepen": 2, "widen": 1}
    assert (summary["rounds"], summary["samples"], summary["samples_per_s"]) == (2, 8, 0.8)
    assert summary["tasks"] == {"done": 6, "dead": 1, "queued": 1}


def test_a_run_with_promotion_reports_validation_promotions_and_rollbacks(tmp_path):
    """On top of the small run: v0 is validated at 0.0, v1 at 1.0 (promoted: above every version before); v2 at 0.0, tested at
    0.0; v3 restores v1 (a rollback) and tests at 1.0 again. The best test accuracy is v1's, the final v3's."""
    from agents.ledger_query import LedgerReader
    from launch.report import write_report
    from protocol.messages import Prompt, TrainingReport, TrainTask
    from tests.agents.test_ledger_query import E1, E2, solve_and_judge

    ledger = Ledger(tmp_path / "ledger.sqlite")
    build_run(ledger)
    ledger.lease("generate", "solver-1", 1, 1000, now=59)  # the small run's queued task, out of the way
    val = Prompt(prompt_id="v1", text="What is 5 + 5?", source="validation", difficulty=2)
    solve_and_judge(ledger, [(val, 0, 0.0), (val, 1, 1.0)], now=60)
    [keep] = ledger.submit([TrainTask(groups=[], round=2, best=1)], now=70)
    ledger.lease("train", "trainer-0", 1, 30, now=70)
    ledger.complete(keep, 1, TrainingReport(policy_version=2, step=4, examples=8), now=71)
    solve_and_judge(ledger, [(val, 2, 0.0), (E1, 2, 0.0), (E2, 2, 0.0)], now=80)
    ledger.record_policy(3, 2, None, 0, now=89)
    [restore] = ledger.submit([TrainTask(groups=[], round=2, best=1, restore=1)], now=90)
    ledger.lease("train", "trainer-0", 1, 30, now=90)
    ledger.complete(restore, 1, TrainingReport(policy_version=3, step=4, examples=0, metrics={"restored_from": 1.0}),
                    now=91)
    solve_and_judge(ledger, [(E1, 3, 1.0), (E2, 3, 1.0)], now=100)
    summary = summarize(tmp_path)
    with LedgerReader.for_run(tmp_path) as reader:
        assert reader.restores() == {3: 1}
    ledger.close()
    assert summary["validation_by_version"] == {"0": 0.0, "1": 1.0, "2": 0.0}
    assert summary["rounds"] == 2  # v1, v2 trained; v3 a rollback
    assert summary["promotions"] == [1] and summary["rollbacks"] == {"3": 1}
    assert summary["acc_best"]["version"] == 1 and summary["acc_final"]["version"] == 3
    assert summary["acc_final"]["acc"] == summary["acc_best"]["acc"] == 1.0
    assert summary["acc_by_version"]["2"]["acc"] == 0.0  # the rejected version is reported, not hidden
    assert write_report(summary, tmp_path / "report.png").stat().st_size > 10_000

    # once the creator has ended, its own scores (by its promotion metric, here not the mean) decide what is marked
    (tmp_path / "creator-done.json").write_text(json.dumps({"validation": {"0": 0.25, "1": 0.5, "2": 0.75}}))
    decided = summarize(tmp_path)
    assert decided["validation_by_version"] == {"0": 0.25, "1": 0.5, "2": 0.75}
    assert decided["promotions"] == [1, 2]


@pytest.mark.parametrize("judge, metric, before, after", [
    ('backend = "reward_model"\nmodel = "rm"', "mean score", 0.6, 0.8),  # scores are not right or wrong: their mean
    ('backend = "verifier"', "accuracy", 0.0, 0.0),  # no answer scored 1: none solved
    ('backend = "verifier"\nrewards = [{checker = "m:a", weight = 1.0}, {checker = "m:b", weight = 0.2}]',
     "mean score", 0.6, 0.8),  # a weighted sum: 1 means nothing in particular
    ('backend = "verifier"\nrewards = [{checker = "m:a", weight = 1.0}]', "accuracy", 0.0, 0.0),
    (None, "accuracy", 0.0, 0.0),  # no topology copy (an older run): the verifier's rule, as before
])
def test_the_held_out_figure_follows_the_judge(tmp_path, judge, metric, before, after):
    from tests.agents.test_ledger_query import E1, E2, solve_and_judge

    if judge is not None:
        (tmp_path / "topology.toml").write_text(f'[run]\ndir = "."\n[judge]\n{judge}\n')
    ledger = Ledger(tmp_path / "ledger.sqlite")
    solve_and_judge(ledger, [(E1, 0, 0.4), (E2, 0, 0.8), (E1, 1, 0.9), (E2, 1, 0.7)], now=10)
    summary = summarize(tmp_path)
    ledger.close()
    assert summary["metric"] == metric
    assert (summary["acc_before"], summary["acc_after"]) == (pytest.approx(before), pytest.approx(after))
    if metric == "mean score":
        assert summary["acc_by_version"]["0"]["stderr"] == pytest.approx(math.sqrt(0.08 / 2))  # sample variance 0.08, n 2
