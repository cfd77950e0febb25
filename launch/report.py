"""What a run did, read from its ledger: a summary (JSON) and a PNG report.

    summary = summarize("runs/demo/run")        # held-out accuracy by version and difficulty, rewards, lineage
    write_report(summary, "runs/demo/run/report.png")

`selfplay report RUN_DIR` writes both; `selfplay demo` writes them at the end of its run. Everything
comes from the ledger (never from a process's memory), so a report of a crashed or still-running run
is as good as one of a finished run. Held-out accuracy is the share of held-out prompts whose greedy
answer scored 1 (exact), per policy version that was evaluated; its standard error is sqrt(p(1-p)/n).
That holds for a verifier judge; with a reward model or an LLM judge, whose scores are not right or wrong,
the figure is the mean score and its standard error instead (`metric` says which; the judge is read from
RUN/topology.toml, which `up` and the demo write there).
With promotion, the summary also has each version's validation score (by the creator's promotion metric, from
the creator-done.json it writes when it ends; the mean score before that), the versions promoted to best
(each scored above every version validated before it: the creator's rule, agents/promotion.py) and the
rollbacks (version -> the version it restored), and the report marks them; `acc_best` is the best test
accuracy of any version, to set the final one against. `rounds` counts the versions trained (a
rollback publishes a version but trains nothing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agents.ledger_query import LedgerReader


def accuracy(scores: list[float], solved_at: float | None = 1.0) -> dict[str, float]:
    """The share of `scores` at least `solved_at` (exact answers, for a verifier) with its standard error; with
    `solved_at` None (scores that are not right or wrong), their mean and its standard error."""
    n = len(scores)
    if solved_at is None:
        mean = sum(scores) / n if n else 0.0
        variance = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
        return {"acc": mean, "stderr": math.sqrt(variance / n) if n else 0.0, "n": n}
    p = sum(s >= solved_at for s in scores) / n if n else 0.0
    return {"acc": p, "stderr": math.sqrt(p * (1 - p) / n) if n else 0.0, "n": n}


def solved_at(run_dir: Path) -> float | None:
    """1.0 (a solved answer scores 1) for a verifier judge with at most one checker, or when the run's judge is
    unknown; None otherwise (a reward model, an LLM judge, or a weighted sum of checkers: no score means solved)."""
    from protocol.settings import ConfigError, read_config_file

    try:
        judge = read_config_file(run_dir / "topology.toml").get("judge") or {}
        backend, rewards = judge.get("backend", "verifier"), judge.get("rewards") or []
    except (ConfigError, OSError, AttributeError):  # no copy (an older run) or not one that reads: the verifier's
        return 1.0
    one_checker = len(rewards) <= 1 and all(r.get("weight", 1.0) == 1.0 for r in rewards)
    return 1.0 if backend == "verifier" and one_checker else None


def _decided_validation(run_dir: Path) -> dict[int, float]:
    """Each version's validation score as the creator decided on it (its `promotion_metric`: the mean score, or
    the share solved), from the summary it writes when it ends; empty before that or without promotion."""
    try:
        done = json.loads((run_dir / "creator-done.json").read_text())
    except (OSError, ValueError):
        return {}
    return dict(sorted((int(v), float(score)) for v, score in (done.get("validation") or {}).items()))


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """Figures of a run from its ledger; see the module docstring for what each means."""
    threshold = solved_at(Path(run_dir))

    def acc(scores: list[float]) -> dict[str, float]:
        return accuracy(scores, threshold)

    with LedgerReader.for_run(run_dir) as ledger:
        evals = ledger.eval_scores()
        by_version = {v: acc([s for _, s in answers.values()]) for v, answers in sorted(evals.items())}
        by_difficulty: dict[str, dict[str, Any]] = {}
        if evals:
            first, last = min(evals), max(evals)
            levels = sorted({d for d, _ in evals[first].values()} | {d for d, _ in evals[last].values()},
                            key=lambda d: (d is None, d))
            for level in levels:
                by_difficulty[str(level)] = {
                    "before": acc([s for d, s in evals[first].values() if d == level]),
                    "after": acc([s for d, s in evals[last].values() if d == level])}
        rewards = ledger.reward_by_version()
        validation = _decided_validation(Path(run_dir)) or {  # the creator's own metric once it has ended
            v: mean for v, (mean, _) in ledger.reward_by_version("validation").items()}
        restores = ledger.restores()
        promotions, top = [], None
        for version, mean in validation.items():  # versions in order; a restored copy has no answers of its own
            if top is not None and mean > top:
                promotions.append(version)
            top = mean if top is None else max(top, mean)
        mutations = ledger.evolved_by_mutation()
        versions = len(ledger.policy_versions())
        span = ledger.sample_span()
        states = ledger.tasks_by_state()
    before = by_version[min(by_version)] if by_version else None
    after = by_version[max(by_version)] if by_version else None
    stderr = max(before["stderr"], after["stderr"]) if before and after else None
    best = max(by_version, key=lambda v: (by_version[v]["acc"], -v)) if by_version else None
    return {
        "metric": "accuracy" if threshold is not None else "mean score",
        "acc_before": before["acc"] if before else None,
        "acc_after": after["acc"] if after else None,
        "acc_stderr": stderr,
        "gain_in_stderr": (after["acc"] - before["acc"]) / stderr if stderr else None,
        "eval_prompts": after["n"] if after else 0,
        "acc_best": {"version": best, **by_version[best]} if best is not None else None,
        "acc_final": {"version": max(by_version), **after} if after else None,
        "acc_by_version": {str(v): a for v, a in by_version.items()},
        "validation_by_version": {str(v): mean for v, mean in validation.items()},
        "promotions": promotions,
        "rollbacks": {str(v): source for v, source in restores.items()},
        "acc_by_difficulty": by_difficulty,
        "reward_by_version": {str(v): {"mean": mean, "samples": n} for v, (mean, n) in rewards.items()},
        "evolved_by_mutation": dict(sorted(mutations.items())),
        "rounds": versions - len(restores),
        "samples": span.count,
        "samples_per_s": span.count / span.seconds if span.seconds > 0 else None,
        "tasks": states,
    }


def write_report(summary: dict[str, Any], path: str | Path, title: str = "selfplay run") -> Path:
    """Three panels: held-out accuracy by difficulty (first vs last evaluated version), reward and
    held-out accuracy by policy version, and evolved prompts by mutation kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    levels = summary["acc_by_difficulty"]
    ax = axes[0]
    xs = range(len(levels))
    for offset, key, label in ((-0.2, "before", "before (start)"), (0.2, "after", "after (last version)")):
        values = [levels[lv][key]["acc"] for lv in levels]
        errors = [levels[lv][key]["stderr"] for lv in levels]
        ax.bar([x + offset for x in xs], values, width=0.4, yerr=errors, capsize=3, label=label)
    ax.set_xticks(list(xs), [f"level {lv}" for lv in levels])
    metric = summary.get("metric", "accuracy")
    if metric == "accuracy":  # a share; a mean score may lie anywhere
        ax.set_ylim(0, 1)
    ax.set_title(f"held-out {metric} by difficulty")
    ax.legend()

    ax = axes[1]
    rewards = summary["reward_by_version"]
    ax.plot([int(v) for v in rewards], [r["mean"] for r in rewards.values()], "o-", label="training reward (mean)")
    accs = summary["acc_by_version"]
    ax.errorbar([int(v) for v in accs], [a["acc"] for a in accs.values()], yerr=[a["stderr"] for a in accs.values()],
                fmt="s-", capsize=3, label=f"held-out test {metric}")
    validation = summary.get("validation_by_version", {})
    if validation:
        ax.plot([int(v) for v in validation], list(validation.values()), ":", color="grey", label="validation score")
    for key, marker, color, label in (("promotions", "*", "green", "promoted (new best)"),
                                      ("rollbacks", "v", "red", "rollback (best restored)")):
        marked = [v for v in map(int, summary.get(key, [])) if str(v) in accs]
        if marked:
            ax.scatter(marked, [accs[str(v)]["acc"] for v in marked], marker=marker, s=120, color=color, zorder=3,
                       label=label)
    ax.set_xlabel("policy version")
    if metric == "accuracy" and all(0 <= r["mean"] <= 1 for r in rewards.values()):
        ax.set_ylim(0, 1)
    ax.set_title(f"reward and {metric} by version")
    ax.legend(fontsize=8)

    ax = axes[2]
    kinds = summary["evolved_by_mutation"]
    ax.bar(list(kinds), list(kinds.values()))
    ax.set_title("evolved prompts by mutation kind")
    ax.tick_params(axis="x", rotation=20)

    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
