"""Generation and scoring backends: `hf` (transformers, CPU or GPU) and `vllm` (GPU only, its own module).

A solver takes any `Generator`: HFGenerator (agents/backends/hf.py) or VLLMGenerator (agents/backends/vllm.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from agents.backends.hf import Generation
    from protocol.messages import Prompt, SamplingParams


class Generator(Protocol):
    version: int  # the policy version every sample it makes is tagged with

    def generate(self, prompts: list[Prompt], sampling: SamplingParams) -> list[list[Generation]]: ...

    def load_policy(self, version: int, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...
