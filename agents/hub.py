"""The hub: a Majordomo-style broker over the ledger. Knows task kinds and queues, not algorithms.

    hub = Hub(HubConfig(run_dir="runs/a", control="ipc", data="ipc"))
    hub.start(); hub.run(stop)        # stop: a threading.Event

Loop (zguide): poll both sockets -> decode -> one handler per message kind -> housekeeping
(expire leases, bury silent agents, send heartbeats, hand queued tasks to agents with free credit).

Who may do what, on both sockets alike:
- over tcp the sender *is* its CURVE key: the name in its routing id must be the key's name, and its
  role is the key's role, whatever READY claims; a role may send only some kinds and lease only its
  own queues (agents/admission.py); a second connection with a live agent's name is refused (in_use);
- a result, renewal or failure counts only from the agent holding that lease, and a result only if it
  is of the task's kind and its samples or verdicts are the task's own (agents/ledger.py);
- a policy version is written once, in the layout of the versions before it (agents/adapter_store.py).
Malformed input is answered with an Error and counted; so is any message whose handler fails (a bug,
a full disk): no message, however well-formed, stops the loop.

The loop's own work does not grow with a payload's size: a message body over OFFLOAD_BYTES (a large
result) is decoded and packed for the ledger on a worker thread (agents/offload.py), and so are replies
whose results add up to more; the loop then commits or sends. Messages that arrive from the same sender
meanwhile wait behind it, so each sender's messages are still handled in the order they were sent. A turn
stops draining the sockets after TURN_BUDGET_S, so heartbeats and leases never wait behind a burst.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog
import zmq
from pydantic import Field, field_validator

from agents.adapter_store import AdapterStore
from agents.admission import ready_refusal, sender_refusal
from agents.database import is_postgres
from agents.ledger import InvalidResult, PackedResult, StoredResult, open_run_ledger, stored_result
from agents.offload import Offload
from agents.retention import Retention
from agents.waiters import Waiter, Waiters
from protocol import keys
from protocol.codec import Envelope, ProtocolError, decode, encode
from protocol.constants import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS
from protocol.messages import (
    Ack,
    AgentInfo,
    Assign,
    Error,
    Heartbeat,
    PolicyAnnounce,
    StatusReply,
    TaskInfo,
    TaskReport,
    Welcome,
)
from protocol.settings import Strict
from protocol.transport import hub_socket, ipc_endpoint, limits_for, peer_user_id, routing_name

log = structlog.get_logger("agents.hub")
_OPEN = ("queued", "leased")  # task states a held query still waits on
_REPORT_BYTES = 8 << 20  # results (as stored) in one TaskReport: half a control message's limit
OFFLOAD_BYTES = 256 << 10  # a message body, or a reply's results, larger than this is (de)coded off the loop
TURN_BUDGET_S = 0.05  # a loop turn stops draining its sockets after this, for housekeeping (heartbeats, leases)
SWEEP_S = 0.05  # expired leases, silent agents and due queries are looked for at most this often
RESULT_BODY = b"\x81\xa6result"  # a Result's body as every encoder writes it: {"result": ...}, the result's bytes next


class HubSettings(Strict):
    """The hub's settings; a topology's [hub] section is these (plus where remote agents dial it)."""

    control: str = Field("ipc", description="Control endpoint: 'ipc' (RUN_DIR/sock) or tcp://HOST:PORT.")
    data: str = Field("ipc", description="Data endpoint (adapter tensors): 'ipc' or tcp://HOST:PORT.")
    keys_dir: str | None = Field(None, description="CURVE keys (selfplay keys init); required for tcp. On the hub's "
                                                   "machine the whole directory; on an agents' machine what `selfplay "
                                                   "keys export` gives it: hub.key and agents/NAME.key_secret.")
    lease_s: float = Field(60.0, gt=0, description="Lease length; agents renew before it runs out.")
    max_attempts: int = Field(3, ge=1, description="Leases a task gets before it is declared DEAD.")
    heartbeat_interval_s: float = Field(HEARTBEAT_INTERVAL_S, gt=0, description="Heartbeat period, both ways.")
    liveness: int = Field(HEARTBEAT_LIVENESS, ge=1, description="Silent intervals before an agent is dead.")
    max_staleness: int = Field(0, ge=0, description="Policy versions a sample may lag behind and still count.")
    keep_adapters: int = Field(5, ge=1, description="Newest published adapters kept on disk.")
    keep_every: int = Field(10, ge=1, description="Also keep every M-th version (for later evaluation).")
    ledger: str | None = Field(None, description="Where the ledger lives: unset, RUN/ledger.sqlite; or a PostgreSQL "
                                                 "database, postgresql://USER@HOST/DB (psycopg 3: the postgres extra), "
                                                 "one database per run (docs/ledger.md).")
    retention: bool = Field(True, description="Move finished tasks, and training prompts no task uses, out of the "
                                              "ledger into RUN/archive/ (gzip JSONL shards, readable with `datasets`) "
                                              "once they are old: docs/ledger.md.")
    archive_after_s: float = Field(21600.0, gt=0, description="Finished tasks are archived this long after they "
                                                             "finished, prompts this long after they were last "
                                                             "submitted (with retention on).")
    ledger_max_mb: float | None = Field(None, gt=0, description="While the ledger (file, WAL and blobs) is larger, "
                                                               "finished tasks are archived once archive_min_age_s old.")
    archive_min_age_s: float = Field(600.0, ge=0, description="Finished tasks younger than this stay in the ledger "
                                                              "whatever its size (a restarted creator asks for them); "
                                                              "set it above a round's length, or the pool's prompts "
                                                              "are archived and recorded again each round.")
    retention_every_s: float = Field(30.0, gt=0, description="How often a retention pass may start.")
    @field_validator("ledger")
    @classmethod
    def _a_server_url(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres(value):
            raise ValueError("a postgresql://USER@HOST/DB URL (leave it unset for RUN/ledger.sqlite)")
        return value

    check_ledger: bool = Field(True, description="Run SQLite's quick_check on the ledger at start (reads it once; "
                                                 "a damaged ledger stops the hub with one line instead of serving).")


class HubConfig(HubSettings):
    run_dir: str = Field(description="Run directory: ledger, adapters, sockets.")


@dataclass
class AgentState:
    name: str
    role: str
    identity: bytes
    capacity: int
    task_kinds: list[str]
    last_seen: float
    policy_version: int | None = None
    in_flight: set[tuple[str, int]] = field(default_factory=set)  # (task_id, attempt)
    overdue: set[tuple[str, int]] = field(default_factory=set)  # of in_flight, leases that expired on it
    bound: str | None = None  # "name:role" of its CURVE key (None over ipc)


@dataclass
class Incoming:
    """One decoded message and where it came from, as every handler receives it."""

    sock: zmq.Socket
    identity: bytes
    env: Envelope
    agent: AgentState | None
    now: float
    bound: str | None  # ZAP User-Id "name:role" of the sender's key (None over ipc)
    packed: PackedResult | None = None  # a large result, already packed for the ledger off the loop

    def reply(self, hub: Hub, message, tensors=None) -> None:
        hub._send(self.sock, self.identity, message, reply_to=self.env.header.msg_id, tensors=tensors)


class Hub:
    def __init__(self, config: HubConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.ctx = context or zmq.Context.instance()
        self.hub_id = os.urandom(6).hex()
        self.agents: dict[bytes, AgentState] = {}  # by control-socket routing id
        self.rejected: Counter[str] = Counter()  # refusals by error code, shown by status
        self.done: Counter[str] = Counter()  # accepted results by task kind
        self.ignored: Counter[str] = Counter()  # results not taken, by outcome (duplicate, stale)
        self.send_failed = 0  # messages a peer could not take (gone, or its queue full)
        self.errors = 0  # housekeeping turns that failed (a full disk, ...), shown by status
        self.received = 0  # messages handled, refused ones included
        self._last_send_error: int | None = None  # errno of the last failed send
        self._allowed: set[str] | None = None  # "name:role" of the allow-listed keys, re-read in housekeeping
        self._last_allow_check = 0.0
        self.started = time.time()
        self._last_heartbeat = self._last_sweep = 0.0
        self.waiters = Waiters()  # task queries held until their tasks finish (TaskQuery.wait_s)
        self.followers: set[bytes] = set()  # data-socket identities pushed every new policy (PolicyFetch.follow)
        self._held: dict[bytes, list] = {}  # a sender with a message off the loop -> its later messages, in order
        self._results: list[Incoming] = []  # results of this turn, recorded together by _commit_results
        # task kind -> agents (by identity, in the order they became so) that dispatch may give work: idle ones,
        # ones with credit left, and every one serving the kind that is not overdue (see _index)
        self._idle: dict[str, dict[bytes, None]] = {}
        self._spare: dict[str, dict[bytes, None]] = {}
        self._serving: dict[str, dict[bytes, None]] = {}

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = open_run_ledger(self.run_dir, max_attempts=self.config.max_attempts, url=self.config.ledger,
                                      check=self.config.check_ledger)  # LedgerError: refuse to start, one line
        self.adapters = AdapterStore(self.run_dir / "adapters", self.config.keep_adapters, self.config.keep_every)
        requeued = self.ledger.recover(time.time())
        curve, self.auth = None, None
        if self.config.keys_dir:
            self.auth = keys.Authenticator(self.ctx, keys.AllowList(self.config.keys_dir))
            self.auth.start()
            curve = keys.hub_keypair(self.config.keys_dir)
        self.control = hub_socket(self.ctx, self._endpoint(self.config.control, "control"), "control", curve=curve)
        self.data = hub_socket(self.ctx, self._endpoint(self.config.data, "data"), "data", curve=curve)
        self.endpoints = {"control": self.control.last_endpoint.decode(), "data": self.data.last_endpoint.decode()}
        self.offload = Offload(self.ctx)
        swept = self.ledger.blobs.sweep(self.ledger.names_blob, older_than_s=0.0)  # results never committed (a crash
        if swept:  # between a blob and its row): their agents send them again
            log.info("orphan blobs removed", count=swept)
        c = self.config
        self.retention = Retention(self.ledger, self.run_dir, self.offload,
                                   archive_after_s=c.archive_after_s if c.retention else None,
                                   ledger_max_mb=c.ledger_max_mb if c.retention else None,
                                   archive_min_age_s=c.archive_min_age_s, every_s=c.retention_every_s)
        self.policy_version = self.ledger.policy_version()
        log.info("hub started", hub_id=self.hub_id, requeued=requeued, policy_version=self.policy_version,
                 **self.endpoints, config=self.config.model_dump())

    def _endpoint(self, spec: str, channel: str) -> str:
        return ipc_endpoint(self.run_dir, f"hub-{channel}") if spec == "ipc" else spec

    def close(self) -> None:
        """Close sockets, authenticator and ledger. Safe to call twice."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for sock in (self.control, self.data):
            sock.close(linger=0)
        self.offload.close()
        if self.auth is not None:
            self.auth.stop()
        self.ledger.close()

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.offload.wake, zmq.POLLIN)
        timeout_ms = int(self.config.heartbeat_interval_s * 1000 / 4)
        while not stop.is_set():
            events = dict(poller.poll(timeout_ms))
            if events.get(self.offload.wake):
                self.offload.finish()
                self._commit_results()
            for sock in (self.control, self.data):
                if events.get(sock):
                    started = time.monotonic()  # each socket its own budget: control traffic never starves data
                    while time.monotonic() - started < TURN_BUDGET_S:  # drain a burst without starving housekeeping
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._receive(sock, frames)
            self._commit_results()  # the turn's results in one transaction, then their acks
            try:
                self.housekeeping(time.time())
            except Exception:  # a full disk, say: the next turn tries again; the hub stays up and answers
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:
                    log.exception("housekeeping failed", errors=self.errors)

    def handle(self, sock: zmq.Socket, frames: list) -> None:
        """Handle one message to the end (its result committed and acknowledged)."""
        self._receive(sock, frames)
        self._commit_results()

    def _receive(self, sock: zmq.Socket, frames: list) -> None:
        self.received += 1
        identity = frames[0].bytes
        if sock is self.control and identity in self._held:  # an earlier message of its sender is off the loop
            self._held[identity].append(frames)
            if (agent := self.agents.get(identity)) is not None:
                agent.last_seen = time.time()  # it is alive, whatever its message is
            return
        self._handle(sock, identity, frames[1:])

    def _handle(self, sock: zmq.Socket, identity: bytes, body: list) -> None:
        channel = "control" if sock is self.control else "data"
        if channel == "control" and len(body) > 2 and len(body[2]) > OFFLOAD_BYTES:
            self._held[identity] = []
            self.offload.submit(partial(self._decode_large, body), partial(self._decoded, sock, identity, body))
            return
        try:
            env = decode(body, limits_for(channel))
        except ProtocolError as e:
            return self._protocol_error(sock, identity, e)
        self._routed(sock, identity, channel, env, body)

    def _decode_large(self, body: list) -> tuple[Envelope, PackedResult | None]:
        """On the offload thread: decode, and pack a result for the ledger (a large one written as a blob)."""
        env = decode(body, limits_for("control"))
        if env.message.kind != "result":
            return env, None
        raw = body[2].bytes if hasattr(body[2], "bytes") else bytes(body[2])
        if raw.startswith(RESULT_BODY):  # the result's msgpack as received, just validated: stored without a repack
            return env, self.ledger.pack(env.message.result, packed=memoryview(raw)[len(RESULT_BODY):])
        return env, self.ledger.pack(env.message.result)

    def _decoded(self, sock: zmq.Socket, identity: bytes, body: list, outcome, error: BaseException | None) -> None:
        """Back on the loop: handle the decoded message, then the sender's messages that waited behind it."""
        try:
            if isinstance(error, ProtocolError):
                self._protocol_error(sock, identity, error)
            elif error is not None:
                self._failed(sock, identity, "result", None, error)
            else:
                self._routed(sock, identity, "control", outcome[0], body, outcome[1])
        finally:
            self._release(sock, identity)

    def _release(self, sock: zmq.Socket, identity: bytes) -> None:
        """The sender's messages that waited behind its message off the loop, in order."""
        held = self._held.pop(identity, [])
        for i, frames in enumerate(held):
            self._handle(sock, identity, frames[1:])
            if identity in self._held:  # off the loop again: the rest wait behind that one
                self._held[identity].extend(held[i + 1:])
                break

    def _protocol_error(self, sock: zmq.Socket, identity: bytes, e: ProtocolError) -> None:
        self.rejected[e.code] += 1
        log.warning("message refused", code=e.code, detail=e.detail, peer=identity[:64])
        self._send(sock, identity, e.to_message(), reply_to=e.msg_id)

    def _routed(self, sock: zmq.Socket, identity: bytes, channel: str, env: Envelope, body: list,
                packed: PackedResult | None = None) -> None:
        try:
            self._route(sock, identity, channel, env, peer_user_id(body[0]), packed)
        except Exception as e:  # a bug, a full disk: this message fails with an Error, the hub goes on
            self._failed(sock, identity, env.message.kind, env.header.msg_id, e)
        finally:
            if packed is not None and not any(waiting.packed is packed for waiting in self._results):
                self.ledger.settle(packed, recorded=False)  # refused before it was queued: its blob goes

    def _failed(self, sock: zmq.Socket, identity: bytes, kind: str, msg_id: str | None, e: BaseException) -> None:
        self.rejected["internal"] += 1
        log.error("message failed", kind=kind, peer=identity[:64], exc_info=e)
        self._send(sock, identity, Error(code="internal", detail=f"{type(e).__name__}: {e}"[:4096]), reply_to=msg_id)

    def _route(self, sock: zmq.Socket, identity: bytes, channel: str, env: Envelope, bound: str | None,
               packed: PackedResult | None = None) -> None:
        """Who sent it (its key over tcp), whether it may (agents/admission.py), then its handler."""
        kind, name = env.message.kind, routing_name(identity)
        agent = self.agents.get(identity) if channel == "control" else self._agent_named(name)
        refused = sender_refusal(kind, channel, name=name, bound=bound, allowed=self._allowed,
                                 role_of_agent=agent.role if agent else None,
                                 claimed_role=env.message.role if kind == "ready" else None)
        if refused is not None:
            return self._refuse(sock, identity, *refused, env.header.msg_id)
        now = time.time()
        if agent is not None:
            agent.last_seen = now
        if kind not in ("result", "heartbeat"):
            self._commit_results()  # what a sender sent before this is settled before it: its order holds
        handler = getattr(self, f"on_{kind}", None)
        if handler is None:
            return self._refuse(sock, identity, "invalid_message", f"the hub does not take {kind}", env.header.msg_id)
        handler(Incoming(sock, identity, env, agent, now, bound, packed))

    def _reachable(self, identity: bytes) -> bool:
        """Whether the control socket still has a connection with this routing id: a process that died (killed and
        restarted) closed its socket, and libzmq dropped the connection at once (ROUTER_MANDATORY says so)."""
        try:
            self.control.send_multipart([identity, *encode(Heartbeat(), sender="hub")], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            return e.errno != zmq.EHOSTUNREACH  # EAGAIN: there, with a full queue

    def _agent_named(self, name: str) -> AgentState | None:
        return next((a for a in self.agents.values() if a.name == name), None)

    def _refuse(self, sock: zmq.Socket, identity: bytes, code: str, detail: str, reply_to: str | None) -> None:
        self.rejected[code] += 1
        log.warning("message refused", code=code, detail=detail, peer=identity[:64])
        self._send(sock, identity, Error(code=code, detail=detail), reply_to=reply_to)

    def _send(self, sock: zmq.Socket, identity: bytes, message, reply_to: str | None = None, tensors=None) -> bool:
        """Never blocks: a peer that is gone or whose queue is full (a slow consumer) makes the send fail,
        counted in status as send_failed; an Assign that fails goes back to the queue (see dispatch)."""
        frames = encode(message, sender="hub", reply_to=reply_to, tensors=tensors)
        return self._send_frames(sock, identity, frames, message.kind, copy=tensors is None)

    def _send_frames(self, sock: zmq.Socket, identity: bytes, frames: list, kind: str, copy: bool = True) -> bool:
        """`_send` of frames encoded already (a reply encoded off the loop)."""
        try:
            sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=copy)
            return True
        except zmq.ZMQError as e:  # ROUTER_MANDATORY: EHOSTUNREACH (gone) or EAGAIN (its queue is full)
            self.send_failed += 1
            self._last_send_error = e.errno
            if self.send_failed <= 10 or self.send_failed % 1000 == 0:  # a flood must not flood the log
                log.warning("send failed", peer=identity[:64], error=str(e), kind=kind, failures=self.send_failed)
            return False

    # ------------------------------------------------------------------ handlers
    def on_ready(self, msg: Incoming) -> None:
        m, now, msg_id = msg.env.message, msg.now, msg.env.header.msg_id
        refused = ready_refusal(m, name=routing_name(msg.identity), bound=msg.bound)
        if refused is not None:
            return self._refuse(msg.sock, msg.identity, *refused, msg_id)
        previous = msg.agent or self._agent_named(m.name)
        window = self.config.heartbeat_interval_s * self.config.liveness
        if (previous is not None and previous.identity != msg.identity and now - previous.last_seen < window
                and self._reachable(previous.identity)):
            # Its connection still lives: a second process with this name (or a half-open connection of a restart).
            # Taking over would release the first one's leases, then the first the second's, and so on.
            return self._refuse(msg.sock, msg.identity, "in_use", f"{m.name} is connected and was heard "
                                f"{now - previous.last_seen:.1f} s ago; a restarted agent is let in once its old "
                                f"connection has been silent {window:g} s (two processes with one name?)", msg_id)
        if previous is not None:  # restarted or reconnected (a new connection): its old leases go back to the queue
            self.agents.pop(previous.identity, None)
            self._index(previous, present=False)
            self.waiters.drop(previous.identity)
            self.ledger.release_agent(previous.name, now)
        state = AgentState(m.name, m.role, msg.identity, m.capacity, list(m.task_kinds), now, m.policy_version,
                           bound=msg.bound)
        for ref in m.holding:  # results waiting in its outbox: give those leases back before any dispatch
            if self.ledger.reclaim(ref.task_id, ref.attempt, m.name, self.config.lease_s, now):
                state.in_flight.add((ref.task_id, ref.attempt))
        self.agents[msg.identity] = state
        self._index(state)
        log.info("agent ready", name=m.name, role=m.role, capacity=m.capacity, kinds=m.task_kinds)
        msg.reply(self, Welcome(hub_id=self.hub_id, heartbeat_interval_s=self.config.heartbeat_interval_s,
                                policy_version=self.policy_version))

    def on_heartbeat(self, msg: Incoming) -> None:
        pass  # last_seen is updated for every message

    def on_disconnect(self, msg: Incoming) -> None:
        self._bury(msg.identity, msg.now, "disconnected")

    def on_renew(self, msg: Incoming) -> None:
        m = msg.env.message
        deadline = self.ledger.renew(m.task_id, m.attempt, msg.agent.name, self.config.lease_s, msg.now)
        status = "renewed" if deadline is not None else "stale"
        msg.reply(self, Ack(task_id=m.task_id, attempt=m.attempt, status=status, deadline_unix_s=deadline))

    def on_result(self, msg: Incoming) -> None:
        m, now, name = msg.env.message, msg.now, msg.agent.name
        versions = [s.policy_version for s in getattr(m.result, "samples", [])]
        if versions and max(versions) > self.policy_version:
            return self._refuse(msg.sock, msg.identity, "invalid_message", f"samples claim policy v{max(versions)}; "
                                f"the newest is v{self.policy_version}", msg.env.header.msg_id)
        if versions and min(versions) < self.policy_version - self.config.max_staleness:
            self._commit_results()  # this sender's earlier results are answered before this one
            failed = self.ledger.fail(m.task_id, m.attempt, f"samples from policy {min(versions)}, hub at "
                                      f"{self.policy_version}", retryable=True, now=now, agent=name)
            outcome = "forbidden" if failed == "forbidden" else "stale"
        else:
            self._results.append(msg)  # committed with the turn's other results (a group commit), then acknowledged
            return
        self._after_result(msg, outcome)

    def _commit_results(self) -> None:
        """Record the results waiting since the turn began in one transaction, then answer each (after the commit:
        an acknowledged result is on disk)."""
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            outcomes = self.ledger.complete_many([(msg.env.message.task_id, msg.env.message.attempt,
                                                   msg.packed or msg.env.message.result, msg.agent.name)
                                                  for msg in batch], time.time())
        except Exception as e:  # a full disk, say: nothing was recorded; each sender gets an Error and keeps its result
            for msg in batch:
                self._failed(msg.sock, msg.identity, "result", msg.env.header.msg_id, e)
                if msg.packed is not None:
                    self.ledger.settle(msg.packed, recorded=False)
            return
        for msg, outcome in zip(batch, outcomes, strict=True):
            try:
                self._after_result(msg, outcome)
            except Exception as e:  # a bug: this result's sender gets an Error, the others their answers
                self._failed(msg.sock, msg.identity, "result", msg.env.header.msg_id, e)
            finally:
                if msg.packed is not None:
                    self.ledger.settle(msg.packed, recorded=outcome == "accepted")

    def _after_result(self, msg: Incoming, outcome) -> None:
        m, name = msg.env.message, msg.agent.name
        if isinstance(outcome, InvalidResult):
            return self._refuse(msg.sock, msg.identity, "invalid_message", f"task {m.task_id}: {outcome}",
                                msg.env.header.msg_id)
        if isinstance(outcome, Exception):  # this result alone failed to be recorded (a bug): the sender retries
            return self._failed(msg.sock, msg.identity, "result", msg.env.header.msg_id, outcome)
        if outcome == "forbidden":
            return self._refuse(msg.sock, msg.identity, "forbidden", f"task {m.task_id} attempt {m.attempt} is not "
                                f"leased to {name}", msg.env.header.msg_id)
        self._settled(msg.agent, m.task_id, m.attempt)
        if outcome == "accepted":
            self.done[m.result.kind] += 1
        else:  # a repeat, or an attempt the hub took back: acknowledged so the sender drops it, never recorded
            self.ignored[outcome] += 1
            log.info("result not taken", task_id=m.task_id, attempt=m.attempt, outcome=outcome, agent=msg.agent.name)
        msg.reply(self, Ack(task_id=m.task_id, attempt=m.attempt, status="stale" if outcome == "unknown" else outcome))
        if outcome == "accepted":
            self._answer_waiters([m.task_id])

    def on_task_failed(self, msg: Incoming) -> None:
        m = msg.env.message
        if self.ledger.fail(m.task_id, m.attempt, m.reason, m.retryable, msg.now, agent=msg.agent.name) == "forbidden":
            return self._refuse(msg.sock, msg.identity, "forbidden", f"task {m.task_id} attempt {m.attempt} is not "
                                f"leased to {msg.agent.name}", msg.env.header.msg_id)
        self._settled(msg.agent, m.task_id, m.attempt)
        msg.reply(self, Ack(task_id=m.task_id, attempt=m.attempt, status="accepted"))
        self._answer_waiters([m.task_id])  # dead if that was its last attempt

    def _settled(self, agent: AgentState, task_id: str, attempt: int) -> None:
        agent.in_flight.discard((task_id, attempt))
        agent.overdue.discard((task_id, attempt))
        if self.agents.get(agent.identity) is agent:
            self._index(agent)

    def _index(self, agent: AgentState, present: bool = True) -> None:
        """File the agent under its task kinds by what it can take now: idle (nothing in flight), spare (credit
        left) or neither, and whether it counts as serving the kind (not overdue). Called at every change of an
        agent's work, so dispatch reads these instead of walking every agent."""
        for kind in agent.task_kinds:
            for index in (self._idle, self._spare, self._serving):
                index.setdefault(kind, {}).pop(agent.identity, None)
            if present and not agent.overdue:
                self._serving[kind][agent.identity] = None
                if not agent.in_flight:
                    self._idle[kind][agent.identity] = None
                elif len(agent.in_flight) < agent.capacity:
                    self._spare[kind][agent.identity] = None

    def on_submit(self, msg: Incoming) -> None:
        m = msg.env.message
        try:
            ids = self.ledger.submit(m.tasks, key=m.key, now=msg.now)
        except ValueError as e:  # a key reused for a different submission
            return self._refuse(msg.sock, msg.identity, "invalid_message", str(e), msg.env.header.msg_id)
        msg.reply(self, Ack(status="queued", task_ids=ids))

    def on_policy_update(self, msg: Incoming) -> None:
        """A version is written once: the same adapter again (a trainer that restarted before it heard the ack) is
        a duplicate, anything else under a published version is refused, and a new version must be the next one,
        a LoRA adapter in the layout of the version before it (AdapterStore.check)."""
        m, now, msg_id = msg.env.message, msg.now, msg.env.header.msg_id
        if m.version <= self.policy_version:
            if m.version == self.policy_version and self.adapters.same(m, msg.env.tensors):
                return msg.reply(self, Ack(status="duplicate"))
            return self._refuse(msg.sock, msg.identity, "forbidden", f"policy v{m.version} is published already "
                                f"(newest v{self.policy_version}); a version is written once", msg_id)
        if (m.version, m.parent_version) != (self.policy_version + 1, self.policy_version):
            return self._refuse(msg.sock, msg.identity, "invalid_message", f"the next policy is v{self.policy_version + 1}"
                                f" from v{self.policy_version}, not v{m.version} from v{m.parent_version}", msg_id)
        try:
            self.adapters.check(m, msg.env.tensors, self.policy_version)
        except ValueError as e:
            return self._refuse(msg.sock, msg.identity, "invalid_message", f"policy v{m.version}: {e}", msg_id)
        path, num_bytes = self.adapters.save(m, msg.env.tensors)  # persisted before it is acknowledged or announced
        self.ledger.record_policy(m.version, m.parent_version, str(path), num_bytes, now)
        self.policy_version = max(self.policy_version, m.version)
        msg.reply(self, Ack(status="accepted"))
        for other in list(self.agents.values()):
            self._send(self.control, other.identity, PolicyAnnounce(version=m.version, num_bytes=num_bytes))
        newest = self.adapters.newest
        if newest is not None and newest[0].version == m.version:  # followers have it before a task asks for it
            for identity in list(self.followers):
                sent = self._send(self.data, identity, newest[0], tensors=newest[1])
                if not sent and self._last_send_error == zmq.EHOSTUNREACH:
                    self.followers.discard(identity)  # gone; a full queue keeps it (it fetches what it missed)
        log.info("policy published", version=m.version, bytes=num_bytes, pushed_to=len(self.followers))

    def on_policy_fetch(self, msg: Incoming) -> None:
        m = msg.env.message
        if m.follow and msg.agent is not None:
            self.followers.add(msg.identity)
        version = m.version or self.policy_version
        found = self.adapters.load(version)
        if found is None and m.follow and m.version == 0:  # nothing published yet: following is all it asked
            return msg.reply(self, Ack(status="accepted"))
        if found is None:
            return self._refuse(msg.sock, msg.identity, "unknown_task", f"no policy version {version}",
                                msg.env.header.msg_id)
        msg.reply(self, found[0], tensors=found[1])

    def on_task_query(self, msg: Incoming) -> None:
        m = msg.env.message
        if m.wait_s > 0:  # long polling: held until the tasks are finished or the wait is over
            states = self.ledger.states(m.task_ids)
            pending = {t for t in m.task_ids if states.get(t) in _OPEN}
            wait_any = m.wait_for == "any"
            hold = pending == set(m.task_ids) if wait_any else bool(pending)  # "any": one finished already answers
            if hold and self.waiters.add(Waiter(msg.sock, msg.identity, msg.env.header.msg_id, list(m.task_ids),
                                                msg.now + m.wait_s, pending, any=wait_any)):
                return
        self._reply_report(msg.sock, msg.identity, list(m.task_ids), msg.env.header.msg_id)

    def _reply_report(self, sock: zmq.Socket, identity: bytes, task_ids: list[str], reply_to: str | None) -> None:
        """A TaskReport on the tasks: their states, and their results while they fit one reply (a control message is
        at most 16 MiB; a result left out is asked for again). Results adding up to more than OFFLOAD_BYTES are
        loaded and encoded off the loop."""
        infos: list[tuple[dict, StoredResult | None]] = []
        room, size = _REPORT_BYTES, 0
        for task_id in task_ids:  # the first result always goes (it came in one message, it leaves in one)
            record = self.ledger.task(task_id, max_result_bytes=room if room < _REPORT_BYTES else None, decode=False)
            if record is None:
                infos.append(({"task_id": task_id, "state": "unknown"}, None))
                continue
            stored = record.pop("result")
            if stored is not None:
                room -= record["result_bytes"]
                size += record["result_bytes"]
            infos.append(({k: record[k] for k in ("task_id", "state", "attempt", "reason")}, stored))
        build = partial(_task_report, infos, self.ledger.blobs)
        if size <= OFFLOAD_BYTES:
            self._send(sock, identity, build(), reply_to=reply_to)
            return
        self.offload.submit(lambda: encode(build(), sender="hub", reply_to=reply_to),
                            partial(self._send_encoded, sock, identity, reply_to))

    def _send_encoded(self, sock: zmq.Socket, identity: bytes, reply_to: str | None, frames, error) -> None:
        if error is not None:  # a result's blob gone from disk, say
            self._failed(sock, identity, "task_report", reply_to, error)
            return
        self._send_frames(sock, identity, frames, "task_report")

    def _answer_waiters(self, task_ids) -> None:
        """Answer held queries that the tasks now finished (done or dead) complete."""
        task_ids = [t for t in task_ids if self.waiters.waits_on(t)]  # most finished tasks nobody waits on: no query
        if not task_ids:
            return
        for task_id, state in self.ledger.states(task_ids).items():
            if state not in _OPEN:
                for w in self.waiters.finished(task_id):
                    self._answer(w)

    def _answer(self, w: Waiter) -> None:
        self._reply_report(w.sock, w.identity, w.task_ids, w.msg_id)

    def on_status_query(self, msg: Incoming) -> None:
        msg.reply(self, self.status(msg.now))

    # ------------------------------------------------------------------ housekeeping
    def housekeeping(self, now: float) -> None:
        if self.auth is not None and now - self._last_allow_check >= self.config.heartbeat_interval_s:
            self._last_allow_check = now  # a revoked key loses its live connection too, not only new ones
            self._allowed = {k.user_id for k in self.auth.allow_list.agents()}
            for identity in [i for i, a in self.agents.items() if a.bound and a.bound not in self._allowed]:
                self._bury(identity, now, "key revoked")
        if now - self._last_sweep >= SWEEP_S:  # deadlines are seconds apart: not every turn of a busy loop
            self._last_sweep = now
            self._sweep(now)
        if now - self._last_heartbeat >= self.config.heartbeat_interval_s:
            self._last_heartbeat = now
            for a in list(self.agents.values()):
                self._send(self.control, a.identity, Heartbeat())
            if self.waiters:  # tasks that died another way (a lease expired on its last attempt, ...)
                self._answer_waiters(sorted(self.waiters.pending()))
        self.dispatch(now)
        self.retention.tick(now)

    def _sweep(self, now: float) -> None:
        """Leases past their deadline, agents silent too long, held queries whose wait is over."""
        expired = self.ledger.expire(now)
        for task_id, state in expired:
            log.warning("lease expired", task_id=task_id, now_state=state)
        if expired:
            # The holder keeps the credit: it is presumably still busy on the task (stuck, not dead), so it
            # gets no new work (not even its own task back) until it answers (acked stale) or is buried.
            ids = {task_id for task_id, _ in expired}
            for agent in self.agents.values():
                late = {key for key in agent.in_flight if key[0] in ids}
                if late:
                    agent.overdue |= late
                    self._index(agent)
        silent = now - self.config.heartbeat_interval_s * self.config.liveness
        for identity in [i for i, a in self.agents.items() if a.last_seen < silent]:
            self._bury(identity, now, "silent")
        for w in self.waiters.due(now):  # the wait is over: what there is
            self._answer(w)

    def _bury(self, identity: bytes, now: float, why: str) -> None:
        agent = self.agents.pop(identity, None)
        self.waiters.drop(identity)
        if agent is not None:
            self._index(agent, present=False)
            released = self.ledger.release_agent(agent.name, now)
            log.warning("agent gone", name=agent.name, why=why, requeued=len(released))

    def dispatch(self, now: float) -> None:
        """Credit-based: an agent never holds more tasks than its capacity. First every idle agent gets one
        task. Then a busy agent with credit left gets more (they wait at the agent, so its next task does
        not wait on a round trip to the hub) only while every other agent of the kind still has a task
        waiting in the queue: a task held by a busy agent never keeps another agent idle. An agent that let a
        lease expire gets nothing until it answers for it. The cost is one tally read per kind with agents to
        feed, plus the leases made: it does not grow with the number of agents."""
        for kind, idle in self._idle.items():
            spare = self._spare[kind]
            if not idle and not spare:
                continue  # every agent of the kind is full (or there are none): nothing to ask the ledger
            queued = self.ledger.queued(kind)
            for identity in list(idle) if queued else ():
                if self._lease(self.agents[identity], kind, 1, now):  # it leaves `idle`
                    queued -= 1
                elif not self.ledger.queued(kind):
                    queued = 0  # the queue ran dry (else this agent was gone or full: the next one may take it)
                if not queued:
                    break
            others = len(self._serving[kind]) - 1  # one left in the queue for each other agent first
            for identity in list(spare) if queued - others > 0 else ():
                if queued - others <= 0:
                    break
                agent = self.agents[identity]
                extra = min(agent.capacity - len(agent.in_flight), queued - others)
                if not self._lease(agent, kind, extra, now):
                    break
                queued -= extra

    def _lease(self, agent: AgentState, kind: str, limit: int, now: float) -> bool:
        """Lease up to `limit` tasks to the agent; False when none was sent (the queue empty, the agent gone)."""
        leases = self.ledger.lease(kind, agent.name, limit, self.config.lease_s, now)
        return bool(leases) and self._assign(agent, leases, now)

    def _assign(self, agent: AgentState, leases: list, now: float) -> bool:
        """Send the leases' assignments. At the first that cannot be sent, it and the rest go back to the queue
        without spending an attempt, and an agent that is gone is buried at once. False if any was not sent."""
        for i, lease in enumerate(leases):
            assign = Assign(task_id=lease.task_id, attempt=lease.attempt, lease_s=self.config.lease_s,
                            deadline_unix_s=lease.deadline, task=lease.task)
            if not self._send(self.control, agent.identity, assign):
                for unsent in leases[i:]:
                    self.ledger.unlease(unsent, now)
                if self._last_send_error == zmq.EHOSTUNREACH:
                    self._bury(agent.identity, now, "unreachable")
                return False
            agent.in_flight.add((lease.task_id, lease.attempt))
            self._index(agent)
        return True

    def status(self, now: float) -> StatusReply:
        agents = [AgentInfo(name=a.name, role=a.role, capacity=a.capacity, in_flight=len(a.in_flight),
                            last_seen_s=round(now - a.last_seen, 3), policy_version=a.policy_version)
                  for a in self.agents.values()]
        uptime = max(now - self.started, 1e-9)
        metrics = {f"rejected.{code}": float(n) for code, n in self.rejected.items()}
        metrics |= {f"done.{kind}": float(n) for kind, n in self.done.items()}
        metrics |= {f"ignored.{outcome}": float(n) for outcome, n in self.ignored.items()}
        metrics["results_per_s"] = sum(self.done.values()) / uptime
        metrics["send_failed"], metrics["received"] = float(self.send_failed), float(self.received)
        metrics["housekeeping_errors"] = float(self.errors)
        totals = self.ledger.totals()
        metrics["ledger_bytes"] = float(self.ledger.size_bytes())
        metrics["ledger_blob_bytes"] = float(totals.get("blob_bytes", 0))
        metrics["archived_tasks"] = float(totals.get("archived_tasks", 0))
        metrics["archived_prompts"] = float(totals.get("archived_prompts", 0))
        for version, (mean, count) in self.ledger.reward_by_version().items():
            metrics[f"reward_mean.v{version}"] = mean
            metrics[f"reward_count.v{version}"] = float(count)
        for prompts in ("eval", "validation"):
            for version, (mean, count) in self.ledger.reward_by_version(prompts).items():
                metrics[f"{prompts}_reward.v{version}"] = mean
                metrics[f"{prompts}_count.v{version}"] = float(count)
        metrics |= {f"restored.v{version}": float(source) for version, source in self.ledger.restores().items()}
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}  # a reply that always validates
        return StatusReply(hub_id=self.hub_id, policy_version=self.policy_version, agents=agents,
                           queues=self.ledger.queue_stats(), metrics=metrics)



def _task_report(infos: list[tuple[dict, StoredResult | None]], blobs) -> TaskReport:
    """The report's message, each stored result decoded (on the offload thread when they are large)."""
    return TaskReport(tasks=[TaskInfo(**fields, result=stored_result(*stored, blobs) if stored else None)
                             for fields, stored in infos])
