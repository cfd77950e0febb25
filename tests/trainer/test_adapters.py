"""trainer.adapters reads and writes exactly what peft's state-dict functions do, and refuses a wrong layout."""

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from trainer.adapters import adapter_parameters, read_adapter, write_adapter


def lora_model(path, seed: int, target_modules="all-linear"):
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=4, target_modules=target_modules))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_()
    return model


def test_read_is_peft_state_dict_and_write_is_set_state_dict(tiny_models):
    source, target = lora_model(tiny_models.policy, 0), lora_model(tiny_models.policy, 1)
    peft_keys = get_peft_model_state_dict(source)
    tensors = read_adapter(adapter_parameters(source))
    assert tensors.keys() == peft_keys.keys()
    assert all(torch.equal(tensors[k], peft_keys[k]) for k in tensors)
    assert not torch.equal(*(get_peft_model_state_dict(m)[next(iter(peft_keys))] for m in (source, target)))
    write_adapter(adapter_parameters(target), tensors)
    written = get_peft_model_state_dict(target)
    assert all(torch.equal(written[k], tensors[k]) for k in tensors)
    ids = torch.tensor([[1, 4, 9, 16]])
    with torch.no_grad():
        torch.testing.assert_close(target(ids).logits, source(ids).logits)


def test_an_adapter_of_another_layout_is_refused_whole(tiny_models):
    tensors = read_adapter(adapter_parameters(lora_model(tiny_models.policy, 0, target_modules=["q_proj"])))
    target = lora_model(tiny_models.policy, 1)
    params = adapter_parameters(target)
    before = {k: p.detach().clone() for k, p in params.items()}
    with pytest.raises(ValueError, match="does not fit this model's LoRA layout"):
        write_adapter(params, tensors)
    assert all(torch.equal(params[k], before[k]) for k in params)  # nothing half-written
