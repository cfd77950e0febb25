"""The message models: every kind round-trips through the codec, every field documents itself."""

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue, ValidationError

from protocol import messages as m
from protocol.codec import decode, encode
from tests.protocol.examples import EXAMPLES, PROMPT, SAMPLE


def test_examples_cover_every_kind():
    assert {e.kind for e in EXAMPLES} == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda e: e.kind)
def test_every_kind_round_trips(message):
    env = decode(encode(message, sender="tester", reply_to="abc"))
    assert env.message == message
    assert type(env.message) is type(message)
    assert env.header.kind == message.kind
    assert env.header.sender == "tester" and env.header.reply_to == "abc"
    assert env.header.task_id == getattr(message, "task_id", None)
    assert env.header.attempt == getattr(message, "attempt", None)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda e: e.kind)
def test_type_adapter_validates_plain_data(message):
    assert m.MESSAGE_ADAPTER.validate_python(message.model_dump()) == message


def _all_models():
    seen, todo = set(), [cls for cls in m.__dict__.values() if isinstance(cls, type) and issubclass(cls, m.Wire)]
    while todo:
        cls = todo.pop()
        if cls not in seen and cls is not m.Wire:
            seen.add(cls)
    return seen


@pytest.mark.parametrize("cls", sorted(_all_models(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_field_says_why_it_exists(cls: type[BaseModel]):
    undocumented = [name for name, f in cls.model_fields.items() if name != "kind" and not f.description]
    assert not undocumented, f"{cls.__name__} fields without a description: {undocumented}"


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        m.MESSAGE_ADAPTER.validate_python({"kind": "heartbeat", "surprise": 1})


def test_unknown_kind_is_rejected():
    with pytest.raises(ValidationError):
        m.MESSAGE_ADAPTER.validate_python({"kind": "teleport"})


def test_constraints_hold():
    with pytest.raises(ValidationError):
        m.Ready(role="solver", name="s", capacity=0)
    with pytest.raises(ValidationError):
        m.Ready(role="wizard", name="s")
    with pytest.raises(ValidationError):
        m.Result(task_id="t", attempt=0, result=m.JudgeResult(verdicts=[]))


@pytest.mark.parametrize("build", [
    lambda: m.Verdict(sample_id="s", score=float("nan")),
    lambda: m.Verdict(sample_id="s", score=float("inf")),
    lambda: m.Verdict(sample_id="s", score=1e308),  # finite, but a run's mean of such would not be
    lambda: m.TaskQuery(task_ids=["t1", "t1"]),
    lambda: m.TrainingReport(policy_version=1, step=1, examples=1, metrics={"loss": float("nan")}),
    lambda: m.Sample(sample_id="s", prompt_id="p", text="", policy_version=0, logprobs=[float("nan")]),
    lambda: m.Sample(sample_id="s", prompt_id="p", text="", policy_version=0, logprobs=[float("inf")]),
    lambda: m.Sample(sample_id="s", prompt_id="p", text="", policy_version=2**63),
    lambda: m.LeaseRef(task_id="t", attempt=2**63),
    lambda: m.Renew(task_id="t", attempt=2**64 - 1),
    lambda: m.Prompt(prompt_id="p", text="x", difficulty=2**63),
    lambda: m.PolicyUpdate(version=2**63, parent_version=0, base_model="m"),
    lambda: m.PolicyUpdate(version=1, parent_version=0, base_model="m", adapter_config={"lora_alpha": float("nan")}),
    lambda: m.TaskFailed(task_id="t" * 129, attempt=1, reason="x"),
    lambda: m.SamplingParams(seed=2**64 - 1),
])
def test_numbers_and_sizes_that_would_break_a_receiver_are_refused(build):
    """Every number a message carries is bounded: nothing SQLite cannot store (integers past 2**63) and no NaN or
    infinity where a number is compared or stored; ids are short."""
    with pytest.raises(ValidationError):
        build()


def test_a_log_prob_may_be_minus_infinity():
    assert m.Sample(sample_id="s", prompt_id="p", text="", policy_version=0, logprobs=[float("-inf")]).logprobs


def test_every_kind_has_a_sender_rule():
    assert set(m.ALLOWED_SENDERS) == set(m.MESSAGE_TYPES)
    assert m.ALLOWED_SENDERS["policy_update"] == {"trainer", "hub"}
    assert "solver" not in m.ALLOWED_SENDERS["submit"]


_text = st.text(max_size=200)
_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
_logprobs = st.floats(max_value=0.0, allow_nan=False, width=64)  # -inf included: a token given no mass


@given(text=_text, demo=st.none() | _text, score=st.floats(-1e12, 1e12), judgment=st.none() | _text,
       logprobs=st.lists(_logprobs, max_size=20), tokens=st.lists(st.integers(0, 2**31 - 1), max_size=20))
def test_payload_values_round_trip(text, demo, score, judgment, logprobs, tokens):
    prompt = PROMPT.model_copy(update={"text": text, "demonstration": demo})
    sample = SAMPLE.model_copy(update={"text": text, "logprobs": logprobs, "token_ids": tokens})
    group = m.JudgedGroup(prompt=prompt, samples=[sample],
                          verdicts=[m.Verdict(sample_id="s1", score=score, judgment=judgment)])
    message = m.Assign(task_id="t", attempt=1, lease_s=1.0, deadline_unix_s=0.0, task=m.TrainTask(groups=[group]))
    assert decode(encode(message, sender="x")).message == message


def _has_free_form(annotation, seen=None) -> bool:
    seen = seen if seen is not None else set()
    if annotation is JsonValue:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        seen.add(annotation)
        return any(_has_free_form(f.annotation, seen) for f in annotation.model_fields.values())
    return any(_has_free_form(arg, seen) for arg in get_args(annotation))


def test_free_form_kinds_are_exactly_those_with_json_fields():
    """The codec bounds nesting only for FREEFORM_KINDS; a new JsonValue field must be added there."""
    assert {k for k, cls in m.MESSAGE_TYPES.items() if _has_free_form(cls)} == m.FREEFORM_KINDS
