"""The agent side of the protocol: a worker API whose socket I/O runs on its own thread.

    link = AgentLink(LinkConfig(name="solver-0", role="solver", task_kinds=["generate"],
                                control="ipc:///run/sock/hub-control.ipc"))
    link.start()                                   # READY -> WELCOME
    while running:
        assign = link.next_task(timeout_s=1.0)     # an Assign, or None
        if assign is not None:
            link.complete(assign, do_the_work(assign.task))
    link.stop()                                    # DISCONNECT, thread joined

The compute thread never touches the control socket. The I/O thread (vLLM's engine-core pattern, zguide's
Paranoid Pirate worker) sends heartbeats even while a model step holds the compute thread for
minutes, renews leases at half their length, keeps every result in an outbox until the hub
acknowledges it, reconnects with exponential backoff and jitter when the hub falls silent, and
replays the outbox after every (re)connection. The link also owns the agent's credentials: the data
channel (weight sync) is opened with `link.data_socket()`, keyed like the control channel.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
import zmq
from pydantic import Field

from protocol import keys
from protocol.codec import ProtocolError, decode, encode, new_msg_id
from protocol.constants import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS
from protocol.messages import (
    Assign,
    Disconnect,
    Heartbeat,
    LeaseRef,
    PolicyAnnounce,
    Ready,
    Renew,
    Result,
    ResultPayload,
    Role,
    StatusQuery,
    StatusReply,
    Submit,
    TaskFailed,
    TaskInfo,
    TaskKind,
    TaskPayload,
    TaskQuery,
)
from protocol.settings import Strict
from protocol.transport import ClientCurve, agent_socket

log = structlog.get_logger("agents.agent")


class LinkConfig(Strict):
    name: str = Field(description="Agent name, unique in the run (must match its CURVE key over tcp).")
    role: Role = Field(description="Role announced in READY.")
    control: str = Field(description="The hub's control endpoint (ipc://... or tcp://HOST:PORT).")
    data: str | None = Field(None, description="The hub's data endpoint, for weight sync.")
    capacity: int = Field(1, ge=1, description="Tasks held at once.")
    task_kinds: list[TaskKind] = Field(default_factory=list, description="Queues to take work from.")
    keys_dir: str | None = Field(None, description="Key directory with agents/NAME.key_secret and hub.key (both "
                                                   "channels use them; required for tcp endpoints).")
    heartbeat_interval_s: float = Field(HEARTBEAT_INTERVAL_S, gt=0, description="Heartbeat period.")
    liveness: int = Field(HEARTBEAT_LIVENESS, ge=1, description="Silent hub intervals before reconnecting.")
    reconnect_min_s: float = Field(0.1, gt=0, description="First reconnect delay; doubles up to the max.")
    reconnect_max_s: float = Field(5.0, gt=0, description="Longest reconnect delay.")


@dataclass
class _Pending:
    message: Any  # the request, sent again after a reconnection when repeating it is harmless
    done: threading.Event = field(default_factory=threading.Event)
    reply: Any = None
    abandoned: bool = False  # the caller timed out: never send it again

    @property
    def repeatable(self) -> bool:
        """Queries, and submits with an idempotency key: a new hub answers them as the old one would have."""
        kind = self.message.kind
        repeatable = kind in ("task_query", "status_query") or (kind == "submit" and self.message.key is not None)
        return repeatable and not self.abandoned


class AgentLink:
    def __init__(self, config: LinkConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.ctx = context or zmq.Context.instance()
        self.inbox: queue.Queue[Assign] = queue.Queue()
        self.announcements: queue.Queue[PolicyAnnounce] = queue.Queue()
        self.connected = threading.Event()
        self.hub_id: str | None = None
        self.hub_policy_version = 0  # newest policy version the hub knew at the last WELCOME
        self._outbox: dict[tuple[str, int], Any] = {}  # unacknowledged Result / TaskFailed
        self._leases: dict[tuple[str, int], tuple[float, float]] = {}  # -> (renew_at, lease_s)
        self._resend_at: dict[tuple[str, int], float] = {}  # outbox entries on the wire (I/O thread only)
        self._outbox_sent: dict[str, tuple[str, int]] = {}  # msg id of each outbox send -> its entry (I/O thread)
        self._ready_id: str | None = None  # msg id of the last READY sent
        self.refused: str | None = None  # why the hub refused our READY for good (the key's name or role)
        self._commands: queue.Queue[tuple[Any, str | None]] = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._io_loop, name=f"{config.name}-io", daemon=True)

    # ------------------------------------------------------------------ compute-thread API
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect and wait for the hub's WELCOME. What cannot work raises here, in one line, not on the I/O
        thread: a missing key file (FileNotFoundError), an endpoint that needs keys (TransportError), a hub that
        refuses this agent's name or role for its key (PermissionError). No answer in `timeout_s`: TimeoutError."""
        self._first_socket = self._connect()  # created here, then used only by the I/O thread
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.connected.wait(0.05):
            if self.refused is not None:
                self.stop()
                raise PermissionError(f"{self.config.name}: the hub refused it: {self.refused}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.config.name}: no WELCOME from {self.config.control} in {timeout_s:.0f} s")

    def next_task(self, timeout_s: float | None = None) -> Assign | None:
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def serve(self, handle: Callable[[Assign], None], stop: threading.Event,
              each: Callable[[], None] | None = None) -> None:
        """The worker loop of every agent: (housekeeping), take a task, handle it; until `stop`. A handler's
        exception fails that task (retryable: the hub re-dispatches it up to max_attempts, then it is DEAD
        with the error as its reason) instead of killing the agent."""
        while not stop.is_set():
            if each is not None:
                try:
                    each()
                except Exception:  # e.g. a policy that does not load: logged; the agent keeps serving
                    log.exception("housekeeping failed", agent=self.config.name)
            assign = self.next_task(timeout_s=0.2)
            if assign is None:
                continue
            try:
                handle(assign)
            except Exception as e:  # a task that breaks its handler fails; the agent keeps serving
                log.exception("task failed", task_id=assign.task_id, attempt=assign.attempt)
                self.fail(assign, f"{type(e).__name__}: {e}"[:500], retryable=True)

    def complete(self, assign: Assign, result: ResultPayload) -> None:
        self._deliver(Result(task_id=assign.task_id, attempt=assign.attempt, result=result))

    def fail(self, assign: Assign, reason: str, retryable: bool = True) -> None:
        self._deliver(TaskFailed(task_id=assign.task_id, attempt=assign.attempt, reason=reason, retryable=retryable))

    def _deliver(self, message: Result | TaskFailed) -> None:
        """Into the outbox first (so pending_results() counts it at once), then onto the wire."""
        self._outbox[(message.task_id, message.attempt)] = message
        self._send(message)

    def submit(self, tasks: list[TaskPayload], timeout_s: float = 30.0, key: str | None = None) -> list[str]:
        """Queue tasks at the hub; their ids. Send again with the same `key` after a timeout: nothing is queued twice."""
        return self._request(Submit(tasks=tasks, key=key), timeout_s).task_ids

    def query(self, task_ids: list[str], timeout_s: float = 30.0, wait_s: float = 0.0,
              wait_for: Literal["all", "any"] = "all") -> list[TaskInfo]:
        """The tasks' states and results; with `wait_s`, once they are all (or with `wait_for="any"`, once any of
        them is) done or dead, or after `wait_s`."""
        if wait_s >= timeout_s:
            raise ValueError(f"timeout_s ({timeout_s}) must exceed wait_s ({wait_s}): the hub may hold the reply that long")
        return self._request(TaskQuery(task_ids=task_ids, wait_s=wait_s, wait_for=wait_for), timeout_s).tasks

    def status(self, timeout_s: float = 10.0) -> StatusReply:
        return self._request(StatusQuery(), timeout_s)

    def pending_results(self) -> int:
        return len(self._outbox)

    def credentials(self) -> ClientCurve | None:
        """CURVE credentials of both channels: this agent's secret key and the hub's public key (None over ipc)."""
        cfg = self.config
        if not cfg.keys_dir:
            return None
        return ClientCurve(keys.agent_keypair(cfg.keys_dir, cfg.name), keys.hub_public(cfg.keys_dir))

    def data_socket(self) -> zmq.Socket:
        """A new DEALER on the hub's data channel (weight sync), keyed like the control channel. It belongs to the
        calling thread (a solver's or trainer's compute thread), which closes it."""
        if self.config.data is None:
            raise ValueError(f"{self.config.name}: no data endpoint configured")
        return agent_socket(self.ctx, self.config.data, "data", name=self.config.name, curve=self.credentials())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send DISCONNECT, join the I/O thread, release the wake-up pipe. Safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _send(self, message: Any, msg_id: str | None = None) -> None:
        self._commands.put((message, msg_id))
        self._wake()

    def _request(self, message: Any, timeout_s: float) -> Any:
        msg_id = new_msg_id()
        pending = self._pending[msg_id] = _Pending(message)
        self._send(message, msg_id)
        if not pending.done.wait(timeout_s):
            pending.abandoned = True
            self._pending.pop(msg_id, None)
            raise TimeoutError(f"{self.config.name}: no reply to {message.kind} in {timeout_s:.0f} s")
        if getattr(pending.reply, "kind", None) == "error":
            raise RuntimeError(f"hub refused {message.kind}: {pending.reply.code}: {pending.reply.detail}")
        return pending.reply

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # after stop() the pipe is closed
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the I/O thread
    def _io_loop(self) -> None:
        cfg = self.config
        sock, attempt = self._first_socket, 0
        last_heard = last_beat = time.monotonic()
        tick_s = cfg.heartbeat_interval_s / 4
        while not self._stop.is_set():
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            events = dict(poller.poll(int(tick_s * 1000)))
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            self._flush_commands(sock)
            if events.get(sock):
                while sock.poll(0):
                    self._handle(sock, sock.recv_multipart(copy=False))
                    last_heard, attempt = time.monotonic(), 0
            now = time.monotonic()
            if now - last_beat >= cfg.heartbeat_interval_s:
                self._post(sock, Heartbeat())
                last_beat = now
            self._renew_leases(sock, now)
            self._resend_unacknowledged(sock, now)
            if now - last_heard > self._liveness_s:  # the hub is gone: reconnect
                self.connected.clear()
                sock.close(linger=0)
                delay = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("hub silent, reconnecting", agent=cfg.name, delay_s=round(delay, 2))
                if self._stop.wait(delay):
                    return
                sock, attempt = self._connect(), attempt + 1
                last_heard = time.monotonic()
        self._post(sock, Disconnect(reason="stopping"))
        sock.close(linger=500)

    def _connect(self) -> zmq.Socket:
        cfg = self.config
        sock = agent_socket(self.ctx, cfg.control, "control", name=cfg.name, curve=self.credentials())
        self._post_ready(sock)
        return sock

    def _post_ready(self, sock: zmq.Socket) -> None:
        self._ready_id = new_msg_id()
        self._post(sock, self._ready(), self._ready_id)

    def _ready(self) -> Ready:
        cfg = self.config
        holding = [LeaseRef(task_id=t, attempt=a) for t, a in list(self._outbox)]
        return Ready(role=cfg.role, name=cfg.name, capacity=cfg.capacity, task_kinds=cfg.task_kinds, holding=holding)

    def _post(self, sock: zmq.Socket, message: Any, msg_id: str | None = None) -> None:
        try:
            sock.send_multipart(encode(message, sender=self.config.name, msg_id=msg_id), zmq.NOBLOCK)
        except zmq.Again:  # queue full while the hub is away: the outbox keeps what matters
            log.warning("send queue full", agent=self.config.name, kind=message.kind)

    def _flush_commands(self, sock: zmq.Socket) -> None:
        while True:
            try:
                message, msg_id = self._commands.get_nowait()
            except queue.Empty:
                return
            if message.kind in ("result", "task_failed"):  # no more renewals for a finished lease
                self._leases.pop((message.task_id, message.attempt), None)
                self._post_outbox(sock, (message.task_id, message.attempt), message)
                continue
            self._post(sock, message, msg_id)

    def _renew_leases(self, sock: zmq.Socket, now: float) -> None:
        for key, (renew_at, lease_s) in list(self._leases.items()):
            if now >= renew_at:
                self._post(sock, Renew(task_id=key[0], attempt=key[1]))
                self._leases[key] = (now + lease_s / 2, lease_s)

    @property
    def _liveness_s(self) -> float:
        """Silence from the hub this long means it is gone; no ack this long means the result was lost."""
        return self.config.heartbeat_interval_s * self.config.liveness

    def _resend_unacknowledged(self, sock: zmq.Socket, now: float) -> None:
        """A result the hub has not acknowledged within its liveness window, while we still hear from it, was
        lost on the way (a full send queue): send it again (results are idempotent). Until the hub has it, the
        task's lease expires and the hub gives this agent no new work."""
        for key, at in list(self._resend_at.items()):
            message = self._outbox.get(key)
            if message is None:
                del self._resend_at[key]
            elif now >= at:
                log.warning("result unacknowledged; sending it again", agent=self.config.name, task_id=key[0],
                            attempt=key[1])
                self._post_outbox(sock, key, message)

    def _post_outbox(self, sock: zmq.Socket, key: tuple[str, int], message: Any) -> None:
        """Send an outbox entry under a msg id of its own, so that an Error replying to it finds it (below)."""
        msg_id = new_msg_id()
        self._outbox_sent[msg_id] = key
        if len(self._outbox_sent) > 4 * len(self._outbox) + 64:  # ids of acknowledged sends: keep the map small
            self._outbox_sent = {i: k for i, k in self._outbox_sent.items() if k in self._outbox}
        self._post(sock, message, msg_id)
        self._resend_at[key] = time.monotonic() + self._liveness_s

    def _refused(self, sock: zmq.Socket, key: tuple[str, int], error: Any) -> None:
        """The hub answered an outbox entry with an Error. `internal` (say, its disk is full) is passing: the entry
        stays and is sent again after the liveness window. Any other code will not change on a resend, so a refused
        result becomes a failure of the task (retryable: the hub can re-dispatch it), and a refused failure is
        dropped: the agent answers for its lease either way instead of resending one message forever."""
        message = self._outbox.get(key)
        if message is None or error.code == "internal":
            return
        log.error("hub refused a result", agent=self.config.name, task_id=key[0], attempt=key[1], code=error.code,
                  detail=error.detail)
        if message.kind == "result":
            failed = TaskFailed(task_id=key[0], attempt=key[1], retryable=True,
                                reason=f"the hub refused the result: {error.code}: {error.detail}"[:4096])
            self._outbox[key] = failed
            self._post_outbox(sock, key, failed)
        else:
            self._outbox.pop(key, None)

    def _handle(self, sock: zmq.Socket, frames: list) -> None:
        try:
            env = decode(frames)
        except ProtocolError as e:
            log.warning("bad message from hub", agent=self.config.name, code=e.code, detail=e.detail)
            return
        m = env.message
        pending = self._pending.pop(env.header.reply_to, None) if env.header.reply_to else None
        if m.kind == "welcome":
            # After any (re)connection replay what is unacknowledged: a new hub may lack it, an old one
            # may have refused it while it had us for dead; repeats are acknowledged as duplicates.
            if self._outbox:
                log.info("replaying outbox", agent=self.config.name, results=len(self._outbox), hub_id=m.hub_id)
                for key, message in list(self._outbox.items()):  # a snapshot: complete() may add meanwhile
                    self._post_outbox(sock, key, message)
            # Requests still unanswered (sent to a hub that died, or refused as not_ready) go again, so a
            # caller waiting on one gets its answer from the new hub instead of a timeout.
            for msg_id, waiting in list(self._pending.items()):
                if waiting.repeatable:
                    self._post(sock, waiting.message, msg_id)
            self.hub_id, self.hub_policy_version = m.hub_id, m.policy_version
            self.connected.set()
        elif m.kind == "assign":
            key = (m.task_id, m.attempt)
            if key not in self._leases and key not in self._outbox:
                self._leases[key] = (time.monotonic() + m.lease_s / 2, m.lease_s)
                self.inbox.put(m)
        elif m.kind == "ack":
            key = (m.task_id, m.attempt)
            if m.status == "renewed":
                pass
            elif m.status == "stale" and key in self._leases:  # a renewal refused: the hub took it back,
                self._leases.pop(key)  # so stop renewing; a result sent later is acknowledged as stale
            else:
                self._outbox.pop(key, None)
        elif m.kind == "policy_announce":
            self.announcements.put(m)
        elif m.kind == "error":
            log.warning("hub error", agent=self.config.name, code=m.code, detail=m.detail)
            refused = self._outbox_sent.pop(env.header.reply_to, None) if env.header.reply_to else None
            if refused is not None and m.code != "not_ready":
                self._refused(sock, refused, m)
            elif env.header.reply_to is not None and env.header.reply_to == self._ready_id and m.code == "forbidden":
                self.refused = m.detail  # our key does not allow this name or role: no retry will change that
            elif m.code == "in_use":  # our name's old connection is still alive to the hub: heard nothing more, we
                pass  # reconnect after the liveness window, when a dead one will have been buried
            elif m.code == "not_ready":  # the hub forgot us (restart, or buried while we were stalled)
                self._post_ready(sock)
                if pending is not None and pending.repeatable:  # asked again once welcomed (above)
                    self._pending[env.header.reply_to] = pending
                    pending = None
        if pending is not None:
            pending.reply = m
            pending.done.set()
