"""The topology file: which processes a run has and how each is set up (TOML, validated by pydantic).

    [run]
    dir = "runs/demo"
    rounds = 2
    [hub]
    control = "ipc"                  # or "tcp://0.0.0.0:5555" with keys_dir (and data = "tcp://0.0.0.0:5556")
    # address = "192.0.2.1"          # agents on other machines dial this host at those ports
    [creator]
    prompts = "seeds.jsonl"          # rows: {"prompt", "answer"?, "demonstration"?, "difficulty"?}
    mutator = "mypkg.world:mutate"   # optional programmatic mutator (module:function)
    [creator.settings]
    samples_per_prompt = 4
    [solver]
    count = 2
    model = "./tiny/policy"
    [judge]
    backend = "reward_model"         # verifier | reward_model | llm_judge
    model = "./tiny/reward"          # (verifier: checker = "mypkg.world:check", optional)
    [trainer]
    algo = "dpo"
    model = "./tiny/policy"          # any other TrainConfig field too (lr, lora, dpo.beta, ...)

Each section is the process's own settings model ([hub]: HubSettings, [creator.settings]: CreatorConfig,
[trainer]: TrainConfig less what the live trainer sets itself), so a setting is either honoured by the
process or refused in one line naming it: `solver.cont: Extra inputs are not permitted`,
`trainer.scheduler: Value error, not a setting of the live trainer (one pass per round at a constant learning
rate)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from agents.backends.openai_api import ApiSettings
from agents.creator import CreatorConfig
from agents.hub import HubConfig, HubSettings
from agents.plugins import load_object
from protocol.settings import ConfigError, Strict, format_validation_error, read_config_file
from trainer.config import LIVE_FIXED, TrainConfig


class RunSection(Strict):
    dir: str = Field(description="Run directory: ledger, adapters, checkpoints, logs, sockets.")
    rounds: int = Field(2, ge=1, description="Creator rounds before the run ends.")
    log_level: str = Field("info", description="Console log level of every process.")
    log_max_mb: float = Field(50.0, gt=0, description="A process's JSON log is rotated past this size (MB); its "
                                                      "console output file when the process restarts.")
    log_backups: int = Field(3, ge=0, description="Rotated log files kept per process.")
    max_identical_crashes: int = Field(5, ge=0, description="Stop the run when a process exits with an error this "
                                                            "many times in a row with the same last printed line "
                                                            "(it would fail the same way forever); 0: restart "
                                                            "forever. Kills by a signal never count.")
    tensorboard: bool = Field(True, description="Write RUN/tensorboard from the ledger while the run goes (on the "
                                                "hub's machine): rewards, held-out and validation scores, the "
                                                "trainer's losses, throughput, staleness (launch/board.py).")


class HubSection(HubSettings):
    address: str | None = Field(None, description="Host name or address that agents on other machines dial, at the "
                                                  "ports of control and data (tcp only). None: agents read the "
                                                  "endpoints from RUN/hub.json, written by a hub on their machine.")

    @model_validator(mode="after")
    def _address_needs_ports(self) -> HubSection:
        if self.address is not None:
            for name in ("control", "data"):
                endpoint = getattr(self, name)
                if not endpoint.startswith("tcp://") or endpoint.endswith(":*"):
                    raise ValueError(f"with address, hub.{name} must be tcp://HOST:PORT with a fixed port, "
                                     f"not {endpoint!r}")
        return self


class CreatorSection(Strict):
    prompts: str = Field(description="Seed prompts: JSON lines with prompt, and optionally answer, demonstration.")
    mutator: str | None = Field(None, description="module:function of a programmatic mutator; else an LLM evolver.")
    eval_prompts: str | None = Field(None, description="Held-out test prompts (same format): evaluated and reported, "
                                                       "never trained on, never used to decide anything.")
    validation_prompts: str | None = Field(None, description="Validation prompts (same format, disjoint from the "
                                                             "test prompts): with settings.promotion, each new "
                                                             "version is validated on them before it is served.")
    chat: bool = Field(False, description="Prompts reach the model through its chat template: a text prompt becomes "
                                          "one user turn (prompts written as messages always do).")
    evolver: ApiSettings | None = Field(None, description="eva's evolver on an OpenAI-compatible server (as eva used "
                                                          "an API model) instead of the policy through the solvers.")
    settings: CreatorConfig = Field(default_factory=CreatorConfig, description="eva settings (agents/creator.py).")

    @model_validator(mode="after")
    def _promotion_needs_validation(self) -> CreatorSection:
        if self.mutator and self.evolver is not None:
            raise ValueError("give mutator (a task world's, keeping answers) or evolver (a model over an API), not both")
        if self.settings.promotion and not self.validation_prompts:
            raise ValueError("settings.promotion needs validation_prompts (a JSON lines file, disjoint from "
                             "eval_prompts)")
        return self

    @field_validator("settings")
    @classmethod
    def _algo_from_trainer(cls, settings: CreatorConfig) -> CreatorConfig:
        if "algo" in settings.model_fields_set:
            raise ValueError("algo is set by trainer.algo")
        return settings


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig admits these max_lora_rank only


class SolverSection(Strict):
    count: int = Field(1, ge=0, description="Solver processes to start.")
    model: str = Field(description="Policy base model path (the trainer's adapters are applied on top).")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (CPU/GPU) or vllm (GPU only).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    capacity: int = Field(2, ge=1, description="Generation tasks each holds at once, run one after another: the "
                                               "next waits at the solver, not on a round trip to the hub. The hub "
                                               "gives a busy solver a task to hold only while every other solver "
                                               "still has one queued, so a held task never keeps a solver idle.")
    batch_size: int = Field(16, ge=1, description="hf only: prompts per generate() call (each with its n samples). "
                                                  "Larger batches generate faster per prompt while memory lasts.")
    threads: int | None = Field(None, ge=1, description="CPU threads of each solver's torch (None: torch's default; "
                                                        "on a CPU, cores / count avoids oversubscription).")
    max_lora_rank: int = Field(64, ge=1, description="vllm only: the largest LoRA rank the engine accepts (at least "
                                                     "the trainer's lora.r).")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm only: further vllm.LLM arguments "
                                        "(gpu_memory_utilization, max_model_len, tensor_parallel_size, dtype, ...).")

    @model_validator(mode="after")
    def _vllm_settings(self) -> SolverSection:
        if self.backend != "vllm" and {"max_lora_rank", "engine_args"} & self.model_fields_set:
            raise ValueError("max_lora_rank and engine_args are settings of the vllm backend")
        if self.backend == "vllm" and (self.threads is not None or not self.device.startswith(("auto", "cuda"))):
            raise ValueError(f"the vllm backend runs on a GPU: device must be auto or cuda[:N] (got {self.device!r}), "
                             "and threads is a setting of the hf backend")
        if self.backend == "vllm" and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank = {self.max_lora_rank}: vLLM takes one of "
                             f"{', '.join(map(str, VLLM_LORA_RANKS))} (at least the trainer's lora.r)")
        if self.backend == "vllm" and "batch_size" in self.model_fields_set:
            raise ValueError("batch_size is a setting of the hf backend (vllm schedules its own batches)")
        return self


class RewardSource(Strict):
    checker: str = Field(description="module:name of a checker: selfplay's (prompts, responses, want_judgment) or a "
                                     "TRL reward function (prompts, completions, **columns) -> [float]")
    weight: float = Field(1.0, allow_inf_nan=False, description="Its weight in the sum of scores.")


class JudgeSection(Strict):
    count: int = Field(1, ge=0, description="Judge processes to start.")
    backend: Literal["verifier", "reward_model", "llm_judge"] = Field("verifier", description="How samples are scored.")
    model: str | None = Field(None, description="Reward model or judge model path (not for verifier).")
    checker: str | None = Field(None, description="verifier: module:name of a task world's checker (a function, or a "
                                                  "class made with no arguments) called as (prompts, responses, "
                                                  "want_judgment), or a TRL reward function; default: exact "
                                                  "match of the answer.")
    rewards: list[RewardSource] = Field(default_factory=list, description="verifier: several checkers whose "
                                        "scores add up with their weights (instead of checker); the judgment is "
                                        "the first one written.")
    device: str = Field("auto", description="auto, cpu, cuda, ...")
    max_new_tokens: int = Field(128, ge=1, le=32768, description="llm_judge: tokens of critique and score per answer.")
    api: ApiSettings | None = Field(None, description="llm_judge: an OpenAI-compatible server (vLLM, SGLang, an API) "
                                                      "instead of a local model: [judge.api] base_url, model, ...")

    @model_validator(mode="after")
    def _needs_model(self) -> JudgeSection:
        if self.api is not None and self.backend != "llm_judge":
            raise ValueError("api is for the llm_judge backend")
        if self.api is not None and self.model:
            raise ValueError("give model (a local judge model) or api (a server), not both")
        if self.backend != "verifier" and not self.model and self.api is None:
            raise ValueError(f"judge backend {self.backend!r} needs a model" +
                             (" (or api, an OpenAI-compatible server)" if self.backend == "llm_judge" else ""))
        if (self.checker is not None or self.rewards) and self.backend != "verifier":
            raise ValueError("checker and rewards are for the verifier backend")
        if self.checker is not None and self.rewards:
            raise ValueError("give checker (one) or rewards (several with weights), not both")
        return self

    def checkers(self) -> list[tuple[str, float]]:
        """(module:name, weight) of the verifier's checkers; none: the default exact-answer verifier."""
        if self.rewards:
            return [(r.checker, r.weight) for r in self.rewards]
        return [(self.checker, 1.0)] if self.checker else []


class _LiveTrainer(Strict):
    @field_validator(*LIVE_FIXED, mode="before", check_fields=False)
    @classmethod
    def _not_live(cls, value: Any, info: ValidationInfo) -> Any:
        raise ValueError(f"not a setting of the live trainer ({LIVE_FIXED[info.field_name]})")


# TrainConfig's fields; those the live trainer sets itself are there only to be refused by name, with the reason.
TrainerSection = create_model(
    "TrainerSection", __base__=_LiveTrainer, __doc__="The live trainer's settings: TrainConfig less LIVE_FIXED.",
    **{name: (f.annotation, f) if name not in LIVE_FIXED else (Any, None)
       for name, f in TrainConfig.model_fields.items()})


class Topology(Strict):
    run: RunSection = Field(description="Run-wide settings.")
    hub: HubSection = Field(default_factory=HubSection, description="The hub.")
    creator: CreatorSection = Field(description="The creator (eva or static prompts).")
    solver: SolverSection = Field(description="Solvers.")
    judge: JudgeSection | None = Field(None, description="Judges (not needed for GSIL/SPIN).")
    trainer: TrainerSection = Field(description="TrainConfig fields (algo, model, lr, lora, ...), less what the live "
                                                "trainer sets itself.")

    @model_validator(mode="after")
    def _staleness_agrees(self) -> Topology:
        settings = self.creator.settings
        if "max_staleness" in settings.model_fields_set and settings.max_staleness > self.hub.max_staleness:
            raise ValueError(f"creator.settings.max_staleness = {settings.max_staleness} exceeds hub.max_staleness = "
                             f"{self.hub.max_staleness}: the hub would refuse the lagging answers")
        if self.solver.backend != "vllm":
            return self
        try:
            rank = self.trainer_config().lora.r
        except ValidationError:  # load_topology names the trainer's own error
            return self
        if rank > self.solver.max_lora_rank:
            raise ValueError(f"trainer.lora.r = {rank} exceeds solver.max_lora_rank = {self.solver.max_lora_rank}: "
                             "vLLM would refuse every adapter the trainer publishes")
        return self

    def creator_config(self) -> CreatorConfig:
        """The creator's settings with the trainer's algorithm, and the hub's staleness unless it set its own (with
        promotion: 0, as promotion needs)."""
        settings = self.creator.settings
        update: dict[str, Any] = {"algo": self.trainer.algo}
        if "max_staleness" not in settings.model_fields_set:
            update["max_staleness"] = 0 if settings.promotion else self.hub.max_staleness
        return CreatorConfig.model_validate({**settings.model_dump(), **update})  # validated: no rule bypassed

    def hub_config(self) -> HubConfig:
        return HubConfig(run_dir=self.run.dir, **self.hub.model_dump(exclude={"address"}))

    def agent_endpoints(self) -> tuple[str, str]:
        """(control, data) as agents on another machine dial them: `hub.address` at the hub's ports."""
        port = lambda endpoint: endpoint.rpartition(":")[2]  # noqa: E731
        return f"tcp://{self.hub.address}:{port(self.hub.control)}", f"tcp://{self.hub.address}:{port(self.hub.data)}"

    def trainer_config(self) -> TrainConfig:
        return TrainConfig.model_validate({**self.trainer.model_dump(exclude_unset=True), "data": "-",
                                           "out": str(Path(self.run.dir) / "trainer")})


class TopologyError(ConfigError):
    """A topology problem, in one line naming the field."""


def load_topology(path: str | Path, solver_device: str | None = None) -> Topology:
    """A topology file, checked; `solver_device` stands in for its [solver] device (an attached solver's own)."""
    path = Path(path)
    try:
        data = read_config_file(path)
    except ConfigError as e:
        raise TopologyError(str(e)) from None
    if solver_device is not None and isinstance(data.get("solver"), dict):
        data["solver"]["device"] = solver_device
    try:
        topology = Topology.model_validate(data)
    except ValidationError as e:
        raise TopologyError(format_validation_error(e, path)) from None
    try:
        topology.trainer_config()  # validate the trainer section as its process will, now
    except ValidationError as e:
        raise TopologyError(format_validation_error(e, path, section="trainer")) from None
    hooks = [("creator.mutator", topology.creator.mutator),
             ("judge.checker", topology.judge.checker if topology.judge else None)]
    hooks += [(f"judge.rewards[{i}].checker", r.checker) for i, r in enumerate(topology.judge.rewards if topology.judge else [])]
    for field, spec in hooks:
        if spec is not None:
            try:
                load_object(spec)
            except ValueError as e:
                raise TopologyError(f"{path}: {field}: {e}") from None
    return topology


