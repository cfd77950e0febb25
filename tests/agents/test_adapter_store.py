"""The hub's adapter files: our writer's output is what safetensors reads, bit for bit, with its metadata."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from agents.adapter_store import AdapterStore, write_safetensors
from protocol.messages import PolicyUpdate


def test_written_files_load_bit_exactly_in_safetensors(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "a.lora_A.weight": torch.randn(4, 8),
        "a.lora_B.weight": torch.randn(8, 4, dtype=torch.bfloat16),
        "half": torch.randn(3, dtype=torch.float16),
        "transposed": torch.randn(5, 3).t(),  # not contiguous
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True]),
        "odd": torch.arange(3, dtype=torch.uint8),  # 3 bytes: later tensors start unaligned to the dtype
        "after_odd": torch.randn(2, dtype=torch.float64),
    }
    path = tmp_path / "v000001.safetensors"
    assert write_safetensors(path, tensors, {"update": "{}"}) == sum(t.nbytes for t in tensors.values())
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"update": "{}"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_an_unsupported_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match="complex64"):
        write_safetensors(tmp_path / "x.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)}, {})


def test_the_store_serves_the_newest_from_memory_and_older_ones_from_disk(tmp_path):
    store = AdapterStore(tmp_path / "adapters", keep=2, keep_every=3)
    for version in range(1, 6):
        update = PolicyUpdate(version=version, parent_version=version - 1, base_model="tiny")
        store.save(update, {"w": torch.full((2,), float(version))})
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "v000003.safetensors", "v000004.safetensors", "v000005.safetensors"]  # newest 2, and every 3rd
    update, tensors = store.load(5)
    assert update.version == 5 and tensors["w"].tolist() == [5.0, 5.0] and store.newest[0].version == 5
    update, tensors = AdapterStore(tmp_path / "adapters", keep=2, keep_every=3).load(3)  # a restarted hub
    assert update.parent_version == 2 and tensors["w"].tolist() == [3.0, 3.0]
    assert store.load(1) is None and store.load(9) is None
