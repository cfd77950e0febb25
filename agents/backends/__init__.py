"""Generation and scoring backends: `hf` (transformers, CPU or GPU) and `vllm` (GPU only, its own module).

A solver takes any `Generator`: HFGenerator (agents/backends/hf.py) or VLLMGenerator (agents/backends/vllm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from protocol.messages import Prompt, SamplingParams


@dataclass
class Generation:
    """One answer a backend made (here, without transformers: the openai backend and the hub's processes that
    read a topology need it, not a model)."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


class Generator(Protocol):
    version: int  # the policy version every sample it makes is tagged with

    def generate(self, prompts: list[Prompt], sampling: SamplingParams) -> list[list[Generation]]: ...

    def load_policy(self, version: int, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...
