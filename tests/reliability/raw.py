"""A hostile client: a raw pyzmq DEALER that writes every frame by hand with msgpack.

Not the project's link, codec or models: it sends what they would refuse to build (integers past 2**63,
NaN), chooses its own routing id (another agent's), and holds an allowed agent's CURVE key, as a user
with a stolen or misused key would. Replies are read with msgpack too.

    evil = Raw(ctx, control, b"solver-0/control", curve=keyed(key_dir, "observer-0"))
    msg_id = evil.send("ready", {"role": "observer", "name": "observer-0", "holding": [...]})
    kind, header, body = evil.recv()
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import msgpack
import zmq
import zmq.auth

from protocol.constants import SIGNATURE

SKIP = ("heartbeat", "policy_announce")


def send_unless_refused(sock: zmq.Socket, frames: list) -> None:
    """Send without blocking: once the hub drops a refused handshake, the socket may have no peer to queue for
    (a blocking send would then wait forever)."""
    with contextlib.suppress(zmq.Again):
        sock.send_multipart(frames, zmq.NOBLOCK)


def keyed(key_dir, name: str) -> tuple[bytes, bytes, bytes]:
    """(public, secret, hub public) for `name`'s key in `key_dir`, read with pyzmq's own certificate loader."""
    public, secret = zmq.auth.load_certificate(str(Path(key_dir) / "agents" / f"{name}.key_secret"))
    hub_public, _ = zmq.auth.load_certificate(str(Path(key_dir) / "hub.key"))
    return public, secret, hub_public


class Raw:
    def __init__(self, ctx: zmq.Context, endpoint: str, routing_id: bytes,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a send with no peer to queue for fails (zmq.Again), not hangs
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)

    def send(self, kind: str, body: dict | None = None, task_id: str | None = None, attempt: int | None = None,
             tensors: dict[str, tuple[str, list[int], bytes]] | None = None) -> str:
        """One message; `tensors`: name -> (dtype, shape, raw bytes). Returns its msg id."""
        msg_id = os.urandom(4).hex()
        metas = [{"name": n, "dtype": d, "shape": s} for n, (d, s, _) in (tensors or {}).items()]
        header = [kind, msg_id, "raw", task_id, attempt, None, metas]
        frames = [SIGNATURE, msgpack.packb(header), msgpack.packb(body or {})]
        self.sock.send_multipart(frames + [data for _, _, data in (tensors or {}).values()])
        return msg_id

    def recv(self, timeout_ms: int = 3000, skip=SKIP) -> tuple[str, list, dict] | None:
        """(kind, header, body) of the next message not in `skip`, or None within `timeout_ms`."""
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000) + 1):
            frames = self.frames = self.sock.recv_multipart()  # the last message's frames, tensors included
            header = msgpack.unpackb(frames[1])
            if header[0] not in skip:
                return header[0], header, msgpack.unpackb(frames[2])
        return None

    def reply_to(self, msg_id: str, timeout_ms: int = 3000) -> tuple[str, dict] | None:
        """(kind, body) of the answer to `msg_id`, skipping everything else (assignments included)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(int(left * 1000) + 1, skip=())
            if got is None:
                return None
            kind, header, body = got
            if header[5] == msg_id:
                return kind, body
        return None

    def heard(self, kind: str, within_ms: int) -> bool:
        """Whether a message of `kind` arrives within `within_ms`."""
        deadline = time.monotonic() + within_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(int(left * 1000) + 1, skip=())
            if got is None:
                return False
            if got[0] == kind:
                return True
        return False

    def close(self) -> None:
        self.sock.close(0)


def sample(sample_id: str, prompt_id: str, policy_version: int = 0) -> dict:
    return {"sample_id": sample_id, "prompt_id": prompt_id, "text": "4", "token_ids": [], "logprobs": [],
            "policy_version": policy_version, "finish_reason": "stop"}


def prompt(prompt_id: str = "p1", **fields) -> dict:
    return {"prompt_id": prompt_id, "text": "What is 2 + 2?", "messages": [], "demonstration": None, "answer": "4",
            "source": "seed", "parent_id": None, "mutation": None, "difficulty": None} | fields


def generate_task(*prompts: dict) -> dict:
    return {"kind": "generate_task", "prompts": list(prompts) or [prompt()],
            "sampling": {"n": 1, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 4, "seed": None},
            "purpose": "train", "min_policy_version": 0}
