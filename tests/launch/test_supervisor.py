"""The supervisor with real child processes: a crashing child is restarted with backoff, a finisher
ends the run, and nothing is left running."""

import json
import sys
import time

from launch.status import format_processes
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


BROKEN = """
import json
import sys
sys.exit("KeyError: 'prompt' in seeds.jsonl row 3")  # the same error on every start
"""
CHANGING = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n <= 4:
    sys.exit(f"failure number {n}")  # an error each time, but never the same one twice in a row
time.sleep(60)
"""
KILLED = """
import os, pathlib, signal, sys, time
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
print("loading", flush=True)  # the same last line every time
if n <= 4:
    os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 or the OOM killer would
time.sleep(60)
"""
NO_HUB = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n <= 4:
    print("solver-0: no answer from the hub at tcp://192.0.2.1:5555 in 300 s", flush=True)
    sys.exit(75)  # EXIT_NO_HUB: the hub on another machine is down; the same line every time
time.sleep(60)
"""
SLOW_FAILING = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
time.sleep(0.6)  # ran longer than the supervisor's healthy_s before failing
if n <= 4:
    sys.exit("RuntimeError: CUDA error: an illegal memory access was encountered")
time.sleep(60)
"""
WATCHER = """
import json, pathlib, sys, time
run, copy, counts = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
while not all(pathlib.Path(c).exists() and pathlib.Path(c).read_text() == "5" for c in counts):
    time.sleep(0.05)
time.sleep(0.5)
copy.write_text((run / "supervisor.json").read_text())  # what `selfplay status` reads while the run goes on
"""


def test_a_process_failing_the_same_way_stops_the_run_with_its_error(tmp_path):
    from structlog.testing import capture_logs

    from launch.worker import EXIT_FATAL

    broken = Child("creator-0", [sys.executable, "-c", BROKEN], finisher=True)
    supervisor = Supervisor(tmp_path / "run", [broken], backoff_min_s=0.05, backoff_max_s=0.1, max_identical_crashes=3)
    with capture_logs() as logs:
        assert supervisor.run() == EXIT_FATAL
    restarts = [e for e in logs if e["event"] == "process exited, restarting"]
    assert len(restarts) == 2 and all(e["why"] == "KeyError: 'prompt' in seeds.jsonl row 3" for e in restarts)
    stop = next(e for e in logs if e["log_level"] == "error")
    assert stop["name"] == "creator-0" and stop["exits"] == 3 and "KeyError: 'prompt'" in stop["why"]
    assert stop["log"].endswith("creator-0.out")
    assert broken.proc.poll() is not None and not (tmp_path / "run" / "supervisor.json").exists()
    ended = json.loads((tmp_path / "run" / "supervisor-ended.json").read_text())  # what status shows afterwards
    assert ended["ended"] == "creator-0 failed the same way 3 times: KeyError: 'prompt' in seeds.jsonl row 3"
    assert ended["processes"]["creator-0"] == {"pid": None, "restarts": 2,
                                               "last_error": "KeyError: 'prompt' in seeds.jsonl row 3"}


def test_changing_errors_kills_a_missing_hub_and_failures_after_a_healthy_run_are_restarted_and_shown(tmp_path):
    changing = Child("judge-0", [sys.executable, "-c", CHANGING, str(tmp_path / "changing")])
    killed = Child("solver-0", [sys.executable, "-c", KILLED, str(tmp_path / "killed")])
    no_hub = Child("solver-1", [sys.executable, "-c", NO_HUB, str(tmp_path / "no-hub")])
    slow = Child("trainer-0", [sys.executable, "-c", SLOW_FAILING, str(tmp_path / "slow")])
    watcher = Child("creator-0", [sys.executable, "-c", WATCHER, str(tmp_path / "run"), str(tmp_path / "seen.json"),
                                  *(str(tmp_path / n) for n in ("killed", "changing", "no-hub", "slow"))], finisher=True)
    supervisor = Supervisor(tmp_path / "run", [changing, killed, no_hub, slow, watcher], backoff_min_s=0.05,
                            backoff_max_s=0.1, max_identical_crashes=2, healthy_s=0.5)
    assert supervisor.run() == 0  # none is a crash loop: four exits each, and the run went on
    assert changing.crashes == killed.crashes == no_hub.crashes == slow.crashes == 4
    processes = json.loads((tmp_path / "seen.json").read_text())["processes"]
    assert processes["solver-0"]["restarts"] == 4 and processes["solver-0"]["pid"]
    assert processes["judge-0"]["restarts"] == 4 and processes["judge-0"]["last_error"] == "failure number 4"
    text = format_processes(processes)
    assert "judge-0" in text and "restarts 4" in text and "last error: failure number 4" in text
