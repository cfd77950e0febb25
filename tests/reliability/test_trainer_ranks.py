"""The live trainer as 2 ranks (torchrun, gloo, FSDP2) in a real `selfplay up` run: it trains and publishes each
round once, the solvers load the versions, and a rank killed mid-round ends the group, whose task is retried."""

import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.run import Up, check_nothing_lost, write_topology

pytestmark = pytest.mark.slow


def two_rank_topology(tmp_path: Path, models, rounds: int) -> Path:
    path = write_topology(tmp_path, models, rounds=rounds)
    path.write_text(path.read_text() + "nproc = 2\n")  # [trainer] is the file's last section
    return path


def rank_pid(group_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (torchrun's children carry RANK in their environment)."""
    try:
        children = Path(f"/proc/{group_pid}/task/{group_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in map(int, children):
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if f"RANK={rank}".encode() in env:
            return child
    return None


def test_a_two_rank_trainer_publishes_each_round_once_and_survives_a_rank_killed_mid_round(tmp_path, tiny_models):
    """3 rounds; in a round after the first (so there is a checkpoint to resume), rank 1 is stopped while rank 0
    holds the train task (rank 0 then waits for it in the round's first collective and cannot finish), then
    killed: the group ends, is started again, and the task is retried and trained once."""
    with Up(two_rank_topology(tmp_path, tiny_models, rounds=3)) as up:
        while True:
            tasks = up.wait_for(lambda: up.query("SELECT 1 FROM policies") and up.leased_to("trainer-0", "train"),
                                what="trainer-0 holding a train task")
            group = up.children()["trainer-0"]
            rank1 = up.wait_for(lambda: rank_pid(group, 1), what="rank 1 running")  # noqa: B023
            os.kill(rank1, signal.SIGSTOP)
            time.sleep(0.5)
            if up.leased_to("trainer-0", "train") == tasks:
                break
            os.kill(rank1, signal.SIGCONT)  # it had just finished: try the next round
        os.kill(rank1, signal.SIGKILL)
        up.wait_restarted("trainer-0", group)
        summary = up.finish()
    trained = [(e.get("task_id"), e.get("version"), e.get("examples")) for e in up.events("trainer-0", "round trained")]
    train_tasks = up.query("SELECT task_id, state, attempt FROM tasks WHERE kind = 'train' ORDER BY created")
    assert summary["rounds"] == 3 and summary["policy_version"] == 3, (summary, trained, train_tasks)
    assert [v for (v,) in up.query("SELECT version FROM policies ORDER BY version")] == [1, 2, 3]
    published = [e["version"] for e in up.events("trainer-0", "policy published")]
    assert published == [1, 2, 3], "each version published once, by rank 0, across the restart"
    setups = up.events("trainer-0-rank1", "setup")
    assert len(setups) >= 2 and all(s["ranks"] == 2 for s in setups), "rank 1 set up as one of two, twice"
    assert len(up.events("trainer-0-rank1", "checkpoint")) >= 2, "rank 1 took part in the checkpoints"
    loaded = {e["version"] for e in up.events("solver-0", "policy loaded")}
    assert {1, 2} <= loaded, loaded  # rounds 2 and 3 were answered by versions 1 and 2
    check_nothing_lost(up)  # and no train task trained twice, across the restart
    assert all(up.query("SELECT state, attempt > 1 FROM tasks WHERE task_id = ?", t) == [("done", 1)] for t in tasks)
    assert "trainer-0" in {e["name"] for e in up.events("hub-0", "agent gone")}
