"""Held task queries (long polling): the hub answers a TaskQuery with `wait_s` once its tasks are finished
(all of them, or with `wait_for="any"` the first of them).

    waiters.add(Waiter(sock, identity, msg_id, task_ids, deadline=now + wait_s, pending={...unfinished ids}))
    for w in waiters.finished(task_id): reply(w)     # when a task becomes done or dead
    for w in waiters.due(now): reply(w)              # the wait is over: answer with what there is

Why: a creator that polled every 20 ms made the hub re-read, re-validate and re-send every finished
result of a round on each poll (three quarters of the hub's CPU in bench/loop.py, on a machine whose
cores the solver and judge need) and still learned of the last result up to a poll late.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MAX_WAITERS = 1024  # held queries at once; past this a query is answered at once (a flood holds no memory)


@dataclass(eq=False)
class Waiter:
    sock: Any  # the zmq socket the query came in on
    identity: bytes
    msg_id: str  # the query's id: the reply's reply_to
    task_ids: list[str]  # as asked, in order: the reply lists them all
    deadline: float  # unix seconds
    pending: set[str] = field(default_factory=set)  # not finished yet
    any: bool = False  # answered when the first pending task finishes, not the last


class Waiters:
    def __init__(self) -> None:
        self._by_task: dict[str, list[Waiter]] = defaultdict(list)
        self._all: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._all)

    def add(self, waiter: Waiter) -> bool:
        """Hold `waiter` until its pending tasks finish or its deadline; False when too many are held."""
        if len(self._all) >= MAX_WAITERS:
            return False
        self._all.append(waiter)
        for task_id in waiter.pending:
            self._by_task[task_id].append(waiter)
        return True

    def pending(self) -> set[str]:
        return set(self._by_task)

    def waits_on(self, task_id: str) -> bool:
        return task_id in self._by_task

    def finished(self, task_id: str) -> list[Waiter]:
        """`task_id` is done or dead: the waiters it completes (nothing left pending, or waiting for any), taken out."""
        ready = []
        for waiter in self._by_task.pop(task_id, []):
            waiter.pending.discard(task_id)
            if not waiter.pending or waiter.any:
                ready.append(waiter)
        self._remove(ready)
        return ready

    def due(self, now: float) -> list[Waiter]:
        """Waiters whose deadline has passed, taken out."""
        expired = [w for w in self._all if w.deadline <= now]
        self._remove(expired)
        return expired

    def drop(self, identity: bytes) -> None:
        """A peer is gone: its held queries go unanswered."""
        self._remove([w for w in self._all if w.identity == identity])

    def _remove(self, waiters: list[Waiter]) -> None:
        if not waiters:
            return
        gone = set(map(id, waiters))
        self._all = [w for w in self._all if id(w) not in gone]
        for waiter in waiters:
            for task_id in waiter.pending:
                held = [w for w in self._by_task.get(task_id, []) if id(w) not in gone]
                if held:
                    self._by_task[task_id] = held
                else:
                    self._by_task.pop(task_id, None)
