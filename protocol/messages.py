"""Every message that crosses a process boundary, as pydantic v2 models in one discriminated union.

A message is a model with a `kind: Literal[...]` tag. `MESSAGE_ADAPTER` (one module-level TypeAdapter)
validates any of them from plain data; `protocol.codec` puts them on the wire. Nothing here is pickled,
and no model holds a tensor: tensors travel as raw frames beside the message (see codec).

Who sends what:
    agent -> hub    Ready, Heartbeat, Renew, Result, TaskFailed, Submit, TaskQuery, PolicyFetch,
                    PolicyUpdate (trainer), StatusQuery, Disconnect
    hub -> agent    Welcome, Heartbeat, Assign, Ack, PolicyAnnounce, PolicyUpdate, StatusReply, TaskReport,
                    Error, Disconnect

    >>> from protocol.messages import Heartbeat, MESSAGE_ADAPTER
    >>> MESSAGE_ADAPTER.validate_python({"kind": "heartbeat"})
    Heartbeat(kind='heartbeat')
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, field_validator

from protocol.constants import (
    MAX_ATTEMPT,
    MAX_COUNT,
    MAX_ID_CHARS,
    MAX_ITEMS,
    MAX_REAL,
    MAX_SMALL_INT,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
)

Role = Literal["hub", "creator", "solver", "judge", "trainer", "observer"]
AGENT_ROLES: tuple[Role, ...] = ("creator", "solver", "judge", "trainer", "observer")
TaskKind = Literal["generate", "judge", "train", "create"]
ErrorCode = Literal[
    "bad_signature", "version_mismatch", "too_few_frames", "too_many_frames", "oversized",
    "bad_msgpack", "too_deep", "unknown_kind", "invalid_message", "bad_tensor",
    "forbidden", "not_ready", "unknown_task", "stale_attempt", "internal", "in_use",
]


class Wire(BaseModel):
    """Base of every wire model: unknown fields are errors, instances are immutable values, and no float is
    NaN or infinite (a NaN score would pass every comparison as false and break a NOT NULL column)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Bounded field types (limits in protocol/constants.py): every number, string and list of every message is
# checked on receipt, so a well-formed message from an allowed key cannot overflow the ledger's integers or
# grow without bound.
Id = Annotated[str, Field(max_length=MAX_ID_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Version = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Attempt = Annotated[int, Field(ge=1, le=MAX_ATTEMPT)]
SmallInt = Annotated[int, Field(ge=-MAX_SMALL_INT, le=MAX_SMALL_INT)]
TokenId = Annotated[int, Field(ge=0, le=MAX_SMALL_INT)]
Real = Annotated[float, Field(ge=-MAX_REAL, le=MAX_REAL)]  # a score or metric SQL may sum over a whole run
Metrics = Annotated[dict[Id, Real], Field(max_length=1024)]
# A log-prob may be -inf (a token the policy gives no mass); never NaN or +inf. (Not `le=0`: rounding may leave
# a log-prob a hair above zero.)
LogProb = Annotated[float, Field(allow_inf_nan=True, le=1.0)]


# ---------------------------------------------------------------------------------------------------
# Domain values carried inside messages
# ---------------------------------------------------------------------------------------------------

class ChatTurn(Wire):
    role: Literal["system", "user", "assistant"] = Field(description="Speaker, as in chat templates.")
    content: Text = Field(description="The turn's text.")


class Prompt(Wire):
    prompt_id: Id = Field(description="Stable id in the ledger; samples and verdicts refer to it.")
    text: Text = Field(description="The instruction as plain text (used when `messages` is empty).")
    messages: list[ChatTurn] = Field(default_factory=list, max_length=1024,
                                     description="Conversational form, rendered with the model's chat template.")
    demonstration: Text | None = Field(None, description="A reference answer y_real (GSIL/SPIN/SFT).")
    answer: Text | None = Field(None, description="Ground truth a programmatic verifier checks against.")
    source: Literal["seed", "evolved", "eval", "validation"] = Field(
        "seed", description="Seed set, evolved by the creator (eva), held-out evaluation (the reported test set), or "
                            "validation (what the creator selects versions on); neither of the last two is trained on.")
    parent_id: Id | None = Field(None, description="Prompt this one was evolved from (lineage).")
    mutation: Id | None = Field(None, description="eva mutation that produced it, e.g. 'deepen'.")
    difficulty: SmallInt | None = Field(None, description="Task-world difficulty level, for per-level reports.")


class SamplingParams(Wire):
    n: int = Field(6, ge=1, le=4096, description="Responses per prompt (eva: 6).")
    temperature: float = Field(0.7, ge=0.0, le=1000.0, description="Softmax temperature; 0 means greedy.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, le=MAX_ITEMS, description="Generation length cap.")
    seed: Count | None = Field(None, description="Sampling seed for reproducible runs.")


class Sample(Wire):
    sample_id: Id = Field(description="Unique id; judges and the trainer refer to it (solvers: TASK_ID.ATTEMPT.I.J). "
                                      "The hub refuses a result with an id another task's sample has.")
    prompt_id: Id = Field(description="The prompt it answers.")
    text: Text = Field(description="The decoded response.")
    token_ids: list[TokenId] = Field(default_factory=list, max_length=MAX_ITEMS,
                                     description="Response token ids, as generated.")
    logprobs: list[LogProb] = Field(default_factory=list, max_length=MAX_ITEMS,
                                  description="Sampling log-prob of each response token (off-policy checks).")
    policy_version: Version = Field(description="Policy version that generated it; staleness is checked on it.")
    finish_reason: Literal["stop", "length"] = Field("stop", description="Why generation ended.")


class Verdict(Wire):
    sample_id: Id = Field(description="The sample judged.")
    score: Real = Field(description="Scalar reward (verifier grade, reward-model score or LLM-judge score); at most "
                                    "1e12 in size (a run's mean reward stays finite).")
    judgment: Text | None = Field(None, description="Written critique or praise (CUT trains on it).")


class JudgedGroup(Wire):
    prompt: Prompt = Field(description="The prompt all samples answer.")
    samples: list[Sample] = Field(max_length=MAX_ITEMS, description="The n responses.")
    verdicts: list[Verdict] = Field(max_length=MAX_ITEMS, description="One verdict per sample, same order.")


class TensorMeta(Wire):
    name: str = Field(max_length=512, description="State-dict key, e.g. a LoRA matrix's parameter name.")
    dtype: str = Field(max_length=16, description="torch dtype name without the prefix, e.g. 'bfloat16'.")
    shape: list[Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(
        max_length=8, description="Tensor shape; the frame holds prod(shape) * itemsize bytes.")


class AgentInfo(Wire):
    name: Id = Field(description="Agent name (unique per run).")
    role: Role = Field(description="Its role.")
    capacity: Count = Field(description="Tasks it may hold at once (credit).")
    in_flight: Count = Field(description="Tasks it holds now.")
    last_seen_s: float = Field(description="Seconds since its last message.")
    policy_version: Version | None = Field(None, description="Policy version it runs (solvers).")


class LeaseRef(Wire):
    task_id: Id = Field(description="A task the agent leased.")
    attempt: Attempt = Field(description="The attempt it leased.")


class QueueStats(Wire):
    queued: Count = Field(0, description="Waiting for an agent.")
    leased: Count = Field(0, description="Held by an agent under a lease.")
    done: Count = Field(0, description="Finished.")
    dead: Count = Field(0, description="Given up after the maximum number of attempts.")


# ---------------------------------------------------------------------------------------------------
# Task payloads (inside Assign / Submit) and their results (inside Result)
# ---------------------------------------------------------------------------------------------------

class GenerateTask(Wire):
    kind: Literal["generate_task"] = "generate_task"
    prompts: list[Prompt] = Field(max_length=MAX_ITEMS, description="Prompts to answer.")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="How to sample.")
    purpose: Literal["train", "evolve", "eval"] = Field(
        "train", description="What the answers are for; 'evolve' prompts are eva meta-prompts.")
    min_policy_version: Version = Field(0, description="Solver must hold at least this version.")


class JudgeTask(Wire):
    kind: Literal["judge_task"] = "judge_task"
    groups: list[JudgedGroup] = Field(max_length=MAX_ITEMS, description="Groups to judge; incoming verdict lists are empty.")
    want_judgment: bool = Field(False, description="Also write a critique per sample (for CUT).")


class TrainTask(Wire):
    kind: Literal["train_task"] = "train_task"
    groups: list[JudgedGroup] = Field(max_length=MAX_ITEMS,
                                      description="Judged groups to build this algorithm's examples from.")
    round: Count = Field(0, description="Creator round the groups belong to.")
    best: Version | None = Field(None, description="The best version validated so far (promotion): the trainer "
                                                   "keeps its checkpoint, so that a later `restore` can resume "
                                                   "from it.")
    restore: Version | None = Field(None, description="Resume from this version's adapter and optimizer first (a "
                                                      "rollback: the newest version was rejected on validation); "
                                                      "with no groups the restored policy is published as the next "
                                                      "version.")


class CreateTask(Wire):
    kind: Literal["create_task"] = "create_task"
    groups: list[JudgedGroup] = Field(max_length=MAX_ITEMS,
                                      description="Judged groups the creator estimates informativeness on.")
    round: Count = Field(0, description="Round these groups close.")


class GenerateResult(Wire):
    kind: Literal["generate_result"] = "generate_result"
    samples: list[Sample] = Field(max_length=MAX_ITEMS, description="n samples per prompt, grouped by prompt in task order.")


class JudgeResult(Wire):
    kind: Literal["judge_result"] = "judge_result"
    verdicts: list[Verdict] = Field(max_length=MAX_ITEMS, description="One verdict per judged sample.")


class TrainingReport(Wire):
    kind: Literal["training_report"] = "training_report"
    policy_version: Version = Field(description="Version produced by this training step(s).")
    step: Count = Field(description="Optimizer steps taken so far.")
    examples: Count = Field(description="Training examples consumed by this report.")
    tokens_per_s: float = Field(0.0, ge=0.0, description="Training throughput.")
    metrics: Metrics = Field(default_factory=dict, description="Loss terms, rewards, margins, KL proxy (finite).")


class CreateResult(Wire):
    kind: Literal["create_result"] = "create_result"
    prompts: list[Prompt] = Field(max_length=MAX_ITEMS, description="New (evolved) prompts for the next round.")
    round: Count = Field(0, description="Round they open.")


TaskPayload = Annotated[Union[GenerateTask, JudgeTask, TrainTask, CreateTask], Field(discriminator="kind")]
ResultPayload = Annotated[Union[GenerateResult, JudgeResult, TrainingReport, CreateResult],
                          Field(discriminator="kind")]
TASK_KIND_OF: dict[str, TaskKind] = {
    "generate_task": "generate", "judge_task": "judge", "train_task": "train", "create_task": "create"}


# ---------------------------------------------------------------------------------------------------
# Messages (the union)
# ---------------------------------------------------------------------------------------------------

class Ready(Wire):
    kind: Literal["ready"] = "ready"
    role: Role = Field(description="Claimed role; the hub checks it against the role bound to the CURVE key.")
    name: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="Agent name, unique per run (logs, ledger).")
    capacity: int = Field(1, ge=1, le=1024, description="Tasks it may hold at once (credit-based flow control).")
    protocol_version: str = Field(PROTOCOL_VERSION, max_length=32, description="Sender's full protocol version.")
    task_kinds: list[TaskKind] = Field(default_factory=list, max_length=4, description=(
        "Queues it leases from; only those of its role (ROLE_TASK_KINDS), or the hub refuses it."))
    policy_version: Version | None = Field(None, description="Policy version it already holds, if any.")
    holding: list[LeaseRef] = Field(default_factory=list, max_length=1024, description=(
        "Leases whose results wait in its outbox (a reconnect): the hub hands them back instead of "
        "re-dispatching, so the replayed results still count."))


class Welcome(Wire):
    kind: Literal["welcome"] = "welcome"
    hub_id: Id = Field(description="Hub incarnation; changes on restart so agents replay their outboxes.")
    protocol_version: str = Field(PROTOCOL_VERSION, max_length=32, description="Hub's protocol version.")
    heartbeat_interval_s: float = Field(gt=0, le=3600, description="Interval the agent must heartbeat at.")
    policy_version: Version = Field(0, description="Newest policy version; a solver fetches it if behind.")


class Heartbeat(Wire):
    kind: Literal["heartbeat"] = "heartbeat"


class Disconnect(Wire):
    kind: Literal["disconnect"] = "disconnect"
    reason: str = Field("", max_length=4096, description="Why (shutdown, protocol error), for the other side's log.")


class Error(Wire):
    kind: Literal["error"] = "error"
    code: ErrorCode = Field(description="Machine-readable cause.")
    detail: str = Field("", max_length=4096, description="Human-readable cause.")


class Assign(Wire):
    kind: Literal["assign"] = "assign"
    task_id: Id = Field(description="Task id in the ledger (also carried in the header).")
    attempt: Attempt = Field(description="Attempt number; results of older attempts are ignored.")
    lease_s: float = Field(gt=0, le=1e7, description="Lease length; renew before it runs out.")
    deadline_unix_s: float = Field(description="Hub's wall-clock deadline of this lease, for logs.")
    task: TaskPayload = Field(description="The work.")


class Renew(Wire):
    kind: Literal["renew"] = "renew"
    task_id: Id = Field(description="Task whose lease to extend.")
    attempt: Attempt = Field(description="Attempt it holds; a stale attempt is refused.")


class Result(Wire):
    kind: Literal["result"] = "result"
    task_id: Id = Field(description="Task it finishes.")
    attempt: Attempt = Field(description="Attempt it finishes; (task_id, attempt) makes results idempotent.")
    result: ResultPayload = Field(description="The output.")


class TaskFailed(Wire):
    kind: Literal["task_failed"] = "task_failed"
    task_id: Id = Field(description="Task the agent gives up on.")
    attempt: Attempt = Field(description="Attempt it gives up on.")
    reason: str = Field(max_length=4096, description="Why; kept in the ledger when the task goes DEAD.")
    retryable: bool = Field(True, description="False: no other agent can do better (bad input); go DEAD now.")


class Submit(Wire):
    kind: Literal["submit"] = "submit"
    tasks: list[TaskPayload] = Field(min_length=1, max_length=MAX_ITEMS, description="Tasks to queue (the creator's requests).")
    key: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                            description="Idempotency key: a Submit sent again with the same key (its reply was lost, or "
                                        "its sender restarted) gets the first one's task ids back and queues nothing.")


class Ack(Wire):
    kind: Literal["ack"] = "ack"
    task_id: Id | None = Field(None, description="Task acknowledged (results, renewals).")
    attempt: Attempt | None = Field(None, description="Attempt acknowledged.")
    status: Literal["accepted", "duplicate", "stale", "renewed", "queued"] = Field(
        description="accepted: persisted; duplicate/stale: already had it or superseded, drop it from the outbox.")
    task_ids: list[Id] = Field(default_factory=list, max_length=MAX_ITEMS, description="Ids given to submitted tasks.")
    deadline_unix_s: float | None = Field(None, description="New lease deadline after a renewal.")


class PolicyAnnounce(Wire):
    kind: Literal["policy_announce"] = "policy_announce"
    version: int = Field(ge=1, le=MAX_COUNT, description="New policy version, fetched over the data socket.")
    num_bytes: Count = Field(description="Size of its tensors, for the solver's memory planning.")


class PolicyFetch(Wire):
    kind: Literal["policy_fetch"] = "policy_fetch"
    version: Version = Field(description="Version wanted; 0 means the newest.")
    follow: bool = Field(False, description="Also push every version published from now on (1.3), so the solver "
                                            "has it before a task asks for it; with none published yet the reply "
                                            "is an ack.")


class PolicyUpdate(Wire):
    kind: Literal["policy_update"] = "policy_update"
    version: int = Field(ge=1, le=MAX_COUNT, description="Version these tensors are.")
    parent_version: Version = Field(description="Version it was trained from.")
    base_model: str = Field(max_length=4096, description="Base model path or id the adapter applies to.")
    adapter_config: dict[Id, JsonValue] = Field(default_factory=dict, max_length=256,
                                                description="peft adapter config (rank, alpha, targets).")


class TaskQuery(Wire):
    kind: Literal["task_query"] = "task_query"
    task_ids: list[Id] = Field(min_length=1, max_length=1024,
                               description="Tasks whose state (and result) to report; each at most once.")
    wait_s: float = Field(0.0, ge=0, le=60, description="Long polling: the hub holds the reply until every listed task "
                                                        "is done or dead, or this long (0: at once); so a waiter "
                                                        "learns at once, without polling.")
    wait_for: Literal["all", "any"] = Field("all", description="With `wait_s`: hold the reply until every listed "
                                            "task is finished (all), or until one is (any: a creator that "
                                            "queries the tasks it still waits on hands each result on at once, "
                                            "e.g. judges one generation task while others still run). 1.2.")


    @field_validator("task_ids")
    @classmethod
    def _each_once(cls, task_ids: list[str]) -> list[str]:
        if len(set(task_ids)) != len(task_ids):  # the same big result a thousand times is one reply's worth of memory
            raise ValueError("a task id is listed twice")
        return task_ids


class TaskInfo(Wire):
    task_id: Id = Field(description="The task.")
    state: Literal["queued", "leased", "done", "dead", "unknown"] = Field(description="Where it is in its life.")
    attempt: int = Field(0, ge=0, le=MAX_ATTEMPT, description="Leases it has had.")
    reason: str | None = Field(None, max_length=4096, description="Why it is DEAD (or was last requeued).")
    result: ResultPayload | None = Field(None, description="Its result, once DONE; None also when the reply had no "
                                                            "room left for it (ask again for that task).")


class TaskReport(Wire):
    kind: Literal["task_report"] = "task_report"
    tasks: list[TaskInfo] = Field(max_length=1024, description="One entry per queried task, in query order.")


class StatusQuery(Wire):
    kind: Literal["status_query"] = "status_query"


class StatusReply(Wire):
    kind: Literal["status_reply"] = "status_reply"
    hub_id: Id = Field(description="Hub incarnation.")
    policy_version: Version = Field(description="Newest policy version.")
    agents: list[AgentInfo] = Field(default_factory=list, max_length=MAX_ITEMS, description="Live agents.")
    queues: dict[Id, QueueStats] = Field(default_factory=dict, max_length=64, description="Per task kind.")
    metrics: dict[Id, float] = Field(default_factory=dict, max_length=MAX_ITEMS,
                                     description="Latest throughput, reward and eval figures.")


Message = Annotated[
    Union[Ready, Welcome, Heartbeat, Disconnect, Error, Assign, Renew, Result, TaskFailed, Submit, Ack,
          PolicyAnnounce, PolicyFetch, PolicyUpdate, TaskQuery, TaskReport, StatusQuery, StatusReply],
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
MESSAGE_TYPES: dict[str, type[Wire]] = {
    cls.model_fields["kind"].default: cls for cls in get_args(get_args(Message)[0])}

# Kinds with a free-form JSON field: the codec bounds their nesting depth. Every other field has a fixed
# schema, which validation rejects at the first level that does not fit, however deep the input goes.
FREEFORM_KINDS = frozenset({"policy_update"})

_AGENTS = frozenset(AGENT_ROLES)
_WORKERS = frozenset({"creator", "solver", "judge", "trainer"})
# Which role may send which kind. The hub enforces it against the role bound to the sender's key, so a
# stolen solver key cannot publish weights or submit tasks.
ALLOWED_SENDERS: dict[str, frozenset[str]] = {
    "ready": _AGENTS, "heartbeat": _AGENTS | {"hub"}, "disconnect": _AGENTS | {"hub"},
    "error": _AGENTS | {"hub"}, "renew": _WORKERS, "result": _WORKERS, "task_failed": _WORKERS,
    "submit": frozenset({"creator"}), "policy_fetch": _AGENTS,
    "policy_update": frozenset({"trainer", "hub"}), "status_query": _AGENTS,
    "task_query": frozenset({"creator", "observer", "trainer"}), "task_report": frozenset({"hub"}),
    "welcome": frozenset({"hub"}), "assign": frozenset({"hub"}), "ack": frozenset({"hub"}),
    "policy_announce": frozenset({"hub"}), "status_reply": frozenset({"hub"}),
}
assert ALLOWED_SENDERS.keys() == MESSAGE_TYPES.keys(), "every kind needs a sender rule"

# Which queues each role may lease from: the hub refuses a Ready asking for others, so a judge's key cannot
# take (and answer) generation or training work, nor an observer's any.
ROLE_TASK_KINDS: dict[str, frozenset[str]] = {
    "creator": frozenset({"create"}), "solver": frozenset({"generate"}), "judge": frozenset({"judge"}),
    "trainer": frozenset({"train"}), "observer": frozenset()}
# The result kind that finishes each task kind: a task is completed only by its own kind of result.
RESULT_KIND_OF: dict[str, str] = {
    "generate": "generate_result", "judge": "judge_result", "train": "training_report", "create": "create_result"}
