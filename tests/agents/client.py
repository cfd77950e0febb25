"""A bare test agent: a real DEALER socket speaking the protocol by hand, no agent machinery."""

import time

import torch

from protocol.codec import decode, encode
from protocol.messages import PolicyUpdate, Ready
from protocol.transport import agent_socket


def lora_tensors(seed=0, rank=4, dims=(8, 8), dtype=torch.float32):
    """A small, well-formed LoRA adapter in peft's state-dict keys: what the hub accepts as a policy."""
    g = torch.Generator().manual_seed(seed)
    return {"model.q_proj.lora_A.weight": torch.randn(rank, dims[1], generator=g).to(dtype),
            "model.q_proj.lora_B.weight": torch.randn(dims[0], rank, generator=g).to(dtype)}


def policy_update(version, base_model="tiny", rank=4):
    return PolicyUpdate(version=version, parent_version=version - 1, base_model=base_model, adapter_config={"r": rank})


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
