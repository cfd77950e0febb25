"""Security over tcp loopback against a real hub process (CURVE, the ZAP allow-list): who gets in, who does
not, and what revocation and a stopped authenticator do."""

import time

import pytest
import zmq

from protocol import keys
from protocol.codec import encode
from protocol.messages import Ready, StatusQuery
from protocol.transport import ClientCurve
from tests.agents.client import Client
from tests.agents.test_hub import Running
from tests.reliability.raw import send_unless_refused
from tests.reliability.run import hub_process

pytestmark = pytest.mark.slow


@pytest.fixture
def secured(tmp_path):
    key_dir = tmp_path / "keys"
    keys.init_keys(key_dir, [("solver-0", "solver"), ("solver-1", "solver")])
    with hub_process(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(key_dir),
                     heartbeat_interval_s=0.2, liveness=1000) as (hub, control):
        ctx = zmq.Context()
        yield ctx, control, key_dir, hub
        ctx.destroy(linger=0)


def _curve(key_dir, name, server_public=None):
    return ClientCurve(keys.agent_keypair(key_dir, name), server_public or keys.hub_keypair(key_dir).public)


def _welcomed(ctx, control, name, curve, timeout_ms=3000):
    client = Client(ctx, control, name, curve=curve)
    client.send(Ready(role="solver", name=name, capacity=1, task_kinds=["generate"]))
    reply = client.recv(timeout_ms=timeout_ms)
    client.close()
    return reply is not None and reply.message.kind == "welcome"


def test_an_allowed_key_gets_in(secured):
    ctx, control, key_dir, _ = secured
    assert _welcomed(ctx, control, "solver-0", _curve(key_dir, "solver-0"))


def test_an_unknown_key_is_refused(secured):
    ctx, control, _, hub = secured
    stranger = ClientCurve(keys.KeyPair(*zmq.curve_keypair()), keys.hub_keypair(secured[2]).public)
    assert not _welcomed(ctx, control, "solver-0", stranger)
    assert hub.poll() is None


def test_a_client_without_curve_is_refused(secured):
    ctx, control, _, hub = secured
    plain = ctx.socket(zmq.DEALER)  # agent_socket would refuse to build this; a hostile client would not
    plain.connect(control)
    send_unless_refused(plain, encode(Ready(role="solver", name="plain"), sender="plain"))
    assert not plain.poll(2000)
    plain.close(0)
    assert hub.poll() is None


def test_the_wrong_server_key_is_refused(secured):
    ctx, control, key_dir, _ = secured
    assert not _welcomed(ctx, control, "solver-0", _curve(key_dir, "solver-0", zmq.curve_keypair()[0]))


def test_a_revoked_key_is_cut_off_and_refused_after_reload(secured):
    ctx, control, key_dir, _ = secured
    live = Client(ctx, control, "solver-1", curve=_curve(key_dir, "solver-1"))
    live.send(Ready(role="solver", name="solver-1", capacity=1, task_kinds=["generate"]))
    assert live.recv().message.kind == "welcome"
    assert keys.revoke(key_dir, "solver-1")
    time.sleep(1.0)  # the hub re-reads the allow-list every heartbeat interval (0.2 s)
    live.send(StatusQuery())  # the connection made before the revocation is refused from now on
    reply = live.recv()
    assert reply.message.kind == "error" and reply.message.code == "forbidden" and "revoked" in reply.message.detail
    live.close()
    assert not _welcomed(ctx, control, "solver-1", _curve(key_dir, "solver-1"))  # and a new one cannot start
    assert _welcomed(ctx, control, "solver-0", _curve(key_dir, "solver-0"))  # others are unaffected


def test_a_stopped_authenticator_makes_the_hub_refuse_not_accept(tmp_path):
    key_dir = tmp_path / "keys"
    keys.init_keys(key_dir, [("solver-0", "solver")])
    r = Running(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(key_dir))
    try:
        assert _welcomed(r.ctx, r.hub.endpoints["control"], "solver-0", _curve(key_dir, "solver-0"))
        r.hub.auth.stop()
        assert not _welcomed(r.ctx, r.hub.endpoints["control"], "solver-0", _curve(key_dir, "solver-0"))
    finally:
        r.close()
