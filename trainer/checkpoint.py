"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG and the data cursor.

    OUT/checkpoints/step-000040/
        trainable.safetensors   the parameters being trained (LoRA matrices, or every weight)
        trainer_state.pt        optimizer, scheduler, RNG states, cursor (step, epoch, batch)
        state.json              the cursor and config, for people, and the caller's `extra` (read_extra)
        adapter/ or model/      the same weights in the usual format (PeftModel.from_pretrained / Auto*)

A checkpoint is written to a temporary directory and renamed into place, so a crash mid-write never
leaves a half checkpoint that resume would pick up. The newest `keep` checkpoints are kept, and any the
caller pins (the live trainer's best version, for a rollback). A second checkpoint at the same step (a
rollback trains no step) is step-000040.001, the next .002; they are ordered by (step, number).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

from trainer.distributed import ONE, World, full, full_optimizer_state, like, load_optimizer_state


@dataclass
class Cursor:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next batch
    batch: int = 0  # position of the next batch within that epoch's plan


def trainable_state(model: nn.Module, world: World = ONE) -> dict[str, torch.Tensor]:
    """The trained parameters as full tensors on the CPU. Sharded, every rank calls it: they are gathered one at a
    time and kept by rank 0 only (the others get {}), so no rank holds more than one whole tensor at once."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tensor = full(param.detach())
            if world.main:
                state[name] = tensor.to("cpu").contiguous()
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, model: nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, cursor: Cursor, config: dict[str, Any], keep: int,
                    extra: dict[str, Any] | None = None, extra_state: dict[str, Any] | None = None, *,
                    new: bool = False, pinned: Collection[str] = (), world: World = ONE) -> Path:
    """`extra`: JSON the caller reads back with read_extra; `extra_state`: tensors and the like, read_extra_state.
    `new`: never replace a checkpoint of the same step (step-000040.001 follows step-000040); `pinned`: names of
    checkpoints kept whatever `keep` says. With several ranks every rank calls it (the shards are gathered) and
    rank 0 writes; the others get the path it will have."""
    weights, optimizer_state = trainable_state(model, world), full_optimizer_state(optimizer, world)
    name = f"step-{cursor.step:06d}"
    same_step = [n for step, n in map(_order, root.glob("step-*")) if step == cursor.step]
    if new and same_step:
        name += f".{max(same_step) + 1:03d}"  # after every checkpoint of this step, whichever were pruned
    final, tmp = root / name, root / f".tmp-{name}"
    gathered = _gathered_weights(model, weights, world)
    if not world.main:
        return final
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                "cursor": asdict(cursor), "extra_state": extra_state or {}}, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps({"cursor": asdict(cursor), "config": config, "extra": extra or {}},
                                               indent=2))
    export_weights(model, tokenizer, tmp, gathered)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"), key=_order)[:-keep]:
        if old.name not in pinned and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def export_weights(model: nn.Module, tokenizer: Any, directory: Path,
                   gathered: dict[str, torch.Tensor] | None = None) -> Path:
    """adapter/ (peft, loads with PeftModel.from_pretrained) or model/ (full), with the tokenizer. A sharded model
    is written from `gathered` (_gathered_weights, which every rank must call), by rank 0 alone."""
    target = export_dir(model, directory)
    model.save_pretrained(target, **({"state_dict": gathered} if gathered is not None else {}))
    tokenizer.save_pretrained(target)
    return target


def export_final(model: nn.Module, tokenizer: Any, directory: Path, world: World = ONE) -> Path:
    """export_weights from every rank: the shards are gathered, rank 0 writes."""
    gathered = _gathered_weights(model, trainable_state(model, world), world)
    return export_weights(model, tokenizer, directory, gathered) if world.main else export_dir(model, directory)


def export_dir(model: nn.Module, directory: Path) -> Path:
    """Where export_weights writes in `directory`: adapter/ for a peft model, model/ otherwise."""
    return directory / ("adapter" if hasattr(model, "peft_config") else "model")


def _gathered_weights(model: nn.Module, trained: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor] | None:
    """The full weights save_pretrained writes, when the model is sharded (None otherwise: it reads its own), on
    rank 0: the adapter's tensors for a peft model (`trained`, trainable_state's), the whole state dict for full
    fine-tuning (`trained` and whatever else it holds, gathered one tensor at a time)."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    if hasattr(model, "peft_config"):
        return trained
    names = {n for n, p in model.named_parameters() if p.requires_grad}  # what `trained` holds on rank 0
    state = {}
    for name, tensor in model.state_dict().items():
        value = trained.get(name) if name in names else full(tensor.detach())  # the same calls on every rank
        if world.main:
            state[name] = value.to("cpu")
    return state


def latest_checkpoint(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def read_extra(path: Path) -> dict[str, Any]:
    """What the caller stored with a checkpoint (e.g. the live trainer: the task it has trained)."""
    return json.loads((path / "state.json").read_text()).get("extra", {})


def read_extra_state(path: Path) -> dict[str, Any]:
    """What the caller stored with a checkpoint beside the training state (e.g. cached log-probs)."""
    return torch.load(path / "trainer_state.pt", weights_only=False).get("extra_state", {})


def checkpoints(root: Path) -> list[Path]:
    """Every complete checkpoint under `root`, oldest first."""
    return sorted((p for p in root.glob("step-*") if (p / "trainer_state.pt").exists()), key=_order)


def _order(path: Path) -> tuple[int, int]:
    """(step, n) of a checkpoint named step-STEP or step-STEP.N: the order they were written in."""
    step, _, n = path.name.removeprefix("step-").partition(".")
    return int(step), int(n or 0)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Cursor:
    weights = load_file(path / "trainable.safetensors")
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"{path}: its trainable parameters do not match this model and config "
                         f"(finetune mode or LoRA settings changed?)")
    params = dict(model.named_parameters())
    model.load_state_dict({n: like(w, params[n]) for n, w in weights.items()}, strict=False)
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Cursor(**state["cursor"])
