"""Hostile input at a live hub's sockets (real ZeroMQ sockets, real SQLite): every bad message is answered
with an error and counted, the hub keeps serving, and a slow consumer is bounded, not a leak."""

import os
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import encode
from protocol.constants import PROTOCOL_MAJOR, SIGNATURE
from protocol.messages import GenerateTask, PolicyUpdate, Ready, StatusQuery, Submit
from tests.agents.client import Client
from tests.agents.test_hub import Running
from tests.protocol.examples import EXAMPLES, PROMPT
from tests.reliability.run import hub_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    r = Running(tmp_path_factory.mktemp("hostile"), lease_s=30, heartbeat_interval_s=0.2, liveness=10_000)
    yield r
    r.close()


def _valid(index: int) -> list[bytes]:
    return [bytes(f) for f in encode(EXAMPLES[index], sender="x")]


def _with_header(frames: list[bytes], **changes) -> list[bytes]:
    header = msgpack.unpackb(frames[1])
    for position, value in changes.items():
        header[int(position[1:])] = value
    return [frames[0], msgpack.packb(header), *frames[2:]]


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


index = st.integers(0, len(EXAMPLES) - 1)
HOSTILE = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=6).map(lambda fs: ("random bytes", fs)),
    st.tuples(index, st.binary(min_size=1, max_size=8)).map(
        lambda t: ("wrong signature", [t[1] if t[1] != SIGNATURE else b"x", *_valid(t[0])[1:]])),
    st.tuples(index, st.sampled_from([1, 2]), st.floats(0, 0.99)).map(
        lambda t: ("truncated msgpack", [f[: int(len(f) * t[2])] if i == t[1] else f
                                         for i, f in enumerate(_valid(t[0]))])),
    st.tuples(index, st.integers(40, 200)).map(
        lambda t: ("deep nesting", [*_valid(t[0])[:2], msgpack.packb({"metrics": _nested(t[1])})])),
    st.tuples(index, st.text(min_size=1, max_size=20)).filter(lambda t: t[1] not in {m.kind for m in EXAMPLES}).map(
        lambda t: ("unknown kind", _with_header(_valid(t[0]), f0=t[1]))),
    st.tuples(index, st.integers(0, 255).filter(lambda v: v != PROTOCOL_MAJOR)).map(
        lambda t: ("wrong protocol version", [b"SPLAY" + bytes([t[1]]), *_valid(t[0])[1:]])),
    st.tuples(index, st.integers(9, 40)).map(lambda t: ("too many frames", _valid(t[0]) + [b""] * t[1])),
    st.tuples(index, st.integers(65, 300)).map(
        lambda t: ("oversized header", _with_header(_valid(t[0]), f2="s" * (t[1] * 1024)))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=HOSTILE)
def test_hostile_frames_are_answered_counted_and_survived(hub, case):
    what, frames = case
    attacker = hub.client(f"attacker-{os.urandom(3).hex()}")
    observer = hub.observer if hasattr(hub, "observer") else hub.client("observer")
    hub.observer = observer
    before = _rejected(observer)
    attacker.sock.send_multipart(frames)
    reply = attacker.recv(timeout_ms=5000)
    assert reply is not None and reply.message.kind == "error", (what, reply)
    after = _rejected(observer)
    assert sum(after.values()) == sum(before.values()) + 1, (what, before, after)  # counted, once
    assert after[reply.message.code] == before.get(reply.message.code, 0) + 1
    attacker.close()
    hub.clients.remove(attacker)


def _rejected(client) -> dict[str, float]:
    client.send(StatusQuery())
    status = client.recv(timeout_ms=5000)
    assert status is not None and status.message.kind == "status_reply"  # the hub is still serving
    return {k.removeprefix("rejected."): v for k, v in status.message.metrics.items() if k.startswith("rejected.")}


def test_a_role_sending_what_it_may_not_is_refused_and_counted(hub):
    solver = hub.client("solver-hostile")
    solver.ready("solver")
    observer = hub.client("observer-roles")
    before = _rejected(observer).get("forbidden", 0)
    for message in [Submit(tasks=[GenerateTask(prompts=[PROMPT])]),
                    PolicyUpdate(version=99, parent_version=98, base_model="x", adapter_config={})]:
        solver.send(message)
        reply = solver.recv()
        assert reply.message.kind == "error" and reply.message.code == "forbidden", message.kind
    assert _rejected(observer)["forbidden"] == before + 2
    assert hub.hub.policy_version == 0  # nothing it sent took effect


def test_a_slow_consumer_is_bounded_and_its_drops_are_counted(tmp_path):
    """Clients flood a hub process with requests and never read a reply: the hub's queue to each fills to
    its high-water mark, later replies fail visibly (counted in status; a send never blocks the hub), and
    the hub's memory stays bounded from one flood to the next."""
    with hub_process(tmp_path) as (hub, control):
        ctx = zmq.Context()
        observer = Client(ctx, control, "observer")

        def status() -> dict[str, float]:
            observer.send(StatusQuery())
            reply = observer.recv(timeout_ms=5000)
            assert reply is not None and hub.poll() is None, "the hub stopped answering others"
            return reply.message.metrics

        def flood(name: str, n: int) -> dict[str, float]:
            start = status()["received"]
            greedy = Client(ctx, control, name)
            greedy.send(Ready(role="solver", name=name, capacity=1, task_kinds=["generate"]))
            request = [bytes(f) for f in encode(StatusQuery(), sender=name)]
            sent, deadline = 0, time.monotonic() + 60
            while sent < n and time.monotonic() < deadline:  # a hub that stops reading must not hang the test
                try:
                    greedy.sock.send_multipart(request, zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    time.sleep(0.001)
            target = start + sent + 1
            deadline = time.monotonic() + 120
            while (metrics := status())["received"] < target:  # until the hub has worked through the flood
                assert time.monotonic() < deadline, "the flood was not worked through"
                time.sleep(0.2)
            greedy.close()
            return metrics

        try:
            first = flood("greedy-1", 40_000)
            assert first["send_failed"] >= 10_000  # its queue filled: the rest failed, and status says so
            rss = _rss_mib(hub.pid)
            second = flood("greedy-2", 40_000)
            assert second["send_failed"] >= first["send_failed"] + 10_000  # refused again, counted again
            assert _rss_mib(hub.pid) - rss < 64, (rss, _rss_mib(hub.pid))  # a second flood does not grow memory
            assert hub.poll() is None
        finally:
            observer.close()
            ctx.destroy(linger=0)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
