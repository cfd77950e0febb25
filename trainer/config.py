"""Training configuration: pydantic models, one per concern; each field's description is its only help.

Defaults follow the authors' released code (docs/algorithms.md); new features are off by default. A typo
in a config file is an error that names the field:

    TrainConfig.model_validate({"algo": "dpo", "dpo": {"bta": 0.1}, ...})
    -> dpo.bta: Extra inputs are not permitted
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from protocol.settings import ConfigError, Strict, format_validation_error, read_config_file
from trainer.methods import METHODS, settings_sections

__all__ = ["LIVE_FIXED", "ConfigError", "GenerationSettings", "LoraSettings", "ReplaySettings", "TrainConfig", "config_reference",
           "load_config"]


class LoraSettings(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt: names like ['q_proj', 'v_proj'], or every linear layer.")


class GenerationSettings(Strict):
    max_new_tokens: int = Field(128, ge=1, description="Length cap of self-generated answers (GSIL/SPIN).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")


class ReplaySettings(Strict):
    data: str | None = Field(
        None, description="Demonstrations (prompt/completion rows) kept in play against forgetting: every micro-batch "
                          "adds `weight` times their token-mean NLL on `batch_size` of them to the method's loss "
                          "(InstructGPT's PPO-ptx term, there on pretraining text). None: off.")
    weight: float = Field(1.0, ge=0, description="Weight of the replay NLL in the loss (averaged over grad_accum like "
                                                 "the method's loss; 0: no replay pass).")
    batch_size: int = Field(8, ge=1, description="Replay rows per micro-batch (per optimizer step unless grad_accum > 1).")


class TrainSettings(Strict):
    """The settings every method shares; TrainConfig adds one section per method family (from the registry)."""

    algo: str = Field(description="Training method: " + ", ".join(METHODS) + ".")
    model: str = Field(description="Base model: a local directory or a hub id (loaded with AutoModelForCausalLM).")
    data: str = Field(description="Dataset file (JSON lines or a JSON list) in a TRL format.")
    out: str = Field(description="Output directory: checkpoints, metrics, the final adapter or model.")
    finetune: Literal["lora", "full"] = Field("lora", description="Train a LoRA adapter (default) or all weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter settings.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (LoRA; use ~1e-6 for full DPO fine-tuning).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (a pair counts once).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: int = Field(1, ge=1, description="Passes over the data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    reference: Literal["initial", "current"] = Field(
        "initial", description="Reference policy: the starting model (LoRA adapter off, or a frozen copy), or "
                               "the policy as it is at the start of each online round (SPIN/GSIL iterations).")
    reference_batch_factor: int = Field(
        4, ge=1, description="Batch-size multiple for the no-grad pass that precomputes reference log-probs.")
    max_length: int = Field(512, ge=8, description="Tokens per sequence; longer prompts are cut from the left.")
    max_prompt_length: int = Field(256, ge=1, description="Tokens kept of the prompt.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 otherwise.")
    base_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="dtype of the frozen weights (LoRA's base, full fine-tuning's reference copy); auto: bf16 "
                            "on a GPU that supports it, fp32 otherwise. Trained weights stay fp32.")
    nproc: int = Field(1, ge=1, description="Training processes on this machine (`selfplay train` starts them with "
                                            "torchrun): FSDP2 shards the model over them and each takes a share of "
                                            "every batch; batch_size stays the global batch.")
    activation_checkpointing: bool = Field(
        False, description="Recompute each transformer block's activations in the backward pass instead of keeping "
                           "them: less memory for longer sequences or larger batches, about a third more compute.")
    seed: int = Field(0, description="Seed for data order, LoRA init, dropout and generation.")
    save_every: int = Field(100, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept on disk.")
    log_every: int = Field(1, ge=1, description="Write metrics every N optimizer steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files (if tensorboard is installed).")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    generation: GenerationSettings = Field(default_factory=GenerationSettings,
                                           description="Sampling of y_gen for GSIL/SPIN when the data has none.")
    replay: ReplaySettings = Field(default_factory=ReplaySettings,
                                   description="A likelihood term on fixed demonstrations in every step (off "
                                               "unless replay.data is set).")

    @field_validator("algo")
    @classmethod
    def _known(cls, algo: str) -> str:
        if algo not in METHODS:
            raise ValueError(f"algo {algo!r} is not a method; one of {', '.join(METHODS)}")
        return algo

    @model_validator(mode="after")
    def _checks(self) -> TrainSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                             f"({self.max_length})")
        return self


# One section per method family, each with the authors' defaults: TrainConfig.dpo, TrainConfig.grpo, ...
TrainConfig = create_model(
    "TrainConfig", __base__=TrainSettings, __doc__="A training run: the shared settings and every method's section.",
    **{name: (model, Field(default_factory=model, description=f"Settings of {users}."))
       for name, (model, users) in settings_sections().items()})


# What the live trainer (agents/trainer_agent.py, live_settings) sets itself or does not use, and why; a topology's
# [trainer] may not set these (launch.topology refuses each by name). Here, not there, so that reading a topology
# does not load the trainer.
LIVE_FIXED = {
    "scheduler": "one pass per round at a constant learning rate",
    "warmup_ratio": "one pass per round at a constant learning rate",
    "reference": "the method decides: the policy at the round's start, or the starting model (GRPO/RLOO)",
    "save_every": "it checkpoints after every round",
    "tensorboard": "metrics go to the training reports and metrics.jsonl",
    "epochs": "one pass over each round's rows",
    "max_steps": "one pass over each round's rows",
    "generation": "the solvers sample the answers",
    "finetune": "it publishes LoRA adapters",
    "data": "its rows come from the creator's train tasks",
    "out": "it writes to RUN/trainer",
}


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML or JSON file, apply `overrides` (dotted keys allowed: 'dpo.beta'), validate."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, path)) from None


def config_reference() -> str:
    """Every field with its default and description, as a commented TOML file (one source of help)."""
    lines = ["# selfplay train configuration: every field, its default and what it does.",
             "# algo, model, data and out are required (flags --algo --model --data --out, or here).", ""]
    sections = []
    for name, f in TrainConfig.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, Strict):
            sections.append((name, f))
            continue
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        lines += [f"# {f.description}", _toml_line(name, default)]
    for name, f in sections:
        lines += ["", f"[{name}]  # {f.description}"]
        for sub, sf in f.annotation.model_fields.items():
            lines += [f"# {sf.description}", _toml_line(sub, sf.get_default(call_default_factory=True))]
    return "\n".join(lines) + "\n"


def _toml_line(name: str, value: Any) -> str:
    if value is None:
        return f"# {name} = ..."
    return f"{name} = {json.dumps(value)}"
