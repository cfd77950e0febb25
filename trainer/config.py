"""Training configuration: pydantic models, one per concern; each field's description is its only help.

Defaults follow the authors' released code (docs/training.md, *Methods*); new features are off by default. A typo
in a config file is an error that names the field:

    TrainConfig.model_validate({"algo": "dpo", "dpo": {"bta": 0.1}, ...})
    -> dpo.bta: Extra inputs are not permitted
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Algo = Literal["sft", "dpo", "ipo", "simpo", "spin", "gsil", "cut", "contrastive-sft"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt: names like ['q_proj', 'v_proj'], or every linear layer.")


class DPOSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward (eva used 0.05).")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid", description="DPO's logistic loss, its hinge variant, or IPO (algo 'ipo' sets this).")
    nll_alpha: float = Field(0.0, ge=0, description="Weight of a length-averaged NLL term on the chosen answer "
                                                    "(Iterative RPO, Pang et al. 2024); 0 = off.")


class SimPOSettings(Strict):
    beta: float = Field(2.0, gt=0, description="Reward scale on length-averaged log-probs.")
    gamma_beta_ratio: float = Field(0.25, ge=0, description="Target margin gamma as a fraction of beta.")
    cpo_alpha: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen answer (CPO); 0 = off.")


class SPINSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Inverse temperature on the log-ratio difference.")


class GSILSettings(Strict):
    beta: float = Field(0.1, gt=0, description="Scale a of the classifier logit a*r(y) + b.")
    gamma: float = Field(0.1, description="Shift b of the logit: a prior weight on the real class (>0 helps).")
    variant: Literal["logistic", "brier", "hinge", "kliep", "lsif"] = Field(
        "logistic", description="Density-ratio objective.")


class GenerationSettings(Strict):
    max_new_tokens: int = Field(128, ge=1, description="Length cap of self-generated answers (GSIL/SPIN).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")


class CUTSettings(Strict):
    threshold: float = Field(1.2, gt=0, description="lambda: a token is inappropriate when p(y|x,j)/p(y|x) > lambda "
                                                    "(offline default 1.2; the live loop uses 1.1).")
    alpha: float = Field(0.5, ge=0, description="Weight of the unlikelihood term (offline 0.5; live 1.0).")
    combine: Literal["mean", "sum"] = Field("mean", description="(L1+L2)/2 as the released code, or L1+L2.")
    align_p_ratio: float = Field(0.25, ge=0, description="Align-P examples kept, as a multiple of Align-N's count.")
    template: str = Field("{prompt}\nJudgment: {judgment}\nResponse:",
                          description="Judgment-conditioned prompt; the response follows it.")


class ContrastiveSettings(Strict):
    template: str = Field(
        "Instruction: {instruction}\nQuestion: {question}\nNegative answer: {negative}\nPositive answer: ",
        description="Frame of one training text; the positive answer follows it and is the only target.")
    instruction: str = Field("Give a correct answer that avoids the mistakes of the negative answer.",
                             description="What a good answer must do.")
    train_on_negative: bool = Field(False, description="Also train on the negative span (Chain of Hindsight ablation).")


class TrainConfig(Strict):
    algo: Algo = Field(description="Training method: sft, dpo, ipo, simpo, spin, gsil, cut or contrastive-sft.")
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
    seed: int = Field(0, description="Seed for data order, LoRA init, dropout and generation.")
    save_every: int = Field(100, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept on disk.")
    log_every: int = Field(1, ge=1, description="Write metrics every N optimizer steps.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files (if tensorboard is installed).")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="DPO / IPO / hinge settings.")
    simpo: SimPOSettings = Field(default_factory=SimPOSettings, description="SimPO settings.")
    spin: SPINSettings = Field(default_factory=SPINSettings, description="SPIN settings.")
    gsil: GSILSettings = Field(default_factory=GSILSettings, description="GSIL settings.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings,
                                           description="Sampling of y_gen for GSIL/SPIN when the data has none.")
    cut: CUTSettings = Field(default_factory=CUTSettings, description="CUT settings.")
    contrastive: ContrastiveSettings = Field(default_factory=ContrastiveSettings,
                                             description="Plain-text contrastive SFT settings.")

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                             f"({self.max_length})")
        return self


class ConfigError(ValueError):
    """A configuration problem, with the field path in the message."""


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML or JSON file, apply `overrides` (dotted keys allowed: 'dpo.beta'), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
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


def format_validation_error(e: ValidationError, source: str | Path | None = None) -> str:
    where = f"{source}: " if source else ""
    parts = [f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors(include_url=False)]
    return where + "; ".join(parts)


def config_reference() -> str:
    """Every field with its default and description, as a commented TOML file (one source of help)."""
    lines = ["# selfplay train configuration: every field, its default and what it does.",
             "# algo, model, data and out are required (flags --algo --model --data --out, or here).", ""]
    sections = []
    for name, f in TrainConfig.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, Strict):
            sections.append((name, f))
            continue
        lines += [f"# {f.description}", _toml_line(name, None if f.is_required() else f.get_default(call_default_factory=True))]
    for name, f in sections:
        lines += ["", f"[{name}]  # {f.description}"]
        for sub, sf in f.annotation.model_fields.items():
            lines += [f"# {sf.description}", _toml_line(sub, sf.get_default(call_default_factory=True))]
    return "\n".join(lines) + "\n"


def _toml_line(name: str, value: Any) -> str:
    if value is None:
        return f"# {name} = ..."
    return f"{name} = {json.dumps(value)}"
