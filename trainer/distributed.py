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

import logging
import os
import sys
import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

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
EXIT_GROUP_ENDS = 70  # sysexits.h EX_SOFTWARE: a rank ended its group (the ranks may be out of step)


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The rank layout torchrun set (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    env = os.environ if environ is None else environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_for(world: World, requested: str) -> torch.device:
    """`requested` ('auto', 'cpu', 'cuda', 'cuda:K'), with each rank on its own GPU: K plus the rank's local index
    (so N ranks of a trainer beside solvers on one machine take GPUs K..K+N-1)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and world.sharded:  # 'cuda' -> cuda:LOCAL_RANK, 'cuda:K' -> cuda:K+LOCAL_RANK
        device = torch.device("cuda", (device.index or 0) + world.local_rank)
    return device


def start(world: World, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group (gloo on CPUs, nccl on GPUs); nothing for one process."""
    if not world.sharded or dist.is_initialized():
        return
    _die_with_launcher()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def _die_with_launcher() -> None:
    """Linux: this rank gets SIGKILL when the process that launched it dies (killed, say, by a supervisor that
    gave up waiting), instead of living on with nobody to end it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("could not tie this rank to its launcher's life")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.sharded:
        dist.barrier()


class Leader:
    """Rank 0's view of a recipe whose ranks follow it (the live trainer: only rank 0 talks to the hub). A call
    of one of `COLLECTIVE` is sent to every follower first, which makes the same call (`follow`), so that the
    ranks run the same collectives in the same order; everything else is rank 0's own. A collective call that
    fails on any rank ends that rank's process (here, and in `follow`): the ranks could be out of step, so the
    group ends (its launcher ends the others) and is started again, and the task it held is retried. Check what
    can be refused before the call (Recipe.check_round)."""

    COLLECTIVE = frozenset({"train_round", "save_checkpoint", "restore", "adapter_tensors"})

    def __init__(self, recipe: Any) -> None:
        self._recipe = recipe

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._recipe, name)
        if name not in self.COLLECTIVE:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            broadcast_object((name, args, kwargs), self._recipe.world)
            try:
                return value(*args, **kwargs)
            except Exception:
                _end_rank(name, self._recipe.world)
        return call

    def release(self) -> None:
        """Let the followers go (they return from `follow`)."""
        broadcast_object(("stop", (), {}), self._recipe.world)


def follow(recipe: Any) -> None:
    """A rank other than 0: make each call rank 0's Leader sends, until it releases the ranks (a failed call ends
    this rank, and so the group: see Leader)."""
    while True:
        name, args, kwargs = broadcast_object(None, recipe.world)
        if name == "stop":
            return
        try:
            getattr(recipe, name)(*args, **kwargs)
        except Exception:
            _end_rank(name, recipe.world)


def _end_rank(call: str, world: World) -> NoReturn:
    log.exception("a call every rank makes failed on this rank: the group ends, to be started again", call=call,
                  rank=world.rank)
    logging.shutdown()
    os._exit(EXIT_GROUP_ENDS)


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


def local_numel(tensors: Any) -> int:
    """How many elements of `tensors` this rank holds (its shards of sharded ones)."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def full(t: Any) -> Any:
    """The whole tensor of a shard (a collective: every rank calls it); anything else as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as `param` is: this rank's shard of it when `param` is sharded."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    return value


def full_optimizer_state(optimizer: torch.optim.Optimizer, world: World = ONE) -> dict[str, Any]:
    """optimizer.state_dict() with every shard gathered, on the CPU: the one-process format, whatever the rank count.
    Sharded, every rank calls it; tensors are gathered one at a time and kept by rank 0 (the others get none)."""
    state = optimizer.state_dict()
    gathered: dict[Any, dict[str, Any]] = {}
    for key, values in state["state"].items():
        entry = {}
        for name, value in values.items():
            value = full(value) if isinstance(value, torch.Tensor) else value
            entry[name] = value.cpu() if isinstance(value, torch.Tensor) and world.main else value
        if world.main:
            gathered[key] = entry
    return {**state, "state": gathered}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full_optimizer_state() into an optimizer whose parameters may be sharded."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for key, values in state["state"].items():
        param = params[int(key)]
        entry = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:  # a moment (Adam's step is a scalar)
                if value.shape != param.shape:
                    raise ValueError(f"optimizer state {name} of parameter {key}: shape {tuple(value.shape)}, "
                                     f"the parameter's {tuple(param.shape)}")
                value = like(value, param)
            entry[name] = value
        sharded[key] = entry
    optimizer.load_state_dict({**state, "state": sharded})
