"""The methods table: its statistics, the frames and verdicts its arms use, and a --quick run of every arm
through the real command (real processes, tiny real models), resumed from its saved results."""

import json
import math
import subprocess
from pathlib import Path

import pytest

from studies.methods_table.arms import ARMS
from studies.methods_table.context import Context
from studies.methods_table.table import accuracy
from studies.methods_table.world import quick_budget, verdict
from tests.launch.test_cli import SELFPLAY

ROOT = Path(__file__).resolve().parents[2]


def test_accuracy_adds_seed_spread_to_the_binomial_error():
    one = accuracy([[1.0, 1.0, 0.5, 0.0]])  # 2 of 4 exactly right
    assert one["acc"] == 0.5 and one["se"] == pytest.approx(math.sqrt(0.25 / 4))
    same = accuracy([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])  # seeds agree on the accuracy
    assert same["se"] == pytest.approx(math.sqrt(0.25 / 4))
    spread = accuracy([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 0.75 and 0.25
    assert spread["acc"] == 0.5
    assert spread["se"] == pytest.approx(math.sqrt(0.25 / 4 + 0.125 / 2))


def test_hindsight_verdicts_do_not_carry_the_answer():
    assert verdict("The tens digit is wrong: 37 + 48 is 85, not 75.") == "The tens digit is wrong."
    assert verdict("Correct: 37 + 48 is 85.") == "Correct."  # what the hindsight arm is asked with


def test_fit_gives_every_arm_exactly_k_examples(tmp_path):
    ctx = Context(quick_budget(examples_per_round=5), data=None, seed=0, out=tmp_path)
    policy = type("P", (), {"record": type("R", (), {"notes": {}})()})()
    rows = [{"i": i} for i in range(12)]
    assert len(ctx.fit(policy, rows)) == 5 and len({r["i"] for r in ctx.fit(policy, rows)}) == 5
    short = ctx.fit(policy, rows[:2])  # repeated when short, and noted
    assert len(short) == 5 and {r["i"] for r in short} == {0, 1} and policy.record.notes["short_rounds"] == 1
    assert ctx.fit(policy, []) == []


def test_arms_are_data_and_a_bad_arm_is_named(tmp_path):
    from studies.methods_table.arms import load_arms

    assert {ARMS["grpo"].group, ARMS["rloo"].group} == {"rewards"} and ARMS["dpo+nll"].algo == ARMS["dpo"].algo
    bad = tmp_path / "arms.toml"
    bad.write_text('[[arm]]\nname = "x"\ngroup = "pairs"\nabout = "x"\nalgo = "ppo"\n')
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        load_arms(bad)
    bad.write_text('[[arm]]\nname = "x"\ngroup = "vibes"\nabout = "x"\nalgo = "dpo"\n')
    with pytest.raises(ValueError, match="arm 'x': unknown group 'vibes'"):
        load_arms(bad)
    bad.write_text('[[arm]]\nname = "x"\ngroup = "pairs"\nabout = "x"\nalgo = "dpo"\nas_sfft = true\n')
    with pytest.raises(ValueError, match="arm 'x': as_sfft is not a key of a pairs arm"):
        load_arms(bad)


def test_bad_arguments_are_one_line(tmp_path):
    for args, problem in ((["--methods", "dpo,nope"], "unknown method 'nope'"),
                          (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
                          (["--rounds", "0"], "--rounds must be at least 1")):
        out = subprocess.run([SELFPLAY, "bench", "methods", *args, "--work", str(tmp_path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and problem in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_quick_table_runs_every_arm_and_resumes(tmp_path):
    work, report = tmp_path / "work", tmp_path / "report"
    command = [SELFPLAY, "bench", "methods", "--quick", "--work", str(work), "--out", str(report)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    figures = json.loads(first.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "methods" and set(figures["methods"]) == set(ARMS)
    budget = quick_budget()
    per_arm = budget.rounds * budget.examples_per_round
    for name, row in figures["methods"].items():
        assert 0.0 <= row["acc"] <= 1.0 and set(row["by_level"]) == {"2", "3", "4"}, name
        assert len(row["by_round"]) == budget.rounds, name
        if ARMS[name].group in ("demonstrations", "judgments") and name != "sft-good":
            assert row["examples"] == per_arm, name  # the same budget for every arm that has data
    assert figures["methods"]["contrastive-sft"]["variants"].keys() == {"generated negative"}

    table = (report / "methods.md").read_text()
    assert all(f"| {name} (" in table for name in ARMS) and "SFT start" in table
    for png in ("accuracy.png", "rounds.png", "rewards.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    results = json.loads((report / "results.json").read_text())
    for name in ("spin", "gsil-logistic"):  # r(y_real) and r(y_gen) logged through training
        trace = results["traces"][name]
        assert trace["r_real"] and all(math.isfinite(x) for x in trace["r_real"] + trace["r_generated"])

    again = subprocess.run([*command, "--methods", "spin,dpo"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to run (2 done before)" in again.stderr  # finished arms are reused, not rerun
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["methods"]["spin"] == figures["methods"]["spin"]

    [saved] = work.glob("results/*/dpo@0.json")  # an arm whose arms.toml entry changed since is run again
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "spec": "another spec"}))
    stale = subprocess.run([*command, "--methods", "spin,dpo"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert stale.returncode == 0 and "1 to run (1 done before)" in stale.stderr, stale.stderr[-3000:]
