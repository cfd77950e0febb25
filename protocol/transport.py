"""Socket factories: the hub's ROUTERs and the agents' DEALERs, with every safety option set.

    hub:    ctx = zmq.Context(); auth = Authenticator(ctx, AllowList(keys_dir)); auth.start()
            control = hub_socket(ctx, "tcp://0.0.0.0:5555", "control", curve=hub_keypair(keys_dir))
    agent:  sock = agent_socket(ctx, "tcp://hub:5555", "control", name="solver-0",
                                curve=ClientCurve(agent_keypair(keys_dir, "solver-0"), hub_public(keys_dir)))

Rules enforced here rather than remembered by callers:
- a tcp bind needs CURVE (hub secret key) and enforces the ZAP domain: no authenticator, no connection;
  plain tcp exists only for loopback benchmarks and must be asked for with `insecure_loopback=True`;
- ipc endpoints live in a 0700 directory owned by us (`ipc_endpoint`);
- ROUTER_MANDATORY (unroutable sends raise instead of vanishing), bounded HWMs, MAXMSGSIZE, linger, ZMTP
  heartbeats;
- an agent's routing id is `NAME/CHANNEL/RANDOM`: new for every socket, so no connection can take over
  another's (ROUTER_HANDOVER stays off: a duplicate id is refused by libzmq, never handed the live
  connection). The hub finds a restarted agent by its name, and over tcp checks NAME against the name
  bound to the connection's CURVE key: the key, not the routing id, is the agent's identity.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq

from protocol.constants import (
    CONTROL_HWM,
    CONTROL_LIMITS,
    DATA_HWM,
    DEFAULT_LIMITS,
    LINGER_MS,
    ZAP_DOMAIN,
    ZMTP_HEARTBEAT_IVL_MS,
    ZMTP_HEARTBEAT_TIMEOUT_MS,
    Limits,
)
from protocol.keys import KeyPair

Channel = Literal["control", "data"]
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_MAX_IPC_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class TransportError(ValueError):
    """A socket cannot be set up as asked (insecure endpoint, unsafe directory)."""


@dataclass(frozen=True)
class ClientCurve:
    keypair: KeyPair  # the agent's own keys (secret required)
    server_public: bytes  # the hub's public key, z85


def limits_for(channel: Channel) -> Limits:
    return CONTROL_LIMITS if channel == "control" else DEFAULT_LIMITS


def hub_socket(ctx: zmq.Context, endpoint: str, channel: Channel, *, curve: KeyPair | None = None,
               insecure_loopback: bool = False, limits: Limits | None = None) -> zmq.Socket:
    """Bind a ROUTER for `channel`. tcp requires `curve` (the hub's keypair) unless loopback+insecure."""
    _check_security(endpoint, curve is not None, insecure_loopback)
    sock = ctx.socket(zmq.ROUTER)
    _common_options(sock, channel, limits)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if curve is not None:
        if curve.secret is None:
            raise TransportError("hub CURVE keypair has no secret key")
        sock.curve_secretkey = curve.secret
        sock.curve_publickey = curve.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # fail closed when no ZAP handler answers
    sock.bind(endpoint)
    return sock


def agent_socket(ctx: zmq.Context, endpoint: str, channel: Channel, *, name: str,
                 curve: ClientCurve | None = None, insecure_loopback: bool = False,
                 limits: Limits | None = None) -> zmq.Socket:
    """Connect a DEALER named `name` to the hub's `channel` socket, as routing id `NAME/CHANNEL/RANDOM`."""
    _check_security(endpoint, curve is not None, insecure_loopback)
    sock = ctx.socket(zmq.DEALER)
    _common_options(sock, channel, limits)
    sock.setsockopt(zmq.ROUTING_ID, routing_id(name, channel))
    # libzmq backs off reconnects exponentially from 100 ms up to 5 s by itself.
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5_000)
    if curve is not None:
        if curve.keypair.secret is None:
            raise TransportError("agent CURVE keypair has no secret key")
        sock.curve_serverkey = curve.server_public
        sock.curve_publickey = curve.keypair.public
        sock.curve_secretkey = curve.keypair.secret
    sock.connect(endpoint)
    return sock


def routing_id(name: str, channel: Channel) -> bytes:
    """`NAME/CHANNEL/RANDOM`: the random part keeps every socket's id its own (see the module docstring)."""
    return f"{name}/{channel}/{os.urandom(6).hex()}".encode()


def routing_name(identity: bytes) -> str:
    """The NAME part of a routing id (what the agent calls itself; checked against its key over tcp)."""
    return identity.split(b"/", 1)[0].decode(errors="replace")


def peer_user_id(frame: Any) -> str | None:
    """The ZAP User-Id ("name:role") of the peer that sent `frame` (received with copy=False)."""
    try:
        return frame.get("User-Id") or None  # ipc has no ZAP: no (or an empty) User-Id
    except (zmq.ZMQError, AttributeError):
        return None


def ipc_endpoint(run_dir: str | os.PathLike, name: str) -> str:
    """`ipc://RUN_DIR/sock/NAME.ipc`, creating `RUN_DIR/sock` 0700 and refusing a directory others can enter."""
    sock_dir = Path(run_dir) / "sock"
    sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = sock_dir.stat()
    if info.st_uid != os.getuid():
        raise TransportError(f"{sock_dir} belongs to uid {info.st_uid}, not to us")
    if stat.S_IMODE(info.st_mode) != 0o700:
        sock_dir.chmod(0o700)
    path = sock_dir / f"{name}.ipc"
    if len(str(path)) > _MAX_IPC_PATH:
        raise TransportError(f"ipc path {path} is longer than {_MAX_IPC_PATH} characters; use a shorter run dir")
    return f"ipc://{path}"


def _check_security(endpoint: str, has_curve: bool, insecure_loopback: bool) -> None:
    transport, _, address = endpoint.partition("://")
    if transport != "tcp" or has_curve:
        return
    host = address.rpartition(":")[0]
    if insecure_loopback and host in _LOOPBACK_HOSTS:
        return
    raise TransportError(f"{endpoint}: tcp endpoints need CURVE keys (see `selfplay keys init`); "
                         "plain tcp is only allowed on loopback with insecure_loopback=True")


def _common_options(sock: zmq.Socket, channel: Channel, limits: Limits | None) -> None:
    limits = limits or limits_for(channel)
    hwm = CONTROL_HWM if channel == "control" else DATA_HWM
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame_bytes)  # per frame: a bigger one drops the peer
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_HEARTBEAT_TIMEOUT_MS)
