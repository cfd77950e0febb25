"""Retention soak: a real hub with `ledger_max_mb` set takes results at a steady rate for as long as asked, and
its ledger must stay near the limit the whole time while every accepted result stays in the ledger or the
archive.

    python bench/retention_soak.py [--minutes 120] [--ledger-max-mb 128] [--mb-per-s 2] [--result-kb 160]
                                   [--archive-min-age-s 30] [--retention-every-s 5]

The hub runs in its own process on a new SQLite run directory, with retention on; fake solvers (raw sockets, no
models: bench/hub_scale.py's fleet) answer at --mb-per-s, a creator keeps the queue full, and heartbeats go
both ways. The creator names new prompts in every task (a prompt row each, which retention must archive too).
Every --report-every-s it prints the ledger's size on disk (file, WAL and blobs; not the archive), the largest
so far once the limit was first reached, the prompt rows, what was archived, and the largest heartbeat gap. At
the end it counts the done tasks left in the ledger and the lines of the archive's shards: their sum must equal
the results the hub accepted; and the same for the prompts the hub acknowledged. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/hub_scale.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hub_scale import SUBMIT_BATCH, Fleet, HubProcess, result_shape

from agents.retention import files_bytes, read_archive


def archive_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "archive").rglob("*.jsonl.gz"))


def archived_ids(run_dir: Path) -> list[str]:
    """The task id of every line of the generate shards (read from each line's start: no JSON parsing of
    gigabytes)."""
    ids = []
    for path in sorted((run_dir / "archive" / "generate").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                ids.append(json.loads(line[:line.index(",")] + "}")["task_id"])  # {"task_id": "…", …
    return ids


def prompt_rows(run_dir: Path) -> int:
    """The prompt rows in the live ledger (read-only, beside the hub)."""
    db = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
    finally:
        db.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120.0, help="How long results keep coming.")
    parser.add_argument("--ledger-max-mb", type=float, default=128.0, help="The hub's ledger_max_mb.")
    parser.add_argument("--mb-per-s", type=float, default=2.0, help="Result bytes sent per second, in MB.")
    parser.add_argument("--result-kb", type=float, default=160.0, help="Size of one result, in KiB.")
    parser.add_argument("--archive-min-age-s", type=float, default=30.0, help="The hub's archive_min_age_s.")
    parser.add_argument("--retention-every-s", type=float, default=5.0, help="The hub's retention_every_s.")
    parser.add_argument("--report-every-s", type=float, default=60.0, help="How often a progress line is printed.")
    parser.add_argument("--run-dir", default=None, help="Where the run goes (default: a temporary directory, "
                                                        "removed at the end).")
    args = parser.parse_args(argv)
    settings = {"retention": True, "ledger_max_mb": args.ledger_max_mb, "archive_min_age_s": args.archive_min_age_s,
                "retention_every_s": args.retention_every_s}
    samples, tokens = result_shape(args.result_kb)
    rate = args.mb_per_s * 1e6 / (args.result_kb * 1024)
    print(f"soak: {args.minutes:g} min of {args.result_kb:g} KiB results ({samples} samples of {tokens} tokens) at "
          f"{args.mb_per_s:g} MB/s ({rate:.1f} a second); hub settings {settings}", flush=True)
    limit = args.ledger_max_mb * 2**20
    with tempfile.TemporaryDirectory(prefix="retention-soak-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        hub = HubProcess(run_dir, settings=settings)
        ctx = zmq.Context()
        fleet = Fleet(ctx, hub.endpoint, 2, args.result_kb, results_per_s=rate)
        start = time.monotonic()
        last_beat = last_sample = last_report = start
        sizes, after_limit, reached_at, gaps = [], [], None, []
        try:
            while (now := time.monotonic()) - start < args.minutes * 60:
                fleet.top_up()
                if now - last_beat >= 1.0:
                    last_beat = now
                    fleet.heartbeat()
                fleet.turn(now, timeout_ms=20)
                if now - last_sample >= 2.0:
                    last_sample = now
                    size = files_bytes(run_dir)
                    sizes.append(size)
                    if reached_at is None and size >= limit:
                        reached_at = now
                    if reached_at is not None:
                        after_limit.append(size)
                if now - last_report >= args.report_every_s:
                    last_report = now
                    gaps.append(fleet.max_gap)
                    print(f"[{(now - start) / 60:6.1f} min] {fleet.result_bytes / 1e9:6.2f} GB accepted "
                          f"({fleet.accepted} results); ledger {sizes[-1] / 2**20:6.1f} MiB, largest since the limit "
                          f"was reached {max(after_limit, default=0) / 2**20:6.1f} MiB (limit {args.ledger_max_mb:g}), "
                          f"{prompt_rows(run_dir)} prompt rows; "
                          f"archive {archive_bytes(run_dir) / 1e6:.0f} MB; largest heartbeat "
                          f"gap {fleet.max_gap:.2f} s" + (f"; agents buried and rejoined: {fleet.rejoined}"
                                                          if fleet.rejoined else ""), flush=True)
                    fleet.max_gap = 0.0
            fleet.answering = False
            fleet.backlog.clear()
            deadline = time.monotonic() + 120
            while (fleet.pending_bytes or fleet.submit_pending) and time.monotonic() < deadline:
                fleet.turn(time.monotonic())  # the last results and the last submit acknowledged
            made = fleet.prompt_counter - fleet.prompts_refused  # named in submits the hub did not refuse; the last
            #                                                      may not have been acknowledged
            acknowledged = made - (fleet.prompts_per_task * SUBMIT_BATCH if fleet.submit_pending else 0)
        finally:
            fleet.close()
            ctx.term()
            hub.close()
        db = sqlite3.connect(run_dir / "ledger.sqlite")
        kept = {row[0] for row in db.execute("SELECT task_id FROM tasks WHERE kind = 'generate' AND state = 'done'")}
        kept_prompts = {row[0] for row in db.execute("SELECT prompt_id FROM prompts")}
        db.close()
        prompt_ids = [record["prompt_id"] for record in read_archive(run_dir, "prompts")]
        ids = archived_ids(run_dir)
        archived_bytes = archive_bytes(run_dir)
    out = {
        "minutes": args.minutes, "mb_per_s": args.mb_per_s, "result_kb": args.result_kb,
        "gb_accepted": round(fleet.result_bytes / 1e9, 3), "accepted": fleet.accepted,
        "ledger_mb_limit": args.ledger_max_mb,
        "ledger_mb_max_after_limit": round(max(after_limit) / 2**20, 1) if after_limit else None,
        "ledger_mb_median_after_limit": round(sorted(after_limit)[len(after_limit) // 2] / 2**20, 1)
        if after_limit else None,
        "minutes_to_limit": round((reached_at - start) / 60, 2) if reached_at else None,
        # a pass the hub's exit cut short has its shard written and its rows not yet deleted: in both, once each
        "done_in_ledger": len(kept), "archived": len(ids), "archived_twice": len(ids) - len(set(ids)),
        "all_accounted": len(kept | set(ids)) == fleet.accepted,
        "archive_gb": round(archived_bytes / 1e9, 3),
        "prompts_submitted": made, "prompts_in_ledger": len(kept_prompts), "prompts_archived": len(prompt_ids),
        "prompts_archived_twice": len(prompt_ids) - len(set(prompt_ids)),
        "prompts_accounted": acknowledged <= len(kept_prompts | set(prompt_ids)) <= made,
        "max_heartbeat_gap_s": round(max([*gaps, fleet.max_gap]), 2),
        "agents_rejoined": fleet.rejoined,  # buried by the hub (this process stalled past the liveness window)
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
