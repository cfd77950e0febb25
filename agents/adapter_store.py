"""The hub's published adapters: one safetensors file per version in RUN/adapters, the newest also in memory.

    store = AdapterStore(run_dir / "adapters", keep=5, keep_every=10)
    path, num_bytes = store.save(update, tensors)    # on disk (atomically) before the hub acknowledges
    found = store.load(version)                      # (PolicyUpdate, tensors), or None when retired/unknown

Every solver fetches the newest version, so it is served from memory; older ones are read from disk.
The file is written straight from the tensors in the safetensors layout (8-byte little-endian header
length, JSON header, raw bytes), which `safetensors.torch.load_file` and peft read: safetensors' own
writer first copies every tensor into a bytes object, so a hub saving a 600 MB adapter held three
copies of it at once, and took ~50 µs per tensor doing so.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from protocol.messages import PolicyUpdate

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
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in flat.values():
            if data.numel():
                f.write(memoryview(data.numpy()))
    os.replace(tmp, path)
    return offset


class AdapterStore:
    def __init__(self, directory: Path, keep: int, keep_every: int) -> None:
        self.directory, self.keep, self.keep_every = Path(directory), keep, keep_every
        self.directory.mkdir(parents=True, exist_ok=True)
        self.newest: tuple[PolicyUpdate, dict[str, torch.Tensor]] | None = None

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

    def _retire(self) -> None:
        """Disk stays bounded: keep the newest `keep` versions and every `keep_every`-th."""
        files = sorted(self.directory.glob("v*.safetensors"))
        for path in files[:-self.keep]:
            if int(path.stem[1:]) % self.keep_every:
                path.unlink(missing_ok=True)
