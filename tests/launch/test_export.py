"""`selfplay export`: a run's published version as an adapter folder that peft loads from anywhere, or merged."""

import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from agents.adapter_store import AdapterStore
from protocol.messages import PolicyUpdate
from tests.launch.test_cli import run

IDS = torch.tensor([[5, 40, 41, 42, 7]])
CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


@pytest.fixture
def published(tmp_path, tiny_models):
    """A run directory whose hub published versions 1 and 2 (the hub's own store), and version 2's logits."""
    store = AdapterStore(tmp_path / "run" / "adapters", keep=5, keep_every=10)
    logits = {}
    for version in (1, 2):
        torch.manual_seed(version)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                               LoraConfig(**CONFIG, init_lora_weights=False)).eval()
        with torch.no_grad():
            logits[version] = model(input_ids=IDS).logits
        store.save(PolicyUpdate(version=version, parent_version=version - 1, base_model=str(tiny_models.policy),
                                adapter_config=CONFIG), get_peft_model_state_dict(model))
    return tmp_path / "run", logits


def test_an_exported_adapter_loads_with_peft_from_another_folder(tmp_path, tiny_models, published):
    run_dir, logits = published
    out = run("export", str(run_dir), "--out", str(tmp_path / "adapter"))
    assert out.returncode == 0, out.stderr
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.policy), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=IDS).logits, logits[2])  # the newest by default
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import sys; from peft import AutoPeftModelForCausalLM; "
              "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); print(type(m).__name__)")
    auto = subprocess.run([sys.executable, "-c", script, str(tmp_path / "adapter")], cwd=elsewhere,
                          capture_output=True, text=True, timeout=120)
    assert auto.returncode == 0 and "PeftModelForCausalLM" in auto.stdout, auto.stderr[-2000:]


def test_an_older_version_and_a_merged_model(tmp_path, tiny_models, published):
    run_dir, logits = published
    out = run("export", str(run_dir), "--version", "1", "--merge", "--out", str(tmp_path / "merged"))
    assert out.returncode == 0, out.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # a plain model, no peft
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, logits[1], rtol=1e-4, atol=1e-4)
    assert (tmp_path / "merged" / "tokenizer_config.json").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


def test_a_version_not_kept_and_a_used_folder_are_refused(tmp_path, published):
    run_dir, _ = published
    gone = run("export", str(run_dir), "--version", "7", "--out", str(tmp_path / "x"))
    assert gone.returncode != 0 and "version 7 is not kept; kept: 1, 2" in gone.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("mine")
    used = run("export", str(run_dir), "--out", str(tmp_path / "used"))
    assert used.returncode != 0 and "is not empty" in used.stderr
    assert (tmp_path / "used" / "file").read_text() == "mine"
