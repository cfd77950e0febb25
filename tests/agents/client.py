"""A bare test agent: a real DEALER socket speaking the protocol by hand, no agent machinery."""

import time

from protocol.codec import decode, encode
from protocol.messages import Ready
from protocol.transport import agent_socket


class Client:
    def __init__(self, ctx, endpoint, name, channel="control", curve=None):
        self.name = name
        self.sock = agent_socket(ctx, endpoint, channel, name=name, curve=curve)

    def send(self, message, tensors=None):
        self.sock.send_multipart(encode(message, sender=self.name, tensors=tensors), copy=tensors is None)

    def recv(self, timeout_ms=3000, skip=("heartbeat", "policy_announce")):
        """The next message whose kind is not in `skip` within `timeout_ms` in all, or None."""
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000) + 1):
            env = decode(self.sock.recv_multipart())
            if env.message.kind not in skip:
                return env
        return None

    def ready(self, role="solver", capacity=1, kinds=("generate",)):
        self.send(Ready(role=role, name=self.name, capacity=capacity, task_kinds=list(kinds)))
        env = self.recv()
        assert env is not None and env.message.kind == "welcome", env
        return env.message

    def close(self):
        self.sock.close(0)
