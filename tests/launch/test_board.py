"""RUN/tensorboard from a real ledger: one point per policy version per figure, only finished figures, none
written twice, read back with TensorBoard's own reader."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.ledger import Ledger
from launch.board import LiveBoard
from protocol.messages import JudgedGroup, Sample, TrainingReport, TrainTask
from tests.agents.test_ledger_query import SEED, build_run


def _scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_board_writes_each_finished_figure_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    build_run(ledger)  # v0 and v1 evaluated on both test prompts, v0's training reward final (v1 exists)
    board = LiveBoard(tmp_path)
    try:
        assert board.poll(force=True) > 0 and board.poll(force=True) == 0  # nothing new: nothing written
        samples = [Sample(sample_id=f"t{i}", prompt_id="p1", text="12", policy_version=v) for i, v in enumerate((0, 1))]
        [train] = ledger.submit([TrainTask(groups=[JudgedGroup(prompt=SEED, samples=samples, verdicts=[])], round=2)],
                                now=60)
        ledger.lease("train", "trainer-0", 1, 30, now=61)
        ledger.complete(train, 1, TrainingReport(policy_version=2, step=6, examples=2, tokens_per_s=250.0,
                                                 metrics={"loss": 0.5, "kl": 0.01, "round_s": 4.0}), now=65)
        assert board.poll() == 0  # within every_s: not read yet
        assert board.poll(force=True) > 0
    finally:
        board.close()
        ledger.close()
    scalars = _scalars(tmp_path)
    assert scalars["score/heldout_test"] == [(0, pytest.approx(0.5)), (1, pytest.approx(1.0))]  # first answers
    assert scalars["reward/train"] == [(0, pytest.approx(0.75)), (1, pytest.approx(0.0))]  # v2 exists: v1 is final
    assert scalars["train/loss"] == [(2, 0.5)] and scalars["train/kl"] == [(2, pytest.approx(0.01))]
    assert scalars["throughput/train_tokens_per_s"] == [(2, 250.0)]
    assert scalars["throughput/samples_per_s"] == [(2, pytest.approx(1 / 4.0))]  # v1's one training sample in 4 s
    assert scalars["staleness/versions_behind"] == [(2, pytest.approx(0.5))]  # samples of v0 and v1, trained from v1
