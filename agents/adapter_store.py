"""The hub's published adapters: one safetensors file per version in RUN/adapters, the newest also in memory.

    store = AdapterStore(run_dir / "adapters", keep=5, keep_every=10)
    path, num_bytes = store.save(update, tensors)    # on disk (atomically) before the hub acknowledges
    found = store.load(version)                      # (PolicyUpdate, tensors), or None when retired/unknown
    store.check(update, tensors, previous=version)   # ValueError: not a LoRA adapter in the previous one's layout

Every solver fetches the newest version, so it is served from memory; older ones are read from disk.
The file is written straight from the tensors in the safetensors layout (8-byte little-endian header
length, JSON header, raw bytes), which `safetensors.torch.load_file` and peft read: safetensors' own
writer first copies every tensor into a bytes object, so a hub saving a 600 MB adapter held three
copies of it at once, and took ~50 µs per tensor doing so. A write that fails (a full disk) leaves no
temporary file behind, and any left by a crash are removed when the store opens.

What the hub checks before it acknowledges an adapter (`check`): peft LoRA keys only (`...lora_A.weight`
and `...lora_B.weight`, in pairs), 2-D floating tensors of finite values, A of shape (r, in) and B of
(out, r) with r the config's rank; and from the second version on, exactly the names, shapes, dtypes and
adapter config of the version before. The hub has no model, so the first version's fit to the base model
is the solvers' to find out: one that fits no model is refused by each solver, which keeps serving.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import structlog
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from protocol.messages import PolicyUpdate

log = structlog.get_logger("agents.adapter_store")

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write `tensors` to `path` (via a temporary file and a rename: a crash leaves the old file or the new
    one, never half of one). Returns the tensor bytes written."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    flat = {}
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} has no safetensors name")
        flat[name] = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # no copy when possible
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + flat[name].numel()]}
        offset += flat[name].numel()
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes so the data stays aligned
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for data in flat.values():
                if data.numel():
                    f.write(memoryview(data.numpy()))
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half file left to fill it further
        tmp.unlink(missing_ok=True)
        raise
    return offset


class AdapterStore:
    def __init__(self, directory: Path, keep: int, keep_every: int) -> None:
        self.directory, self.keep, self.keep_every = Path(directory), keep, keep_every
        self.directory.mkdir(parents=True, exist_ok=True)
        self.newest: tuple[PolicyUpdate, dict[str, torch.Tensor]] | None = None
        stale = list(self.directory.glob("*.tmp"))  # writes a crash cut short: never acknowledged, never read
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.warning("removed unfinished adapter files", files=[p.name for p in stale])

    def path(self, version: int) -> Path:
        return self.directory / f"v{version:06d}.safetensors"

    def save(self, update: PolicyUpdate, tensors: dict[str, torch.Tensor]) -> tuple[Path, int]:
        """Persist a published version (the newest so far is also kept in memory); retire old files."""
        tensors = {k: v.clone() for k, v in tensors.items()}  # own copies: received tensors alias message frames
        path = self.path(update.version)
        num_bytes = write_safetensors(path, tensors, {"update": update.model_dump_json()})
        if self.newest is None or update.version >= self.newest[0].version:
            self.newest = (update, tensors)
        self._retire()
        return path, num_bytes

    def load(self, version: int) -> tuple[PolicyUpdate, dict[str, torch.Tensor]] | None:
        if self.newest is not None and self.newest[0].version == version:
            return self.newest
        path = self.path(version)
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            update = PolicyUpdate.model_validate_json(f.metadata()["update"])
        return update, load_file(path)

    def same(self, update: PolicyUpdate, tensors: dict[str, torch.Tensor]) -> bool:
        """Whether `update` and its tensors are exactly the version already stored under its number."""
        stored = self.load(update.version)
        if stored is None or stored[0] != update or stored[1].keys() != tensors.keys():
            return False
        return all(t.dtype == stored[1][k].dtype and t.shape == stored[1][k].shape and torch.equal(t, stored[1][k])
                   for k, t in tensors.items())

    def check(self, update: PolicyUpdate, tensors: dict[str, torch.Tensor], previous: int) -> None:
        """ValueError, naming the first problem, unless `tensors` are a LoRA adapter consistent with `update`'s
        config and, when version `previous` is stored, in exactly its layout (see the module docstring)."""
        layout = _lora_layout(update.adapter_config, tensors)
        before = self.load(previous) if previous else None
        if before is None:
            return
        if update.adapter_config != before[0].adapter_config or not same_base(update.base_model, before[0].base_model):
            raise ValueError(f"adapter config or base model differ from v{previous}'s (solvers would apply it wrongly)")
        reference = {name: (t.dtype, tuple(t.shape)) for name, t in before[1].items()}
        if layout != reference:
            diff = sorted(set(layout.items()) ^ set(reference.items()))[:2]
            raise ValueError(f"layout differs from v{previous}'s: {[(n, str(d), s) for n, (d, s) in diff]}")

    def _retire(self) -> None:
        """Disk stays bounded: keep the newest `keep` versions and every `keep_every`-th."""
        files = sorted(self.directory.glob("v*.safetensors"))
        for path in files[:-self.keep]:
            if int(path.stem[1:]) % self.keep_every:
                path.unlink(missing_ok=True)


def _lora_layout(config: dict, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape) of a well-formed LoRA adapter's tensors; ValueError at the first malformed one."""
    rank = config.get("r")
    if type(rank) is not int or not 1 <= rank <= 1 << 16:
        raise ValueError(f"adapter_config r must be a rank from 1 to 65536, not {rank!r}")
    alpha, dropout = config.get("lora_alpha", rank), config.get("lora_dropout", 0.0)
    if not (isinstance(alpha, (int, float)) and alpha > 0 and isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError("adapter_config lora_alpha must be > 0 and lora_dropout in [0, 1)")
    if not tensors:
        raise ValueError("no tensors")
    layout = {}
    for name, t in tensors.items():
        stem, _, matrix = name.rpartition(".lora_")
        if matrix not in ("A.weight", "B.weight") or not stem:
            raise ValueError(f"{name[:200]!r} is not a peft LoRA key (…lora_A.weight or …lora_B.weight)")
        other = f"{stem}.lora_{'B' if matrix[0] == 'A' else 'A'}.weight"
        if other not in tensors:
            raise ValueError(f"{name[:200]!r} has no {other[-13:]} beside it")
        if not t.dtype.is_floating_point or t.dim() != 2 or 0 in t.shape:
            raise ValueError(f"{name[:200]!r}: a LoRA matrix is a non-empty 2-D float tensor, not {t.dtype} {tuple(t.shape)}")
        if (t.shape[0] if matrix[0] == "A" else t.shape[1]) != rank:
            raise ValueError(f"{name[:200]!r}: shape {tuple(t.shape)} does not have rank r = {rank}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name[:200]!r} holds NaN or infinite values")
        layout[name] = (t.dtype, tuple(t.shape))
    return layout


def portable_base(model: str) -> str:
    """A base model path that exists here, made absolute (so an exported adapter loads from anywhere); anything
    else (a hub id) as it was given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def same_base(a: str, b: str) -> bool:
    """The same base model, also when one names it relative to the trainer's folder and the other absolute (a
    run published before trainers made their paths absolute)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    if pa.is_absolute() == pb.is_absolute():
        return False
    absolute, relative = (pa, pb) if pa.is_absolute() else (pb, pa)
    parts = [p for p in relative.parts if p != "."]
    return ".." not in parts and list(absolute.parts[-len(parts):]) == parts
