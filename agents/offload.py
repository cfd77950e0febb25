"""Work that grows with a payload's size, done on one thread beside the hub's loop.

The hub's loop must not spend long on one message while heartbeats, leases and `status` wait. Decoding a
large result and packing it for the ledger (the blob written), and loading and encoding the large results a
reply carries, run here instead. The loop hands over a job (a function of nothing) and what to do with its
outcome; the worker runs the job, queues the outcome and wakes the loop's poller through an inproc socket;
the loop runs the continuation (a short ledger commit, a send) on its own thread, in the order jobs finish.
The worker never touches the ledger's connection or a hub socket.

    offload = Offload(ctx)
    poller.register(offload.wake, zmq.POLLIN)
    offload.submit(lambda: decode(frames), then=lambda outcome, error: ...)
    offload.finish()              # in the loop, when offload.wake is readable: runs the continuations

The interpreter's lock is still shared: a job's long C calls (msgpack, pydantic) hold it for tens of
milliseconds each, and a worker busy with job after job would leave the loop only the gaps between them. So
after a long job the worker rests for half as long again: under a flood of large results they wait in the
queue (their senders wait for their acks) while heartbeats, leases and `status` keep their turn.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

log = structlog.get_logger("agents.offload")
REST = 0.5  # after a job of t seconds the worker rests t * REST: the loop gets at least a third of the time
Continuation = Callable[[Any, BaseException | None], None]


class Offload:
    def __init__(self, ctx: zmq.Context) -> None:
        address = f"inproc://selfplay-offload-{id(self):x}"
        self.wake = ctx.socket(zmq.PAIR)  # the loop's end: readable when outcomes are waiting
        self.wake.bind(address)
        self._signal = ctx.socket(zmq.PAIR)  # the worker's end (a zmq socket stays on one thread)
        self._signal.connect(address)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque[tuple[Continuation, Any, BaseException | None]] = collections.deque()
        self.pending = 0  # jobs handed over and not yet finished by the loop
        self.jobs = 0  # jobs handed over in all
        self.failed = 0  # continuations that raised
        self._thread = threading.Thread(target=self._work, name="hub-offload", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], then: Continuation) -> None:
        """Run `job` on the worker; `then(outcome, None)` or `then(None, exception)` runs later in `finish`."""
        self.pending += 1
        self.jobs += 1
        self._jobs.put((job, then))

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, then = item
            started = time.monotonic()
            try:
                self._done.append((then, job(), None))
            except BaseException as e:  # handed to the loop, which answers the message's sender
                self._done.append((then, None, e))
            with contextlib.suppress(zmq.Again):  # the loop has wake-ups queued already; it drains all outcomes
                self._signal.send(b"", zmq.NOBLOCK)
            if (took := time.monotonic() - started) > 0.02:
                time.sleep(took * REST)  # a long job held the interpreter's lock in long C calls: the loop's turn
        self._signal.close(linger=0)

    def finish(self) -> None:
        """On the loop's thread: run the continuations of every job finished so far, in order."""
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self._done:
            then, outcome, error = self._done.popleft()
            self.pending -= 1
            try:
                then(outcome, error)
            except Exception:  # a continuation's failure (a full disk in a commit) must not end the loop
                self.failed += 1
                log.exception("offloaded work failed on the loop", failed=self.failed)

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the jobs handed over finish (a result being packed gets its blob written), then stop."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        self.wake.close(linger=0)
