"""The hub on failing storage, as real processes on real files: a ledger emptied, lost or damaged stops it with
one line (never an empty ledger in its place); a full disk fails the request at hand, not the hub."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zmq

from tests.launch.test_cli import SELFPLAY
from tests.reliability.raw import Raw, generate_task, prompt
from tests.reliability.run import hub_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _fill_ledger(tmp_path) -> Path:
    """A hub process that queues ~2 MB of tasks and stops: its run directory, with ledger and marker."""
    with hub_process(tmp_path) as (_, control):
        ctx = zmq.Context()
        creator = Raw(ctx, control, b"creator-0/control/a")
        creator.reply_to(creator.send("ready", {"role": "creator", "name": "creator-0"}))
        for i in range(16):
            big = prompt(f"p{i}", text="x" * 128_000)
            kind, _ = creator.reply_to(creator.send("submit", {"tasks": [generate_task(big)]}), timeout_ms=10_000)
            assert kind == "ack"
        creator.close()
        ctx.destroy(linger=0)
    return tmp_path / "hub-run"


def _hub_alone(tmp_path, timeout_s=30) -> subprocess.CompletedProcess:
    """`python -m launch.worker hub` on the run hub_process made (same topology file), to its exit."""
    return subprocess.run([sys.executable, "-m", "launch.worker", "hub", str(tmp_path / "hub.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


def _damage(run: Path, how: str) -> None:
    ledger = run / "ledger.sqlite"
    if how == "truncated to 0 bytes":
        ledger.write_bytes(b"")
    elif how == "deleted":
        ledger.unlink()
    else:  # 8 KiB of garbage in the middle
        with open(ledger, "r+b") as f:
            f.seek(ledger.stat().st_size // 2 // 4096 * 4096)
            f.write(os.urandom(8192))


@pytest.mark.parametrize("how", ["truncated to 0 bytes", "deleted", "8 KiB of garbage mid-file"])
def test_a_lost_or_damaged_ledger_stops_the_hub_with_one_line(tmp_path, how):
    run = _fill_ledger(tmp_path)
    assert not list(run.glob("ledger.sqlite-*"))  # closed cleanly: no WAL left
    _damage(run, how)
    ledger = run / "ledger.sqlite"
    damaged = ledger.read_bytes() if ledger.exists() else None
    done = _hub_alone(tmp_path)  # before: it started on an empty (or damaged) ledger and served
    assert done.returncode == 78, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("hub: ")]
    assert len(lines) == 1 and "ledger" in lines[0], done.stderr[-2000:]
    assert ("missing" if how == "deleted" else "empty" if how.startswith("truncated") else "damaged") in lines[0]
    assert (ledger.read_bytes() if ledger.exists() else None) == damaged  # nothing written in its place
    assert (run / "ledger.id").exists()  # the marker that said a ledger was lost


def test_up_stops_instead_of_restarting_a_hub_that_cannot_start(tmp_path):
    run = _fill_ledger(tmp_path)
    _damage(run, "truncated to 0 bytes")
    started = time.monotonic()  # every role: the agents wait for a hub that never comes, and are stopped with it
    up = subprocess.run([SELFPLAY, "up", str(tmp_path / "hub.toml")], capture_output=True, text=True, timeout=90)
    assert up.returncode == 78, up.stderr[-2000:]
    assert "cannot run as set up" in up.stderr and "empty" in up.stderr
    hub_starts = [line for line in up.stderr.splitlines() if "started" in line and "name=hub" in line]
    assert len(hub_starts) == 1 and time.monotonic() - started < 60, up.stderr[-2000:]  # once, not a restart loop


@pytest.fixture
def small_disk(tmp_path):
    """The hub's run directory on a 4 MiB tmpfs of its own (root only, as CI runs)."""
    run = tmp_path / "hub-run"
    run.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(run)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test needs a small disk of its own")
    try:
        yield run
    finally:
        subprocess.run(["umount", "-l", str(run)], capture_output=True)


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(64 << 10))
                f.flush()
        except OSError:
            pass


def test_a_full_disk_fails_the_request_and_the_hub_stays_up(tmp_path, small_disk):
    (small_disk / "adapters").mkdir()
    (small_disk / "adapters" / "v000007.safetensors.tmp").write_bytes(bytes(1000))  # left by a crash mid-write
    with hub_process(tmp_path, heartbeat_interval_s=0.2, liveness=10_000) as (proc, control):
        ctx = zmq.Context()
        creator = Raw(ctx, control, b"creator-0/control/a")
        trainer, trainer_data = Raw(ctx, control, b"trainer-0/control/a"), Raw(ctx, proc.data, b"trainer-0/data")
        creator.reply_to(creator.send("ready", {"role": "creator", "name": "creator-0"}))
        trainer.reply_to(trainer.send("ready", {"role": "trainer", "name": "trainer-0"}))
        big = {"tasks": [generate_task(prompt("p-big", text="y" * 1_000_000))]}
        tensors = {n: ("float32", list(t.shape), t.numpy().tobytes())
                   for n, t in {"m.lora_A.weight": torch.ones(4, 64), "m.lora_B.weight": torch.ones(64, 4)}.items()}
        update = {"version": 1, "parent_version": 0, "base_model": "m", "adapter_config": {"r": 4}}

        _fill(small_disk / "filler")
        reply = creator.reply_to(creator.send("submit", big), timeout_ms=10_000)
        assert reply is not None and reply[0] == "error" and reply[1]["code"] == "internal", reply
        assert "full" in reply[1]["detail"], reply
        reply = trainer_data.reply_to(trainer_data.send("policy_update", update, tensors=tensors), timeout_ms=10_000)
        assert reply is not None and reply[0] == "error" and reply[1]["code"] == "internal", reply
        assert not list((small_disk / "adapters").glob("*.tmp"))  # no half file left filling the disk
        status = creator.reply_to(creator.send("status_query"), timeout_ms=5000)
        assert status[0] == "status_reply" and status[1]["metrics"]["rejected.internal"] == 2
        assert proc.poll() is None

        (small_disk / "filler").unlink()  # space again: the same requests go through
        assert creator.reply_to(creator.send("submit", big), timeout_ms=10_000)[0] == "ack"
        reply = trainer_data.reply_to(trainer_data.send("policy_update", update, tensors=tensors), timeout_ms=10_000)
        assert reply[0] == "ack" and reply[1]["status"] == "accepted", reply
        for client in (creator, trainer, trainer_data):
            client.close()
        ctx.destroy(linger=0)
        assert not (small_disk / "adapters" / "v000007.safetensors.tmp").exists()  # the crash's leftover: cleaned at start
