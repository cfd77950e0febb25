"""The methods table's figures from the per-arm results: accuracy with standard errors, a Markdown table, plots.

Accuracy is the share of exactly right greedy answers to the held-out prompts, per difficulty and
over all of them, averaged over seeds. Its standard error adds the two sources of noise: the draw of
held-out prompts (binomial, p(1-p)/n) and the training run (variance between seeds / seeds); the
second is 0 with one seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Result = dict[str, Any]  # one arm and seed: {"arm", "seed", "record": {...}}


def accuracy(per_seed: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean exact accuracy over seeds (each a list of graded scores) and its standard error."""
    accs = [sum(s >= 1.0 for s in scores) / len(scores) for scores in per_seed if scores]
    if not accs:
        return {"acc": 0.0, "se": 0.0, "n": 0}
    p, n = statistics.fmean(accs), len(per_seed[0])
    between = statistics.variance(accs) / len(accs) if len(accs) > 1 else 0.0
    return {"acc": p, "se": math.sqrt(p * (1 - p) / n + between), "n": n}


def levels_of(scores: dict[Any, list[float]]) -> dict[str, list[float]]:
    """{level: scores} with string keys in level order, plus "all"."""
    out = {str(k): list(v) for k, v in sorted(scores.items(), key=lambda kv: int(kv[0]))}
    out["all"] = [s for v in out.values() for s in v]
    return out


def summarize(arm: str, results: Sequence[Result], start: dict[str, list[float]]) -> dict[str, Any]:
    """One arm over its seeds: accuracy by level (and of its inference variants), by round, costs."""
    records = [r["record"] for r in results]
    by_level = [levels_of(rec["scores"]) for rec in records]
    acc = {level: accuracy([b[level] for b in by_level]) for level in by_level[0]}
    variants = {name: accuracy([levels_of(rec["variants"][name])["all"] for rec in records])
                for name in records[0]["variants"]}
    rounds = [statistics.fmean(rec["by_round"][i] for rec in records) for i in range(len(records[0]["by_round"]))]
    start_all = accuracy([start["all"]])["acc"]
    return {"arm": arm, "seeds": [r["seed"] for r in results], "acc": acc, "variants": variants,
            "delta": acc["all"]["acc"] - start_all, "by_round": rounds,
            "train_s": statistics.fmean(rec["train_s"] for rec in records),
            "examples": statistics.fmean(rec["examples"] for rec in records),
            "notes": [rec["notes"] for rec in records]}


def mean_trace(results: Sequence[Result], keys: Sequence[str]) -> dict[str, list[float]]:
    """Per optimizer step, each key's mean over seeds (steps every seed has)."""
    traces = [r["record"]["trace"] for r in results]
    steps = min(len(t) for t in traces)
    return {key: [statistics.fmean(t[i].get(key, math.nan) for t in traces) for i in range(steps)] for key in keys}


def cell(a: dict[str, float]) -> str:
    return f"{a['acc']:.3f} ± {a['se']:.3f}"


def markdown(rows: dict[str, dict[str, Any]], start: dict[str, dict[str, float]], groups: dict[str, list[str]],
             about: dict[str, str], header: str) -> str:
    """The table: one section per group, the SFT start first in each (each row at its selected learning rate);
    then every arm's grid: mean validation and test accuracy at each learning rate."""
    levels = [k for k in start if k != "all"]
    head = ("| method | lr | " + " | ".join(f"level {lv}" for lv in levels) + " | all | Δ all vs start | train s | "
            "examples |\n|---|" + "---|" * (len(levels) + 5) + "\n")
    text = header
    for group, names in groups.items():
        if not any(n in rows for n in names):
            continue
        text += f"\n### {group}\n\n" + head
        text += "| SFT start | | " + " | ".join(cell(start[lv]) for lv in levels) + f" | {cell(start['all'])} | | | |\n"
        for name in names:
            if name not in rows:
                continue
            r = rows[name]
            text += (f"| {name} ({about[name]}) | {r['lr']:g} | " + " | ".join(cell(r["acc"][lv]) for lv in levels) +
                     f" | **{cell(r['acc']['all'])}** | {r['delta']:+.3f} | {r['train_s']:.0f} | {r['examples']:.0f} |\n")
            for variant, a in r["variants"].items():
                text += f"| ↳ {name}, asked with a {variant} | | " + " | ".join("" for _ in levels) + \
                        f" | {cell(a)} | {a['acc'] - start['all']['acc']:+.3f} | | |\n"
    text += ("\n### learning-rate grids\n\nMean accuracy over seeds at each learning rate of the arm's grid, "
             "validation / test; the selected rate (best validation) in bold.\n\n| method | grid |\n|---|---|\n")
    for name, r in rows.items():
        points = [(f"**{lr}: {f['validation']:.3f} / {f['test']:.3f}**" if float(lr) == r["lr"] else
                   f"{lr}: {f['validation']:.3f} / {f['test']:.3f}") for lr, f in r["by_lr"].items()]
        text += f"| {name} | " + ", ".join(points) + " |\n"
    return text
