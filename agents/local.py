"""AgentLink's interface inside one process: a submitted task runs at once on local worker functions.

    link = LocalLink({"generate": solve, "judge": judge, "train": train})   # each: Assign -> link.complete(...)
    creator = Creator(link, config, seeds)                                  # the real creator, no hub
    creator.run(rounds)

For benchmarks and experiments that need the creator's logic without sockets, a ledger or polling
(bench/loop.py's baseline, the methods table's eva arms). Not a hub: no leases, retries or persistence.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from types import SimpleNamespace

from protocol.messages import TASK_KIND_OF, Assign, ResultPayload, TaskInfo, TaskPayload

Worker = Callable[[Assign], None]  # does the task, then calls link.complete or link.fail


class LocalLink:
    def __init__(self, workers: dict[str, Worker] | None = None) -> None:
        self.hub_policy_version = 0
        self.announcements: queue.Queue = queue.Queue()
        self.config = SimpleNamespace(name="local", data=None)  # no data channel: weights are handed over in-process
        self.workers: dict[str, Worker] = dict(workers or {})  # task kind ("generate", "judge", "train") -> worker
        self.results: dict[str, TaskInfo] = {}
        self.submitted: dict[str, list[str]] = {}  # submit key -> task ids

    def submit(self, tasks: list[TaskPayload], timeout_s: float = 30.0, key: str | None = None) -> list[str]:
        if key is not None and key in self.submitted:  # as the hub does: a repeated key queues nothing
            return self.submitted[key]
        ids = []
        for task in tasks:
            task_id = os.urandom(6).hex()
            ids.append(task_id)
            kind = TASK_KIND_OF[task.kind]
            if kind not in self.workers:
                raise KeyError(f"no local worker for {kind} tasks (have {sorted(self.workers)})")
            self.workers[kind](Assign(task_id=task_id, attempt=1, lease_s=1, deadline_unix_s=0, task=task))
        if key is not None:
            self.submitted[key] = ids
        return ids

    def complete(self, assign: Assign, result: ResultPayload) -> None:
        self.results[assign.task_id] = TaskInfo(task_id=assign.task_id, state="done", attempt=1, result=result)

    def fail(self, assign: Assign, reason: str, retryable: bool = True) -> None:
        self.results[assign.task_id] = TaskInfo(task_id=assign.task_id, state="dead", attempt=1, reason=reason)

    def query(self, task_ids: list[str], timeout_s: float = 30.0, wait_s: float = 0.0,
              wait_for: str = "all") -> list[TaskInfo]:
        """Every task ran at submit: nothing to wait for."""
        return [self.results[t] for t in task_ids]
