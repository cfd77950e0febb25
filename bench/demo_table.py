"""The demo over methods and seeds: held-out accuracy before, at the best version and at the end of
`selfplay demo --algo A --seed N`, with the spread over seeds.

    python bench/demo_table.py --algos dpo,rloo,grpo --seeds 0,1,2 --out docs/demo
    python bench/demo_table.py --quick --algos dpo --seeds 0 --root /tmp/d   # a smoke run

Resumable: a run whose summary.json was written with the same plan is read, not run again (kill it and
start it again: only the unfinished runs go again). Writes OUT/table.md and OUT/results.json, keeping the
rows already in OUT/results.json for other methods and seeds when they were run with the same plan (a row
of another plan is dropped, and said so); the last line printed is one JSON object with every run's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.demo import ALGOS, QUICK, Plan, demo_dirs, run_demo


def one(algo: str, seed: int, root: Path, plan: Plan) -> dict:
    """One demo run's figures: its summary, from disk when the same plan already finished there."""
    plan = replace(plan, seed=seed)
    _, _, run_dir = demo_dirs(root, algo, seed)
    path = run_dir / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
        if summary.get("plan") == json.loads(json.dumps(asdict(plan))):
            return summary
    return run_demo(algo, root, plan, say=lambda line: print(f"  {algo} seed {seed}: {line}", flush=True))


def plan_digest(plan: Plan) -> str:
    """What makes rows of the table comparable: every knob of the plan but the seed."""
    knobs = {k: v for k, v in asdict(plan).items() if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:16]


def kept_rows(path: Path, digest: str, ran: dict[str, dict[int, dict]]) -> dict[str, dict[int, dict]]:
    """The rows of an earlier results.json that this run did not redo and that share its plan."""
    if not path.exists():
        return {}
    kept: dict[str, dict[int, dict]] = {}
    for algo, by_seed in json.loads(path.read_text()).items():
        for seed, row in by_seed.items():
            if int(seed) in ran.get(algo, {}):
                continue
            if row.get("plan") != digest:
                print(f"dropping {algo} seed {seed} from {path}: run with another plan ({row.get('plan')})")
                continue
            kept.setdefault(algo, {})[int(seed)] = row
    return kept


def figures(summary: dict) -> dict:
    """before, best (the best test accuracy of any version), final (the served version at the end), in accuracy
    and in standard errors (the summary's: the larger of the start's and the end's)."""
    se = summary["acc_stderr"] or 1e-9
    before, best, final = summary["acc_before"], summary["acc_best"]["acc"], summary["acc_after"]
    return {"before": before, "best": best, "best_version": summary["acc_best"]["version"], "final": final,
            "stderr": se, "gain_se": (final - before) / se, "final_vs_best_se": (final - best) / se,
            "rollbacks": len(summary.get("rollbacks", {})), "versions": summary["rounds"],
            "minutes": summary["minutes"]}


def table(results: dict[str, dict[int, dict]]) -> str:
    lines = ["| method | seed | before | best | final | final − before | final − best | rollbacks | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algo, by_seed in results.items():
        for seed, f in sorted(by_seed.items()):
            lines.append(f"| `{algo}` | {seed} | {f['before']:.3f} | {f['best']:.3f} (v{f['best_version']}) | "
                         f"{f['final']:.3f} | {f['gain_se']:+.1f} se | {f['final_vs_best_se']:+.1f} se | "
                         f"{f['rollbacks']} | {f['minutes']:.1f} |")
        gains = [f["gain_se"] for f in by_seed.values()]
        if len(gains) > 1:
            lines.append(f"| `{algo}` | mean ± sd | | | | {statistics.mean(gains):+.1f} ± {statistics.stdev(gains):.1f} se"
                         f" | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated methods (default: all: "
                                                                  f"{','.join(ALGOS)})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--root", default="runs/demo", help="where the demo's data, models and runs go (default "
                                                            "runs/demo, the demo's own: its cached models are reused)")
    parser.add_argument("--out", help="write OUT/table.md and OUT/results.json")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan: a smoke run, not a result")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    digest = plan_digest(plan)
    ran: dict[str, dict[int, dict]] = {}
    for algo in args.algos.split(","):
        if algo not in ALGOS:
            parser.error(f"unknown method {algo!r}; one of {', '.join(ALGOS)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            ran.setdefault(algo, {})[seed] = figures(one(algo, seed, Path(args.root), plan)) | {"plan": digest}
    results = kept_rows(Path(args.out) / "results.json", digest, ran) if args.out else {}
    for algo, by_seed in ran.items():
        results[algo] = dict(sorted((results.get(algo, {}) | by_seed).items()))
    text = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(text)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"demo_table": results}))


if __name__ == "__main__":
    main()
