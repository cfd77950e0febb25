"""TensorBoard for the live loop: RUN/tensorboard, written from the ledger as the run goes, one point per
policy version (the x axis of every chart):

    board = LiveBoard(run_dir)      # `up` polls it while the hub runs on its machine
    board.poll()                    # writes what the ledger gained since the last poll (at most every every_s: 30)

    reward/train                  mean verdict score of the samples a version produced on training prompts
    score/heldout_test            mean score of the version's greedy answers to the held-out test prompts
    score/validation              the same on the validation prompts (what promotion decides on)
    train/<metric>                the trainer's report for the round that made the version: loss, KL proxy
                                  (`kl`), clip fraction, advantages, gradient norm, round_s, ...
    throughput/train_tokens_per_s the trainer's tokens per second in that round
    throughput/samples_per_s      training samples the previous version produced, per second of the round
    staleness/versions_behind     how many versions older than the one trained on its samples were (0: on-policy)

`tensorboard --logdir RUN/tensorboard` shows it. Only finished figures are written (a version's held-out
score once every test prompt has an answer), so nothing is written twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import structlog

from agents.ledger_query import LedgerReader

log = structlog.get_logger("launch.board")


class LiveBoard:
    def __init__(self, run_dir: str | Path, every_s: float = 30.0) -> None:
        self.run_dir, self.every_s = Path(run_dir), every_s
        self.written: set[tuple[str, int]] = set()
        self.seen_train: set[str] = set()
        self.train_since = 0.0  # `updated` of the newest train task read: older ones are not read again
        self.writer: Any = None
        self.next_poll = 0.0

    def poll(self, force: bool = False) -> int:
        """Write the new points; how many. Never raises: a board must not stop a run."""
        if not force and time.monotonic() < self.next_poll:
            return 0
        self.next_poll = time.monotonic() + self.every_s
        try:
            with LedgerReader.for_run(self.run_dir) as ledger:
                points = self._points(ledger)
        except Exception as e:  # no ledger yet, a lock held too long, no tensorboard installed: try again later
            log.debug("board not written", error=str(e))
            return 0
        new = [(tag, version, value) for tag, version, value in points if (tag, version) not in self.written]
        if new:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            writer, now = self._writer(), time.time()
            for tag, version, value in new:
                writer.add_event(Event(wall_time=now, step=version,
                                       summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))
                self.written.add((tag, version))
            writer.flush()
        return len(new)

    def close(self) -> None:
        self.poll(force=True)
        if self.writer is not None:
            self.writer.close()

    def _writer(self) -> Any:
        """TensorBoard's own event writer (not torch's SummaryWriter: `up` does not import torch for this)."""
        if self.writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.writer = EventFileWriter(str(self.run_dir / "tensorboard"))
        return self.writer

    def _points(self, ledger: LedgerReader) -> list[tuple[str, int, float]]:
        points: list[tuple[str, int, float]] = []
        rewards = ledger.reward_by_version()
        versions = set(ledger.policy_versions())
        # a version's training reward is final once the next version exists (its samples are all judged)
        points += [("reward/train", v, mean) for v, (mean, _) in rewards.items() if v + 1 in versions]
        counts = ledger.prompts_by_source()
        for source, tag in (("eval", "score/heldout_test"), ("validation", "score/validation")):
            for v, answers in ledger.eval_scores(source).items():  # complete: every prompt of the set answered
                if len(answers) == counts.get(source, 0):
                    points.append((tag, v, sum(a.score for a in answers.values()) / len(answers)))
        metrics = ledger.db.execute("SELECT name, value, policy_version FROM metrics WHERE policy_version IS NOT NULL")
        round_s = {}
        for name, value, version in metrics:
            points.append((f"train/{name}", version, value))
            if name == "round_s":
                round_s[version] = value
        points += [("throughput/samples_per_s", v, rewards[v - 1][1] / s) for v, s in round_s.items()
                   if v - 1 in rewards and s > 0]
        points += self._train_tasks(ledger)
        return points

    def _train_tasks(self, ledger: LedgerReader) -> list[tuple[str, int, float]]:
        """Staleness and training throughput from the train tasks finished since the last poll."""
        points = []
        rows = ledger.db.execute("SELECT task_id, payload, result, updated FROM tasks WHERE kind = 'train' AND "
                                 "state = 'done' AND updated >= ? ORDER BY updated", (self.train_since,))
        for task_id, payload, result, updated in rows:
            if task_id in self.seen_train or result is None:
                continue
            self.seen_train.add(task_id)
            self.train_since = max(self.train_since, updated)
            task, report = msgpack.unpackb(payload, raw=False), msgpack.unpackb(result, raw=False)
            version = report["policy_version"]
            if report.get("tokens_per_s"):
                points.append(("throughput/train_tokens_per_s", version, report["tokens_per_s"]))
            lags = [version - 1 - s["policy_version"] for g in task.get("groups", []) for s in g.get("samples", [])]
            if lags:
                points.append(("staleness/versions_behind", version, sum(lags) / len(lags)))
        return points
