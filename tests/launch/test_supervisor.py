"""The supervisor with real child processes: a crashing child is restarted with backoff, a finisher
ends the run, and nothing is left running."""

import sys
import time

from launch.supervisor import Child, Supervisor

FLAKY = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n < 3:
    sys.exit(1)          # crash on the first two starts
time.sleep(60)           # then stay up until stopped
"""
FINISHER = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
while not (count.exists() and count.read_text() == "3"):
    time.sleep(0.05)
"""


def test_crashed_child_is_restarted_and_the_finisher_ends_the_run(tmp_path):
    count = tmp_path / "starts"
    flaky = Child("flaky", [sys.executable, "-c", FLAKY, str(count)])
    finisher = Child("finisher", [sys.executable, "-c", FINISHER, str(count)], finisher=True)
    supervisor = Supervisor(tmp_path / "run", [flaky, finisher], backoff_min_s=0.1, backoff_max_s=0.5)
    started = time.monotonic()
    assert supervisor.run() == 0
    assert count.read_text() == "3" and flaky.restarts == 2
    assert time.monotonic() - started < 30
    assert flaky.proc.poll() is not None  # stopped at the end, not left behind
    assert not (tmp_path / "run" / "supervisor.json").exists()
    assert (tmp_path / "run" / "logs" / "flaky.out").exists()
