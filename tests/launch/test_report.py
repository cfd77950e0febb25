"""`summarize` on a small ledger built through agents/ledger.py, the figures worked by hand."""

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
