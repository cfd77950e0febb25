"""The methods table: every method selfplay implements, on the arithmetic world, from the same SFT start,
with the same number of training examples, measured on the same held-out prompts.

    selfplay bench methods --quick                     # a smoke run (the test suite runs it)
    selfplay bench methods --out docs/methods          # the full table (under two hours on 2 cores)
    python bench/methods.py --methods spin,gsil-logistic --seeds 0

Steps: the data and the SFT start (cached in WORK); the SFT start's held-out accuracy; per seed, the
offline preference pairs; then every (arm, learning rate of its grid, seed) as a job in a pool of `--jobs`
processes with one torch thread each. Each job's result is saved in WORK/results/<budget>/ as it finishes, so
an interrupted run resumes where it stopped. An arm's row is its learning rate with the best mean
validation accuracy, reported on the held-out test set. At the end: OUT/methods.md (the table), OUT/accuracy.png,
OUT/rounds.png, OUT/rewards.png and OUT/results.json; the last line printed is one JSON object.
What each arm does: studies/methods_table/arms.py; the statistics: studies/methods_table/table.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from launch.demo import Say

DEFAULT_WORK = "runs/methods"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from studies.methods_table.arms import ARMS

    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, one seed, one short round and the two smallest learning rates of its grid "
                             "per arm: a smoke test, not a result")
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help=f"arms to run (default: all): {', '.join(ARMS)}")
    parser.add_argument("--seeds", default=None, metavar="0,1,2", help="training seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (iterations) per arm (default 4)")
    parser.add_argument("--examples-per-round", type=int, default=None, metavar="K",
                        help="training examples per round, the same for every arm (default 512)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="arms run at once, each in its own process with one torch thread (default: 2, or 1 "
                             "on a one-core machine)")
    parser.add_argument("--work", default=DEFAULT_WORK,
                        help=f"data, the cached SFT start and each run's result (default {DEFAULT_WORK}; a second "
                             "run with the same budget and start reuses finished runs)")
    parser.add_argument("--out", default=None, help="where the table, plots and results.json go (default WORK/report)")


def budget_from(args: argparse.Namespace) -> Any:
    from studies.methods_table.arms import ARMS
    from studies.methods_table.world import QUICK, Budget

    budget = QUICK if args.quick else Budget()
    changes: dict[str, Any] = {}
    if args.seeds:
        try:
            changes["seeds"] = tuple(dict.fromkeys(int(s) for s in args.seeds.split(",")))
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.examples_per_round is not None:
        changes["examples_per_round"] = args.examples_per_round
    for key, value in changes.items():
        if key != "seeds" and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    arms = args.methods.split(",") if args.methods else list(ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; one of {', '.join(ARMS)}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    return replace(budget, **changes), arms


def run_table(budget: Any, arms: list[str], work: Path, out: Path, *, jobs: int = 1, command: str = "",
              say: Say = print) -> dict[str, Any]:
    """Every arm for every seed (resuming finished ones), then the table and plots; returns the figures."""
    import torch

    from studies.methods_table.arms import ARMS, GROUPS, offline_pairs
    from studies.methods_table.policy import Policy
    from studies.methods_table.table import accuracy, levels_of, markdown, mean_trace, summarize
    from studies.methods_table.world import prepare
    from trainer.methods import SUPERVISED, get_method

    started = time.monotonic()
    torch.set_num_threads(jobs)
    data = prepare(budget, work, say)
    # keyed by the budget and by the SFT start (its recipe and data): results of another start are never reused
    start_id = (data.model / "demo-model.json").read_text()
    results_dir = work / "results" / hashlib.sha256((budget.fingerprint() + start_id).encode()).hexdigest()[:12]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "budget.json").write_text(budget.fingerprint())

    start_file = results_dir / "start.json"
    if not start_file.exists():
        say("[methods] held-out accuracy of the SFT start")
        policy = Policy(budget, data.model, results_dir / "start", 0, SUPERVISED, lr=1.0)  # (never trained)
        _write_atomic(start_file, json.dumps(policy.evaluate(data.held_out)))
        policy.close()
    start_scores = levels_of(json.loads(start_file.read_text()))
    needs_pairs = any(ARMS[a].group == "pairs" for a in arms)
    for seed in budget.seeds if needs_pairs else ():
        path = results_dir / f"pairs@{seed}.jsonl"
        if not path.exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            say(f"[methods] offline pairs for seed {seed}: {budget.samples_per_prompt} answers to each of "
                f"{len(data.pair_prompts)} prompts from the SFT start")
            model, tokenizer = AutoModelForCausalLM.from_pretrained(data.model), AutoTokenizer.from_pretrained(data.model)
            made = offline_pairs(budget, data, seed, model, tokenizer)
            _write_atomic(path, "".join(json.dumps(p) + "\n" for p in made))

    grid = {arm: lrs_of(ARMS[arm], budget) for arm in arms}
    runs = [(arm, lr, seed) for arm in arms for lr in grid[arm] for seed in budget.seeds]
    todo = [run for run in runs if not _done(results_dir / result_name(*run), ARMS[run[0]])]
    say(f"[methods] {len(arms)} arms, {len(runs) // len(budget.seeds)} learning rates in all, x {len(budget.seeds)} "
        f"seeds: {len(todo)} runs to do ({len(runs) - len(todo)} done before), {jobs} at a time; results in {results_dir}")
    os.environ["TQDM_DISABLE"] = "1"  # the workers' progress bars would interleave; each arm says when it ends
    slow_first = {"prompts": 0, "judgments": 1, "rewards": 1, "demonstrations": 2, "pairs": 3}  # a short tail
    todo.sort(key=lambda job: slow_first[ARMS[job[0]].group])
    jobs_args = [(arm, lr, seed, budget, data, results_dir) for arm, lr, seed in todo]
    if jobs_args:
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch state shared by fork
        with context.Pool(min(jobs, len(jobs_args)), maxtasksperchild=8) as pool:  # a fresh interpreter now and then
            for done, (arm, lr, seed, acc, val, seconds) in enumerate(pool.imap_unordered(_job, jobs_args), 1):
                say(f"[{(time.monotonic() - started) / 60:5.1f} min] {arm} lr {lr:g} seed {seed}: validation {val:.3f}, "
                    f"test {acc:.3f} ({seconds:.0f} s; {done}/{len(todo)})")

    every = {arm: {lr: [json.loads((results_dir / result_name(arm, lr, seed)).read_text()) for seed in budget.seeds]
                   for lr in grid[arm]} for arm in arms}
    chosen = {arm: select_lr(by_lr) for arm, by_lr in every.items()}
    results = {arm: every[arm][chosen[arm]] for arm in arms}
    start = {level: accuracy([scores]) for level, scores in start_scores.items()}
    rows = {arm: summarize(arm, results[arm], start_scores) | {"lr": chosen[arm], "by_lr": by_lr_figures(every[arm])}
            for arm in arms}
    groups = {g: [a for a in ARMS if ARMS[a].group == g and a in arms] for g in GROUPS}
    minutes = (time.monotonic() - started) / 60
    header = (f"Made by `{command or 'selfplay bench methods'}` on {os.cpu_count()} CPU cores in {minutes:.1f} minutes "
              f"({len(todo)} of {len(runs)} runs in this invocation). Seeds {list(budget.seeds)}; every arm sees "
              f"{budget.rounds} x {budget.examples_per_round} training examples from the same SFT start, at each "
              f"learning rate of its family's grid (LoRA r {budget.lora_r}, warmup {budget.warmup_ratio:.0%} of the "
              f"steps, then {budget.scheduler} decay); the row is the rate with the best mean validation accuracy "
              f"({len(data.validation)} prompts), reported on the test set. Accuracy: exact greedy answers to "
              f"{len(data.held_out)} held-out test prompts, mean over seeds ± standard error (prompt sampling and "
              f"seed-to-seed spread); train s: wall time of data generation, judging and training per seed, "
              f"evaluation excluded.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods.md").write_text(markdown(rows, start, groups, {a: ARMS[a].about for a in arms}, header))
    traces = {a: mean_trace(results[a], ("r_real", "r_generated")) for a in arms
              if get_method(ARMS[a].algo).samples_own_answers}  # r(y_real), r(y_gen) of SPIN and GSIL
    _plots(rows, start, groups, traces, budget, out)
    figures = {"bench": "methods", "minutes": round(minutes, 2), "seeds": list(budget.seeds),
               "rounds": budget.rounds, "examples_per_round": budget.examples_per_round,
               "start": {lv: round(a["acc"], 4) for lv, a in start.items()},
               "methods": {arm: {"group": ARMS[arm].group, "lr": r["lr"], "by_lr": r["by_lr"],
                                 "acc": round(r["acc"]["all"]["acc"], 4),
                                 "se": round(r["acc"]["all"]["se"], 4), "delta": round(r["delta"], 4),
                                 "by_level": {lv: round(a["acc"], 4) for lv, a in r["acc"].items() if lv != "all"},
                                 "by_round": [round(x, 4) for x in r["by_round"]],
                                 "variants": {k: round(v["acc"], 4) for k, v in r["variants"].items()},
                                 "train_s": round(r["train_s"], 1), "examples": r["examples"]}
                           for arm, r in rows.items()}}
    (out / "results.json").write_text(json.dumps({**figures, "budget": asdict(budget), "rows": rows,
                                                  "traces": traces}, indent=1))
    return figures


def _plots(rows: dict, start: dict, groups: dict, traces: dict, budget: Any, out: Path) -> None:
    from studies.methods_table.plots import accuracy_plot, rewards_plot, rounds_plot

    group_of = {a: g for g, names in groups.items() for a in names}
    accuracy_plot(rows, start, group_of, out / "accuracy.png")
    rounds_plot(rows, start["all"]["acc"], groups, out / "rounds.png")
    if traces:  # SPIN's and GSIL's r(y_real), r(y_gen) per step, mean over seeds
        rewards_plot(traces, -(-budget.examples_per_round // budget.batch_size), out / "rewards.png")


def lrs_of(arm: Any, budget: Any) -> tuple[float, ...]:
    """The learning rates of the arm's grid that run: all of them, or the budget's `lr_points` smallest."""
    return arm.lrs[:budget.lr_points] if budget.lr_points else arm.lrs


def result_name(arm: str, lr: float, seed: int) -> str:
    return f"{arm}@{lr:g}@{seed}.json"


def _validation_acc(result: dict[str, Any]) -> float:
    from studies.methods_table.policy import exact

    return exact({int(k): v for k, v in result["record"]["validation"].items()})


def select_lr(by_lr: dict[float, list[dict[str, Any]]]) -> float:
    """The learning rate whose runs (one per seed) have the best mean validation accuracy; a tie goes to the
    smaller rate. The test set takes no part."""
    mean = {lr: sum(map(_validation_acc, results)) / len(results) for lr, results in by_lr.items()}
    return max(sorted(mean), key=lambda lr: (mean[lr], -lr))


def by_lr_figures(by_lr: dict[float, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per learning rate of the grid: mean validation and test accuracy over seeds."""
    from studies.methods_table.policy import exact

    def test_acc(result: dict[str, Any]) -> float:
        return exact({int(k): v for k, v in result["record"]["scores"].items()})

    return {f"{lr:g}": {"validation": round(sum(map(_validation_acc, rs)) / len(rs), 4),
                        "test": round(sum(map(test_acc, rs)) / len(rs), 4)} for lr, rs in by_lr.items()}


def _done(path: Path, arm: Any) -> bool:
    """A saved result of this arm as arms.toml has it now (a result saved without its spec counts)."""
    return path.exists() and json.loads(path.read_text()).get("spec", arm.spec) == arm.spec


def _write_atomic(path: Path, text: str) -> None:
    """A killed run leaves the old file or the new one, never half of one (a resumed run trusts what it finds)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _job(job: tuple) -> tuple[str, float, int, float, float, float]:
    """One arm, learning rate and seed in a worker process (one torch thread); saves its result and returns a
    summary."""
    arm, lr, seed, budget, data, results_dir = job
    import shutil
    import warnings

    import torch

    from launch.logs import configure_logging
    from studies.methods_table.arms import ARMS, run_arm
    from studies.methods_table.context import Context
    from studies.methods_table.policy import exact

    torch.set_num_threads(1)
    configure_logging("warning")
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a deprecated transformers helper
    name = result_name(arm, lr, seed)
    scratch = results_dir / name.replace(".json", ".run")
    shutil.rmtree(scratch, ignore_errors=True)
    pairs = results_dir / f"pairs@{seed}.jsonl"
    ctx = Context(budget, data, seed, scratch, lr, pairs if pairs.exists() else None)
    record = run_arm(arm, ctx)
    _write_atomic(results_dir / name, json.dumps({"arm": arm, "lr": lr, "seed": seed, "spec": ARMS[arm].spec,
                                                  "record": asdict(record)}))
    shutil.rmtree(scratch, ignore_errors=True)
    return arm, lr, seed, exact(record.scores), exact(record.validation), record.train_s


def run_from_args(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The table for parsed arguments (add_arguments'), progress on stderr, the figures' JSON line on stdout."""
    import sys

    budget, arms = budget_from(args)  # a bad --methods or --seeds is a ValueError naming it
    work = Path(args.work)
    figures = run_table(budget, arms, work, Path(args.out) if args.out else work / "report", jobs=args.jobs,
                        command=command, say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(figures))
    return figures


def main(argv: list[str] | None = None, prog: str = "bench/methods.py") -> dict[str, Any]:
    import shlex
    import sys

    from launch.args import OneLineParser
    from launch.logs import configure_logging

    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "))
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        budget_from(args)  # arguments checked here, so that only they become a usage error
    except ValueError as e:
        parser.error(str(e))
    configure_logging("warning")
    return run_from_args(args, shlex.join([prog, *argv]))
