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


def test_a_base_named_relative_then_absolute_is_the_same_base_and_another_is_refused(tmp_path, monkeypatch):
    from agents.adapter_store import portable_base, same_base

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    absolute = portable_base("models/tiny")
    assert absolute == str(tmp_path / "models" / "tiny") and portable_base("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    config = {"r": 1, "lora_alpha": 2, "target_modules": ["q"]}
    tensors = {"base_model.model.q.lora_A.weight": torch.zeros(1, 2), "base_model.model.q.lora_B.weight": torch.zeros(2, 1)}
    store = AdapterStore(tmp_path / "adapters", keep=5, keep_every=0)
    store.save(PolicyUpdate(version=1, parent_version=0, base_model="./models/tiny", adapter_config=config), tensors)
    # a trainer of this version publishes the path made absolute: the same base as the run's earlier versions
    store.check(PolicyUpdate(version=2, parent_version=1, base_model=absolute, adapter_config=config), tensors, 1)
    with pytest.raises(ValueError, match="base model differ"):
        store.check(PolicyUpdate(version=2, parent_version=1, base_model=str(tmp_path / "models" / "other"),
                                 adapter_config=config), tensors, 1)
    assert not same_base("models/tiny", "/elsewhere/tiny") and not same_base("../tiny", "/x/tiny")
