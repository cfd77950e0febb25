"""The methods table: its statistics, the frames and verdicts its arms use, and a --quick run of every arm
through the real command (real processes, tiny real models), resumed from its saved results."""

import itertools
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
    ctx = Context(quick_budget(examples_per_round=5), data=None, seed=0, out=tmp_path, lr=1e-4)
    policy = type("P", (), {"record": type("R", (), {"notes": {}})()})()
    rows = [{"i": i} for i in range(12)]
    assert len(ctx.fit(policy, rows)) == 5 and len({r["i"] for r in ctx.fit(policy, rows)}) == 5
    short = ctx.fit(policy, rows[:2])  # repeated when short, and noted
    assert len(short) == 5 and {r["i"] for r in short} == {0, 1} and policy.record.notes["short_rounds"] == 1
    assert ctx.fit(policy, []) == []


def test_arms_are_data_and_a_bad_arm_is_named(tmp_path):
    from studies.methods_table.arms import load_arms

    assert {ARMS["grpo"].group, ARMS["rloo"].group} == {"rewards"} and ARMS["dpo+nll"].algo == ARMS["dpo"].algo
    assert max(ARMS["dpo"].lrs) < max(ARMS["sft"].lrs) and ARMS["cut"].lrs == ARMS["sft"].lrs  # families' grids
    assert ARMS["gsil-logistic-script"].lrs == ARMS["gsil-logistic"].lrs
    arm = '[[arm]]\nname = "x"\ngroup = "{group}"\nabout = "x"\nalgo = "{algo}"\n{grid}'
    low = '[grids]\nlow = [1e-6, 1e-5]\n\n'
    cases = [  # (arms.toml, the error that names what is wrong)
        (low + arm.format(group="pairs", algo="ppo", grid='grid = "low"\n'), "unknown method 'ppo'"),
        (low + arm.format(group="vibes", algo="dpo", grid='grid = "low"\n'), "arm 'x': unknown group 'vibes'"),
        (low + arm.format(group="pairs", algo="dpo", grid='grid = "low"\nas_sfft = true\n'),
         "arm 'x': as_sfft is not a key of a pairs arm"),
        (low + arm.format(group="pairs", algo="dpo", grid='grid = "high"\n'),
         "arm 'x': grid 'high' is not a \\[grids\\] entry"),
        (low + arm.format(group="pairs", algo="dpo", grid=""), "arm 'x' has no grid"),
        ('[grids]\nlow = [1e-6, 1.0000001e-6]\n\n' + arm.format(group="pairs", algo="dpo", grid='grid = "low"\n'),
         "grid 'low' has learning rates equal to 6 significant digits"),  # two rates that would share a result file
    ]
    bad = tmp_path / "arms.toml"
    for text, error in cases:
        bad.write_text(text)
        with pytest.raises(ValueError, match=error):
            load_arms(bad)


def test_the_lr_is_selected_on_validation_and_never_on_test():
    from studies.methods_table import select_lr

    def result(validation: list[float], test: list[float]) -> dict:
        return {"record": {"validation": {"2": validation}, "scores": {"2": test}}}

    by_lr = {1e-5: [result([1, 0], [1, 1]), result([0, 0], [1, 1])],  # the test set's favourite
             1e-4: [result([1, 1], [0, 0]), result([1, 0], [0, 0])],  # validation's: 0.75 against 0.25
             1e-3: [result([1, 1], [0, 0]), result([0, 1], [0, 0])]}  # a tie with 1e-4 goes to the smaller rate
    assert select_lr(by_lr) == 1e-4


def test_the_schedule_spans_the_whole_arm(tmp_path):
    """Warmup, then cosine decay planned over every round of the arm, not restarted each round."""
    from studies.methods_table.policy import Policy
    from trainer.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(["What is 1 + 2? 3"], vocab_size=64, individual_digits=True)
    model = build_causal_lm(tokenizer, seed=0, hidden_size=16, num_layers=1, intermediate_size=32, max_positions=64)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    budget = quick_budget(rounds=2, examples_per_round=40, batch_size=4, warmup_ratio=0.1)  # 20 steps in all
    policy = Policy(budget, tmp_path / "m", tmp_path / "out", 0, "sft", lr=1e-3)
    assert policy.recipe.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 3)  # step 0 warms up too
    rows = [{"prompt": f"What is {i} + 2?", "completion": str(i + 2)} for i in range(40)]
    lrs = []
    for _ in range(budget.rounds):
        policy.train(rows)
        lrs += [m["lr"] for m in policy.record.trace[len(lrs):]]
    policy.close()
    assert len(lrs) == 20
    # (each step logs the rate of the step after it) the second warmup step, then the peak
    assert lrs[0] == pytest.approx(2e-3 / 3) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:])) and lrs[-1] < 0.05 * 1e-3  # one decay over both rounds


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
    for name, row in figures["methods"].items():  # each arm ran the first points of its grid; validation chose
        assert list(row["by_lr"]) == [f"{lr:g}" for lr in ARMS[name].lrs[:budget.lr_points]], name
        best = max(point["validation"] for point in row["by_lr"].values())
        assert row["by_lr"][f"{row['lr']:g}"]["validation"] == best, name
    assert figures["methods"]["dpo"]["by_lr"].keys() != figures["methods"]["sft"]["by_lr"].keys()  # two families

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
    assert "0 runs to do (4 done before)" in again.stderr  # finished runs are reused, not rerun
    resumed = json.loads(again.stdout.strip().splitlines()[-1])
    assert resumed["methods"]["spin"] == figures["methods"]["spin"]

    [saved] = work.glob(f"results/*/dpo@{ARMS['dpo'].lrs[0]:g}@0.json")  # an arm whose arms.toml entry changed
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "spec": "another spec"}))  # since runs again
    stale = subprocess.run([*command, "--methods", "spin,dpo"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert stale.returncode == 0 and "1 runs to do (3 done before)" in stale.stderr, stale.stderr[-3000:]
