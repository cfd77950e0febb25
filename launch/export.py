"""`selfplay export`: a published policy version of a run as a PEFT adapter folder, or merged into its base model.

    export_version("runs/demo/grpo", out="my-adapter")                 # the newest version (the one served)
    export_version("runs/demo/grpo", out="v12", version=12, merge=True)

The hub keeps each published version as RUN/adapters/vNNNNNN.safetensors, with the base model and LoRA
config it was trained with. The folder written here is what `PeftModel.from_pretrained(base, DIR)`,
`AutoPeftModelForCausalLM.from_pretrained(DIR)` and vLLM's LoRA loading read: adapter_model.safetensors
and adapter_config.json, whose base model is the one the run used (the trainer publishes a local path
made absolute, so the folder loads from anywhere; a hub id as it was given), or `base_model` when given. With `merge`, the
base model (in its own dtype) with the adapter merged into its weights, and its tokenizer: a plain
transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from agents.adapter_store import portable_base
from protocol.messages import PolicyUpdate


class ExportError(ValueError):
    """The version cannot be exported as asked (the message says why)."""


def versions(run_dir: str | Path) -> list[int]:
    """The policy versions whose adapters the run still keeps (the hub retires old ones), oldest first."""
    return sorted(int(p.stem[1:]) for p in (Path(run_dir) / "adapters").glob("v*.safetensors") if p.stem[1:].isdigit())


def export_version(run_dir: str | Path, out: str | Path, version: int | None = None, merge: bool = False,
                   base_model: str | None = None) -> Path:
    """Write policy `version` of the run (default: the newest) to `out`; returns `out`."""
    kept = versions(run_dir)
    if not kept:
        raise ExportError(f"{run_dir}: no published policy versions (RUN/adapters is empty or missing)")
    version = kept[-1] if version is None else version
    if version not in kept:
        raise ExportError(f"{run_dir}: version {version} is not kept; kept: {', '.join(map(str, kept))} (the hub "
                          "keeps the newest few and every hub.keep_every-th)")
    path = Path(run_dir) / "adapters" / f"v{version:06d}.safetensors"
    with safe_open(str(path), "pt") as f:
        update = PolicyUpdate.model_validate_json(f.metadata()["update"])
    tensors = load_file(path)
    base = base_model or portable_base(update.base_model)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty: export writes a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        _merged(base, update, tensors, out)
    else:
        _adapter(base, update, tensors, out)
    (out / "selfplay_export.json").write_text(json.dumps(
        {"run": str(Path(run_dir).resolve()), "version": version, "parent_version": update.parent_version,
         "base_model": base, "merged": merge}, indent=2) + "\n")
    return out


def _adapter(base: str, update: PolicyUpdate, tensors: dict, out: Path) -> None:
    from trainer.adapters import lora_config

    config = lora_config(update.adapter_config, base_model_name_or_path=base, task_type="CAUSAL_LM")
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def _merged(base: str, update: PolicyUpdate, tensors: dict, out: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _adapter(base, update, tensors, out / "adapter")
    # the base in its own dtype (a bf16 model stays bf16, not twice its size in fp32)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, torch_dtype="auto"), str(out / "adapter"))
    model.merge_and_unload().save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(out))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / "adapter" / name).unlink()
    (out / "adapter").rmdir()

