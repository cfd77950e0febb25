"""The trainer process: judged groups in, a new policy version out.

    agent = TrainerAgent(link, load_config(algo="dpo", model="./tiny/policy", data="-", out="run/trainer"))
    agent.run(stop_event)            # link: an AgentLink with the hub's data endpoint (weight sync)

Per train task: the method's rows from the groups (best/worst pairs, real/generated, judged
triples, rewarded answers: trainer.methods) -> one pass of the same recipe `selfplay train` runs, with
the method's online reference (for the preference and demonstration methods the policy at the start of
the round: each iteration's policy is the next one's reference; for GRPO/RLOO the starting model)
-> checkpoint, recording the task and version v+1 -> publish the adapter as v+1 over the link's data
socket (keyed like its control socket) and wait for the hub to persist it -> report.

A crash anywhere loses nothing and trains nothing twice: before the checkpoint, the retried task is
trained again from the previous checkpoint; after it, the restarted trainer resumes from it, sees
that the retried task is the one it recorded, and only publishes (again) and reports.

Promotion (docs/live.md, *promotion and rollback*): a train task names the best version validated so
far (`best`), whose checkpoint is then never pruned; a task with `restore`
first loads that version's checkpoint (adapter, optimizer, scheduler) and, with no groups, publishes
it unchanged as the next version, its report's `restored_from` metric naming the version it copies.
A fresh trainer checkpoints version 0 (the starting adapter) before anything, so it can be restored too.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from pathlib import Path

import structlog
import zmq

from agents.adapter_store import portable_base
from agents.agent import AgentLink
from protocol.codec import ProtocolError, decode, encode, new_msg_id
from protocol.constants import MAX_REAL
from protocol.messages import Assign, PolicyUpdate, TrainingReport
from protocol.transport import limits_for
from trainer import distributed
from trainer.checkpoint import checkpoints, read_extra
from trainer.config import TrainConfig
from trainer.methods import get_method, rows_from_groups
from trainer.recipe import Recipe

log = structlog.get_logger("agents.trainer")
FOLLOWER_WAIT_S = 7 * 86400.0  # ranks other than 0 wait this long for rank 0's next call (a dead rank: torchrun)


class TrainerAgent:
    def __init__(self, link: AgentLink, config: TrainConfig, *, good_score: float = 1.0,
                 publish_timeout_s: float = 120.0) -> None:
        if config.finetune != "lora":
            raise ValueError("the live trainer publishes LoRA adapters: finetune must be 'lora'")
        self.config = config.model_copy(update=live_settings(config))
        self.link = link
        self.good_score, self.publish_timeout_s = good_score, publish_timeout_s
        self.recipe = Recipe(self.config, resume=True, rows=[], collective_timeout_s=FOLLOWER_WAIT_S)
        self.recipe.setup()
        if self.recipe.world.sharded:  # rank 0 of several: the others make each collective call it makes
            self.recipe = distributed.Leader(self.recipe)
        self.trained: dict = self.recipe.resumed_extra.get("live", {})  # the last task trained: task_id, version, ...
        self.version = max(link.hub_policy_version, self.trained.get("version", 0))
        self.best: int | None = self.recipe.resumed_extra.get("best")  # the version whose checkpoint is pinned
        if not self.trained and self.version == 0:  # the starting adapter, so that a rollback can go back to v0
            self.trained = {"version": 0}
            self._checkpoint()
        self.published = link.hub_policy_version  # newest version the hub is known to have
        self.publish_seconds: list[float] = []  # wall time of each publish (benchmarks read it)
        self._data: zmq.Socket | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            self.link.serve(self.train, stop)
        finally:
            if isinstance(self.recipe, distributed.Leader):
                self.recipe.release()
            self.recipe.cleanup()
            distributed.stop()

    def train(self, assign: Assign) -> None:
        task = assign.task
        if task.kind != "train_task":
            return self.link.fail(assign, f"a trainer does not take {task.kind}", retryable=True)
        rows = rows_from_groups(task.groups, self.config.algo, good_score=self.good_score)
        # groups that gave no row: ties for pairs and group-relative advantages (no signal), no demonstration, ...
        used = {row["prompt_id"] for row in rows}
        skipped = sum(g.prompt.prompt_id not in used for g in task.groups)
        if not rows and task.restore is None:  # e.g. every group tied: nothing to learn from, and no new version
            report = TrainingReport(policy_version=self.version, step=self.recipe.cursor.step, examples=0)
            return self.link.complete(assign, report)
        if self.trained.get("task_id") == assign.task_id:  # trained and checkpointed before a crash: publish only
            log.info("round already trained; publishing it", task_id=assign.task_id, version=self.trained["version"])
            return self._publish_and_report(assign, TrainingReport.model_validate(self.trained["report"]))
        if self.version > self.published and not self.publish(self.version):
            # the last round's policy never reached the hub (its task went DEAD meanwhile): versions follow one
            # another, so it goes first; until it is taken, nothing more is trained
            return self.link.fail(assign, f"the hub has not taken policy v{self.version} yet", retryable=True)
        self.best, kept = task.best, self.checkpoints()  # None unpins: a run without promotion keeps no old checkpoint
        if task.best is not None and task.best not in kept:
            log.warning("no checkpoint of the best version is kept: a rollback to it will fail", best=task.best,
                        kept=sorted(kept))
        started, first_step, metrics = time.perf_counter(), len(self.recipe.step_seconds), {}
        if task.restore is not None:
            path = kept.get(task.restore)
            if path is None:
                return self.link.fail(assign, f"no checkpoint of policy v{task.restore} is kept (kept: "
                                      f"{sorted(kept)}); a rollback goes to the version the train "
                                      f"tasks name in `best`", retryable=False)
            self.recipe.restore(path)
            metrics["restored_from"] = float(task.restore)
        if rows:
            if isinstance(self.recipe, distributed.Leader):  # refused here, not on every rank mid-round
                self.recipe.check_round(rows)
            metrics |= _finite(self.recipe.train_round(rows), assign.task_id)
        tokens_per_s = metrics.pop("tokens_per_s", 0.0)
        report = TrainingReport(policy_version=self.version + 1, step=self.recipe.cursor.step, examples=len(rows),
                                tokens_per_s=tokens_per_s, metrics={**metrics, "round_s": time.perf_counter() - started,
                                                                    "groups_skipped": skipped})
        self.trained = {"task_id": assign.task_id, "version": report.policy_version, "report": report.model_dump()}
        self._checkpoint(kept)
        self.version = report.policy_version
        steps = self.recipe.step_seconds[first_step:] or [0.0]
        log.info("round trained", task_id=assign.task_id, version=self.version, examples=len(rows),
                 groups_skipped=skipped, restored_from=task.restore,
                 loss=metrics.get("loss"), step_s=round(statistics.median(steps), 4),
                 round_s=round(report.metrics["round_s"], 4))
        self._publish_and_report(assign, report)

    def checkpoints(self) -> dict[int, Path]:
        """policy version -> the checkpoint that holds it, of those on disk."""
        found: dict[int, Path] = {}
        for path in checkpoints(self.recipe.out / "checkpoints"):
            version = read_extra(path).get("live", {}).get("version")
            if version is not None:
                found[version] = path  # a version checkpointed twice (a retry): the newer
        return found

    def _checkpoint(self, kept: dict[int, Path] | None = None) -> None:
        """A new checkpoint of this version (never replacing one: a rollback trains no step), the best's pinned;
        `kept`: self.checkpoints() when the caller has it already."""
        best = (self.checkpoints() if kept is None else kept).get(self.best) if self.best is not None else None
        self.recipe.save_checkpoint(extra={"live": self.trained, "best": self.best}, new=True,
                                    pinned=[best.name] if best else ())

    def _publish_and_report(self, assign: Assign, report: TrainingReport) -> None:
        started = time.perf_counter()
        published = self.publish(report.policy_version)
        self.publish_seconds.append(time.perf_counter() - started)
        if not published:
            return self.link.fail(assign, "the hub did not take the new policy", retryable=True)
        log.info("policy published", task_id=assign.task_id, version=report.policy_version,
                 publish_s=round(self.publish_seconds[-1], 4))
        self.link.complete(assign, report)

    def publish(self, version: int) -> bool:
        """Send the adapter as `version`; True once the hub acknowledged it (it saved it first). Without an answer
        it is sent again (the connection may have dropped, say in a network partition): the hub acknowledges a
        repeat of the adapter it has as a duplicate, so a resend never publishes twice."""
        lora = self.config.lora
        update = PolicyUpdate(version=version, parent_version=version - 1, base_model=portable_base(self.config.model),
                              adapter_config={"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
                                              "target_modules": lora.target_modules})
        tensors = self.recipe.adapter_tensors()  # live on a CPU: the hub has them before the next step
        if self._data is None:
            self._data = self.link.data_socket()
        num_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        # Resend after the liveness window, or longer for a big adapter (it must have time to arrive and be saved).
        resend_s = max(self.link.config.heartbeat_interval_s * self.link.config.liveness, num_bytes / 20e6)
        deadline, sent = time.monotonic() + self.publish_timeout_s, set()
        while (left := deadline - time.monotonic()) > 0:
            msg_id = new_msg_id()
            try:
                self._data.send_multipart(encode(update, sender=self.link.config.name, msg_id=msg_id, tensors=tensors),
                                          zmq.NOBLOCK, copy=False)
                sent.add(msg_id)
            except zmq.Again:  # no connection and the queue full: wait for one
                pass
            answer_by = time.monotonic() + min(left, resend_s)
            while (wait := answer_by - time.monotonic()) > 0 and self._data.poll(int(wait * 1000) + 1):
                try:
                    env = decode(self._data.recv_multipart(copy=False), limits_for("data"))
                except ProtocolError as e:
                    log.warning("bad message on the data channel", code=e.code, detail=e.detail)
                    continue
                if env.header.reply_to not in sent:
                    continue  # the answer to an earlier try, already settled
                reply = env.message
                if reply.kind == "ack" and reply.status in ("accepted", "duplicate"):
                    self.published = max(self.published, version)
                    return True
                if reply.kind == "ack":
                    return False
                log.error("the hub refused the policy", version=version, code=reply.code, detail=reply.detail)
                return False
            if left > resend_s:
                log.warning("no answer to the publish; sending it again", version=version)
        log.warning("publish timed out", version=version)
        return False


def follow(config: TrainConfig) -> None:
    """A rank other than 0 of a sharded live trainer (torchrun): the same recipe as rank 0's TrainerAgent, making
    each collective call rank 0 makes, until rank 0 stops."""
    recipe = Recipe(config.model_copy(update=live_settings(config)), resume=True, rows=[],
                    collective_timeout_s=FOLLOWER_WAIT_S)
    recipe.setup()
    try:
        distributed.follow(recipe)
    finally:
        recipe.cleanup()
        distributed.stop()


def live_settings(config: TrainConfig) -> dict[str, object]:
    """What the live trainer imposes: one pass per round at a constant rate, the method's online reference, and the
    method's online settings (CUT's 1.1 / 1.0) where the config leaves them at their defaults."""
    method = get_method(config.algo)
    update: dict[str, object] = {"scheduler": "constant", "warmup_ratio": 0.0, "reference": method.online_reference,
                                 "save_every": 10**9, "tensorboard": False}
    if method.online:
        section = method.settings_of(config)
        update[method.section] = section.model_copy(
            update={k: v for k, v in method.online.items() if k not in section.model_fields_set})
    return update


def _finite(metrics: dict[str, float], task_id: str) -> dict[str, float]:
    """The round's metrics without NaN, infinite or huge values (a diverging loss): the report carries only what the
    protocol allows (the hub refuses others), and the log says which were dropped."""
    bad = sorted(k for k, v in metrics.items() if not (math.isfinite(v) and abs(v) <= MAX_REAL))
    if bad:
        log.warning("non-finite training metrics left out of the report", task_id=task_id, metrics=bad)
    return {k: v for k, v in metrics.items() if k not in bad}
