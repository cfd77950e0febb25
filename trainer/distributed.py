"""Training on several processes (ranks) at once: torchrun starts them, FSDP2 shards the model over them.

    selfplay train --nproc 2 ...          # = torchrun --standalone --nproc-per-node 2 -m launch.cli train ...

Each rank holds a shard of every weight (`fully_shard` on each transformer block, then on the whole
model: embeddings, final norm and head); a block's full weights exist only while it computes. The
global batch (`batch_size` examples per micro-batch) is cut into one contiguous share per rank, and
each rank's loss is weighted by its share of the batch's denominator (examples, or tokens for
token-mean losses), so the averaged gradient is the one-process gradient of the same global batch.

Checkpoints are gathered: rank 0 writes full tensors in the one-process format, so a run resumes on
any number of ranks. Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a
no-op and the recipe runs as one process.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

log = structlog.get_logger("trainer.distributed")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1


ONE = World()  # one process


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The rank layout torchrun set (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    env = os.environ if environ is None else environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_for(world: World, requested: str) -> torch.device:
    """`requested` ('auto', 'cpu', 'cuda', 'cuda:N'), with each rank on its own GPU (cuda:LOCAL_RANK)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and world.sharded:
        device = torch.device("cuda", world.local_rank)
    return device


def start(world: World, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group (gloo on CPUs, nccl on GPUs); nothing for one process."""
    if not world.sharded or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.sharded:
        dist.barrier()


class Leader:
    """Rank 0's view of a recipe whose ranks follow it (the live trainer: only rank 0 talks to the hub). A call
    of one of `COLLECTIVE` is sent to every follower first, which makes the same call (`follow`), so that the
    ranks run the same collectives in the same order; everything else is rank 0's own."""

    COLLECTIVE = frozenset({"train_round", "save_checkpoint", "restore", "adapter_tensors"})

    def __init__(self, recipe: Any) -> None:
        self._recipe = recipe

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._recipe, name)
        if name not in self.COLLECTIVE:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            broadcast_object((name, args, kwargs), self._recipe.world)
            return value(*args, **kwargs)
        return call

    def release(self) -> None:
        """Let the followers go (they return from `follow`)."""
        broadcast_object(("stop", (), {}), self._recipe.world)


def follow(recipe: Any) -> None:
    """A rank other than 0: make each call rank 0's Leader sends, until it releases the ranks. A ValueError (rows
    the method refuses, a checkpoint that does not fit) is raised on rank 0 too, before any collective, which fails
    the task there: the follower logs it and waits for the next call. Anything else ends the rank, and torchrun
    ends the others."""
    while True:
        name, args, kwargs = broadcast_object(None, recipe.world)
        if name == "stop":
            return
        try:
            getattr(recipe, name)(*args, **kwargs)
        except ValueError as e:
            log.warning("call failed on this rank as on rank 0", call=name, error=str(e), rank=recipe.world.rank)


def shard(model: nn.Module, *, bf16_compute: bool) -> None:
    """FSDP2 over `model` (a transformers causal LM, or a peft model around one): each decoder block is its own
    unit, the rest (embeddings, final norm, head, tied or not) the root unit. With `bf16_compute` the gathered
    weights are bf16 while gradients are reduced in fp32 (parameters keep their dtype). The root's
    `scored_logps` (trainer.logps, the path every loss takes) runs FSDP's forward hooks as `forward` does."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    from trainer.logps import scored_logps

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_compute \
        else MixedPrecisionPolicy()
    for block in decoder_blocks(base):
        fully_shard(block, mp_policy=policy)
    fully_shard(base, mp_policy=policy)
    base.scored_logps = types.MethodType(scored_logps, base)
    register_fsdp_forward_method(base, "scored_logps")


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a causal LM: the longest nn.ModuleList in it."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no list of transformer blocks to shard")
    return list(max(lists, key=len))


def share(positions: list[int], world: World) -> list[int]:
    """This rank's contiguous share of a global batch's positions (sizes differ by at most one; may be empty)."""
    base, extra = divmod(len(positions), world.size)
    start_at = world.rank * base + min(world.rank, extra)
    return positions[start_at:start_at + base + (world.rank < extra)]


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum over ranks."""
    if not world.sharded:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not world.sharded:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank."""
    if not world.sharded:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full(t: Any) -> Any:
    """The whole tensor of a shard (a collective: every rank calls it); anything else as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as `param` is: this rank's shard of it when `param` is sharded."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    return value


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with every shard gathered: the one-process format, whatever the rank count."""
    state = optimizer.state_dict()
    return {**state, "state": {k: {n: full(v).cpu() if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                               for k, s in state["state"].items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full_optimizer_state() into an optimizer whose parameters may be sharded."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for key, values in state["state"].items():
        param = params[int(key)]
        sharded[key] = {n: like(v, param) if isinstance(v, torch.Tensor) and v.shape == param.shape else v
                        for n, v in values.items()}
    optimizer.load_state_dict({**state, "state": sharded})
