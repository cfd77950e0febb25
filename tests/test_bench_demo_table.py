"""bench/demo_table.py: a quick demo per (method, seed), its table and JSON line, and a second call that reads
the finished runs instead of running them again (the study is resumable), keeping the rows of other methods that
share its plan."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_demo_table_runs_once_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "demo_table.py"), "--quick", "--algos", "rloo", "--seeds", "1",
               "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = tmp_path / "rloo-seed1" / "summary.json"
    written = summary.stat().st_mtime_ns
    figures = json.loads(first.stdout.strip().splitlines()[-1])["demo_table"]["rloo"]["1"]
    assert figures["before"] == json.loads(summary.read_text())["acc_before"]
    assert "| `rloo` | 1 |" in (tmp_path / "out" / "table.md").read_text()

    # rows of an earlier call for other methods: kept when run with the same plan, dropped when not
    results = tmp_path / "out" / "results.json"
    earlier = json.loads(results.read_text())
    same, other = dict(figures, before=0.25), dict(figures, before=0.75, plan="another plan")
    results.write_text(json.dumps(earlier | {"dpo": {"1": same}, "gsil": {"1": other}}))

    again = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary.stat().st_mtime_ns == written  # read, not run again
    table = json.loads(again.stdout.strip().splitlines()[-1])["demo_table"]
    assert table["rloo"]["1"] == figures
    assert table["dpo"]["1"] == same and "gsil" not in table
    assert "dropping gsil seed 1" in again.stdout
    assert "| `dpo` | 1 | 0.250 |" in (tmp_path / "out" / "table.md").read_text()
