"""The methods table's PNG plots: accuracy by method, accuracy by round, and SPIN's vs GSIL's rewards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"demonstrations": "tab:blue", "pairs": "tab:orange", "judgments": "tab:green", "rewards": "tab:red",
          "prompts": "tab:purple"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_plot(rows: dict[str, dict[str, Any]], start: dict[str, dict[str, float]], group_of: dict[str, str],
                  path: Path) -> Path:
    """One panel per difficulty and one over all: each method's accuracy with its standard error."""
    plt = _pyplot()
    panels = list(start)
    names = list(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.32 * len(names) + 1.6), sharey=True)
    for ax, level in zip(axes, panels, strict=True):
        ax.barh(range(len(names)), [rows[n]["acc"][level]["acc"] for n in names],
                xerr=[rows[n]["acc"][level]["se"] for n in names], capsize=2,
                color=[COLORS[group_of[n]] for n in names])
        ax.axvline(start[level]["acc"], color="black", linestyle="--", linewidth=1, label="SFT start")
        ax.set_title("all held-out prompts" if level == "all" else f"level {level}")
        ax.set_xlabel("exact accuracy")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def rounds_plot(rows: dict[str, dict[str, Any]], start_acc: float, groups: dict[str, list[str]], path: Path) -> Path:
    """Held-out accuracy after each round, one panel per group."""
    plt = _pyplot()
    shown = {g: [n for n in names if n in rows] for g, names in groups.items()}
    shown = {g: names for g, names in shown.items() if names}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    for ax, (group, names) in zip(axes[0], shown.items(), strict=True):
        for name in names:
            acc = rows[name]["by_round"]
            ax.plot(range(len(acc) + 1), [start_acc, *acc], "o-", markersize=3, label=name)
        ax.set_title(group)
        ax.set_xlabel("round (0 = SFT start)")
        ax.set_ylabel("held-out exact accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def rewards_plot(traces: dict[str, dict[str, list[float]]], steps_per_round: int, path: Path) -> Path:
    """r(y_real) and r(y_gen) per optimizer step for SPIN and each GSIL objective (log-ratios against the
    iteration's reference, mean over seeds): the papers' claim is that SPIN's r(y_real) falls below zero."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(traces), figsize=(3.4 * len(traces), 3.4), sharey=True, squeeze=False)
    for ax, (name, trace) in zip(axes[0], traces.items(), strict=True):
        ax.plot(trace["r_real"], label="r(y_real)", color="tab:green")
        ax.plot(trace["r_generated"], label="r(y_gen)", color="tab:red")
        ax.axhline(0, color="black", linewidth=0.8)
        for x in range(steps_per_round, len(trace["r_real"]), steps_per_round):
            ax.axvline(x, color="grey", linewidth=0.5, linestyle=":")
        ax.set_title(name)
        ax.set_xlabel("optimizer step (dotted: new iteration)")
    axes[0][0].set_ylabel("log-ratio vs the iteration's reference")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
