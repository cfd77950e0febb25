"""Generation with vLLM (GPU only): the solver's fast backend, with the HFGenerator's interface.

    gen = VLLMGenerator("/models/policy", adapters_dir="runs/x/adapters/solver-0", max_staleness=1,
                        engine_args={"gpu_memory_utilization": 0.85})
    outputs = gen.generate([prompt], SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=512))
    gen.load_policy(version, adapter_config, tensors)    # a PolicyUpdate from the trainer

vLLM is the `gpu` extra (`pip install -e .[gpu]`) and is imported only when a VLLMGenerator is made,
so this module imports, and its adapter handling is tested, on a machine without it.

Hot-swapping a policy: vLLM caches a LoRA adapter by its integer id, so each published version is
written as a peft adapter directory and requested under a name and id never used before (reusing one
would serve the cached, stale weights). `max_loras >= max_staleness + 1` keeps every version a sample
may still be generated with resident; older directories are deleted (vLLM has already read them, and
no request names them again).

Log-probs: vLLM's `raw_logprobs` mode gives the policy's log-prob of each sampled token before
temperature and top-p, the same quantity the hf backend returns and the trainer recomputes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers import AutoTokenizer

from agents.backends import Generation
from agents.backends.hf import prompt_ids
from protocol.messages import Prompt, SamplingParams
from trainer.adapters import lora_config

log = structlog.get_logger("agents.backends.vllm")

_MODULE = re.compile(r"\.([^.]+)\.lora_[AB]\.weight$")  # "...self_attn.q_proj.lora_A.weight" -> q_proj


def save_adapter(directory: Path, base_model: str, adapter_config: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> Path:
    """Save published LoRA tensors as a peft adapter directory (what peft and vLLM load).

    The tensors are peft state-dict keys, as `get_peft_model_state_dict` gives and `save_pretrained`
    writes them. target_modules is taken from those keys, not from the trainer's setting: "all-linear"
    is a peft shorthand that other loaders do not expand.
    """
    from safetensors.torch import save_file

    modules = sorted({m.group(1) for key in tensors if (m := _MODULE.search(key))})
    if not modules:
        raise ValueError(f"no LoRA weights among the {len(tensors)} published tensors")
    config = lora_config(adapter_config, task_type="CAUSAL_LM", base_model_name_or_path=base_model,
                         target_modules=modules)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "adapter_model.safetensors"))
    return directory


@dataclass(frozen=True)
class Adapter:
    version: int
    name: str  # never reused: policy-v{version}-{lora_id}
    lora_id: int  # vLLM's cache key, >= 1 and never reused
    path: Path


class AdapterSlots:
    """Published versions on disk under names and ids that are never reused; the newest `keep` stay."""

    def __init__(self, directory: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory, self.keep = Path(directory), keep
        self.resident: deque[Adapter] = deque()
        self._next_id = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in self.directory.glob("policy-v*-*")),
                                default=0)  # a restarted solver continues past ids a previous one used

    def add(self, version: int, base_model: str, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor],
            accept: Callable[[Adapter], None] | None = None) -> Adapter:
        """Write a version; `accept` (the engine loading it) may refuse it by raising, and then it is deleted
        and the resident ones stay as they were."""
        lora_id, self._next_id = self._next_id, self._next_id + 1
        name = f"policy-v{version}-{lora_id}"
        path = self.directory / name
        try:
            adapter = Adapter(version, name, lora_id, save_adapter(path, base_model, adapter_config, tensors))
            if accept is not None:
                accept(adapter)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        self.resident.append(adapter)
        while len(self.resident) > self.keep:
            shutil.rmtree(self.resident.popleft().path, ignore_errors=True)
        return adapter


def to_generation(completion: Any, eos_token_id: int | None) -> Generation:
    """One vLLM CompletionOutput (token_ids, text, logprobs: one {token_id: Logprob} per position)."""
    ids = list(completion.token_ids)
    if completion.finish_reason not in ("stop", "length"):  # "abort", "error": no answer to train on
        raise RuntimeError(f"vLLM ended a generation with finish reason {completion.finish_reason!r}")
    if completion.logprobs is None or len(completion.logprobs) != len(ids):
        raise RuntimeError("vLLM returned no log-prob per sampled token; the solver asks for logprobs=0")
    logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids, strict=True)]
    finish = "stop" if completion.finish_reason == "stop" or (ids and ids[-1] == eos_token_id) else "length"
    return Generation(completion.text, ids, logprobs, finish)


def lora_request(adapter: Adapter) -> Any:
    """vLLM's request for an adapter: its name, its never-reused id (vLLM's cache key) and its directory."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))


def solver_gpus(device: str, index: int, per_solver: int, visible: list[str]) -> str:
    """The CUDA_VISIBLE_DEVICES of the `index`-th vLLM solver of a machine: `per_solver` GPUs (the engine's
    tensor x pipeline parallel size) of those `visible` there (an existing CUDA_VISIBLE_DEVICES, or all).

    device "auto" or "cuda": solver i takes visible GPUs i*per_solver onwards; "cuda:K": from K + i*per_solver
    (K is an index into the visible GPUs, as torch counts them). Too few GPUs is an error naming them.
    """
    first = int(device.split(":", 1)[1]) if ":" in device else 0
    first += index * per_solver
    if first + per_solver > len(visible):
        raise ValueError(f"solver {index} (device {device!r}) needs visible GPUs {first}..{first + per_solver - 1}, "
                         f"but {len(visible)} are visible ({', '.join(visible) or 'none'})")
    return ",".join(visible[first:first + per_solver])


def visible_gpus(environ: dict[str, str], device_count: int) -> list[str]:
    """The GPUs this process may use: an existing CUDA_VISIBLE_DEVICES (ids or UUIDs), else 0..device_count-1."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    return [str(i) for i in range(device_count)]


def sampling_args(sampling: SamplingParams) -> tuple[dict[str, Any], int]:
    """vllm.SamplingParams arguments, and how many times to repeat each output to make n.

    Greedy decoding (temperature 0) gives one answer however often it is asked, and vLLM refuses n > 1 with
    it: ask once and repeat the answer n times (what the hf backend returns for n greedy samples).
    """
    greedy = sampling.temperature == 0
    args = {"n": 1 if greedy else sampling.n, "temperature": sampling.temperature,
            "max_tokens": sampling.max_new_tokens, "seed": sampling.seed,
            "logprobs": 0}  # 0: the sampled token's log-prob only
    if not greedy:
        args["top_p"] = sampling.top_p
    return args, sampling.n if greedy else 1


class VLLMGenerator:
    def __init__(self, model_path: str, adapters_dir: str | Path, max_staleness: int = 0, max_lora_rank: int = 64,
                 engine_args: dict[str, Any] | None = None) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise RuntimeError("the vllm backend needs the gpu extra: pip install -e '.[gpu]' (and a GPU)") from err
        self.model_path, self.version = model_path, 0
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.slots = AdapterSlots(Path(adapters_dir), keep=max_staleness + 1)
        self.adapter: Adapter | None = None  # None: the base model, version 0
        args = {"enable_lora": True, "max_loras": max_staleness + 1, "max_lora_rank": max_lora_rank,
                "logprobs_mode": "raw_logprobs", **(engine_args or {})}
        if args["max_loras"] < max_staleness + 1:  # a sample of a version still in use must not evict it
            raise ValueError(f"max_loras = {args['max_loras']} is below max_staleness + 1 = {max_staleness + 1}")
        self.max_lora_rank = args["max_lora_rank"]
        log.info("starting vllm", model=model_path, **{k: v for k, v in args.items() if k != "enable_lora"})
        self.llm = LLM(model=model_path, **args)

    def generate(self, prompts: list[Prompt], sampling: SamplingParams) -> list[list[Generation]]:
        """n generations per prompt, in prompt order, with the current adapter."""
        from vllm import SamplingParams as VLLMSampling

        params, copies = sampling_args(sampling)
        lora = lora_request(self.adapter) if self.adapter is not None else None
        requests = [{"prompt_token_ids": prompt_ids(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(requests, VLLMSampling(**params), lora_request=lora, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        return [[to_generation(c, eos) for c in out.outputs] * copies for out in outputs]

    def _add_lora(self, adapter: Adapter) -> None:
        try:
            added = self.llm.llm_engine.add_lora(lora_request(adapter))
        except (ValueError, TypeError, KeyError) as e:  # the adapter fits no model here
            raise ValueError(f"vLLM refused policy v{adapter.version}: {e}") from e
        if added is False:
            raise ValueError(f"vLLM did not add policy v{adapter.version}")

    def load_policy(self, version: int, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Write the published adapter under a fresh name and load it into the engine; the next generate uses it.

        Loading it here, not on the first request that names it, brings a bad adapter's error back to the caller
        (a ValueError: the solver keeps its current policy) instead of failing inside the engine's step."""
        rank = int(adapter_config.get("r", 0))
        if rank > self.max_lora_rank:
            raise ValueError(f"policy v{version} has LoRA rank {rank}, above the engine's max_lora_rank "
                             f"{self.max_lora_rank}")
        self.adapter = self.slots.add(version, self.model_path, adapter_config, tensors, accept=self._add_lora)
        self.version = version
        log.info("adapter ready", version=version, name=self.adapter.name, path=str(self.adapter.path),
                 config=json.dumps(adapter_config, default=str))
