"""The codec: tensors round-trip bit-exactly; every malformed input raises ProtocolError, nothing else."""

import contextlib

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import ProtocolError, decode, encode
from protocol.constants import DEFAULT_LIMITS, SIGNATURE, SIGNATURE_PREFIX, Limits
from protocol.messages import Error, Heartbeat, PolicyUpdate, Ready, Renew
from tests.protocol.examples import EXAMPLES

UPDATE = PolicyUpdate(version=1, parent_version=0, base_model="tiny")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]
SHAPES = [(), (0,), (3, 0), (7,), (4, 5), (2, 3, 4)]


def _random(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_bit_exact(sent: torch.Tensor, got: torch.Tensor):
    assert got.dtype == sent.dtype and got.shape == sent.shape
    assert _bits(got) == _bits(sent)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensors_round_trip_bit_exactly(dtype, shape):
    sent = _random(shape, dtype)
    env = decode(encode(UPDATE, sender="t", tensors={"w": sent}))
    _assert_bit_exact(sent, env.tensors["w"])


def test_special_float_values_round_trip_bit_exactly():
    sent = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45], dtype=torch.float32)
    _assert_bit_exact(sent, decode(encode(UPDATE, sender="t", tensors={"w": sent})).tensors["w"])


def test_non_contiguous_tensors_round_trip():
    base = _random((6, 8), torch.bfloat16)
    views = {"transposed": base.t(), "strided": base[::2, 1::3], "expanded": torch.ones(3).expand(4, 3)}
    assert not any(v.is_contiguous() for v in views.values())
    env = decode(encode(UPDATE, sender="t", tensors=views))
    for name, sent in views.items():
        _assert_bit_exact(sent, env.tensors[name])
    assert list(env.tensors) == list(views)  # order kept


def test_contiguous_tensor_is_sent_without_copy():
    sent = torch.arange(1000, dtype=torch.float32)
    frames = encode(UPDATE, sender="t", tensors={"w": sent})
    assert isinstance(frames[3], memoryview)
    sent[0] = 42.0  # the frame aliases the tensor's memory
    assert decode(frames).tensors["w"][0].item() == 42.0


@given(shape=st.lists(st.integers(0, 5), max_size=4), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 1000))
def test_random_shapes_round_trip(shape, dtype, seed):
    sent = _random(tuple(shape), dtype, seed)
    _assert_bit_exact(sent, decode(encode(UPDATE, sender="t", tensors={"w": sent})).tensors["w"])


def _code(frames, limits=DEFAULT_LIMITS):
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    assert Error(code=info.value.code, detail=info.value.detail) == info.value.to_message()
    return info.value.code


def _frames(message=None, **kw):
    """Encoded frames as bytes, with a fixed msg_id so hypothesis sees the same lengths every run."""
    return [bytes(f) for f in encode(message or Heartbeat(), sender="t", msg_id="m1", **kw)]


def test_wrong_protocol_version():
    frames = _frames()
    frames[0] = SIGNATURE_PREFIX + bytes([SIGNATURE[-1] + 1])
    assert _code(frames) == "version_mismatch"


@pytest.mark.parametrize("sig", [b"", b"SPLAY", b"HTTP/1.1", b"SPLAY\x01\x00", b"\x00" * 6])
def test_wrong_signature(sig):
    frames = _frames()
    frames[0] = sig
    assert _code(frames) == "bad_signature"


def test_too_few_and_too_many_frames():
    assert _code(_frames()[:2]) == "too_few_frames"
    frames = _frames(UPDATE, tensors={f"t{i}": torch.zeros(1) for i in range(10)})
    assert _code(frames, Limits(max_frames=12)) == "too_many_frames"
    decode(frames, Limits(max_frames=13))  # exactly at the limit is fine


@pytest.mark.parametrize("limits", [Limits(max_header_bytes=50), Limits(max_body_bytes=10),
                                    Limits(max_frame_bytes=100), Limits(max_total_bytes=200)], ids=str)
def test_oversized_parts(limits):
    frames = _frames(UPDATE.model_copy(update={"base_model": "x" * 20}), tensors={"w": torch.zeros(64)})
    assert _code(frames, limits) == "oversized"


def test_unknown_kind():
    frames = _frames()
    header = msgpack.unpackb(frames[1])
    header[0] = "teleport"  # header = [kind, msg_id, sender, task_id, attempt, reply_to, tensors]
    frames[1] = msgpack.packb(header)
    assert _code(frames) == "unknown_kind"


def test_invalid_body_and_header():
    frames = _frames(Renew(task_id="t", attempt=1))
    frames[2] = msgpack.packb({"unexpected": True})
    assert _code(frames) == "invalid_message"
    frames = _frames()
    frames[2] = msgpack.packb([1, 2, 3])
    assert _code(frames) == "invalid_message"
    for bad_header in (["heartbeat"], {"kind": "heartbeat"}, ["heartbeat", 1, "s", None, None, None, []],
                       ["heartbeat", "id", "s", None, 0, None, []], ["heartbeat", "id", "s", None, None, None, {}]):
        frames = _frames()
        frames[1] = msgpack.packb(bad_header)
        assert _code(frames) == "invalid_message", bad_header
    frames = _frames()
    frames[2] = msgpack.packb({1: 2})  # non-string keys
    assert _code(frames) == "bad_msgpack"


@pytest.mark.parametrize("depth", [40, 5_000])
def test_deep_nesting_in_free_form_json(depth):
    frames = _frames(UPDATE)
    if depth < 500:
        nested: object = 0
        for _ in range(depth):
            nested = [nested]
        body = msgpack.unpackb(frames[2])
        body["adapter_config"] = {"deep": nested}
        frames[2] = msgpack.packb(body)
    else:  # msgpack-python refuses to *pack* this deep; write the bytes by hand (fixarray of one)
        frames[2] = b"\x81\xaeadapter_config" + b"\x91" * depth + b"\x00"
    assert _code(frames) == "too_deep"


@pytest.mark.parametrize("depth", [40, 5_000])
def test_deep_nesting_in_fixed_fields_and_header(depth):
    """Fixed schemas reject deep input at the first level that does not fit: still a typed error."""
    deep = b"\x91" * depth + b"\x00"
    frames = _frames(Ready(role="solver", name="s"))
    frames[2] = b"\x81\xaatask_kinds" + deep
    assert _code(frames) in {"invalid_message", "too_deep"}
    frames = _frames()
    frames[1] = b"\x97" + deep + b"\xc0" * 6  # a 7-field header array whose first field nests
    assert _code(frames) in {"invalid_message", "too_deep"}


def test_tensor_frames_that_do_not_match_the_header():
    frames = _frames(UPDATE, tensors={"w": torch.zeros(4)})
    assert _code(frames[:3]) == "bad_tensor"  # header lists a tensor, no frame
    assert _code([*frames, b"extra"]) == "bad_tensor"  # a frame the header does not list
    short = [*frames[:3], frames[3][:-1]]
    assert _code(short) == "bad_tensor"
    header = msgpack.unpackb(frames[1])
    for bad in ({"name": "w", "dtype": "complex64", "shape": [4]}, {"name": "w", "dtype": "float32", "shape": [-4]},
                {"name": "w", "dtype": "float32"}, ["w", "float32", [4]]):
        header[-1] = [bad]
        assert _code([frames[0], msgpack.packb(header), *frames[2:]]) == "bad_tensor"
    header[-1] = [{"name": "w", "dtype": "float32", "shape": [2]}] * 2
    assert _code([frames[0], msgpack.packb(header), frames[2], b"\0" * 8, b"\0" * 8]) == "bad_tensor"


def test_unsendable_dtype_is_a_protocol_error():
    with pytest.raises(ProtocolError) as info:
        encode(UPDATE, sender="t", tensors={"w": torch.zeros(2, dtype=torch.complex64)})
    assert info.value.code == "bad_tensor"


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_raise_only_protocol_errors(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


@settings(max_examples=300)
@given(index=st.integers(0, len(EXAMPLES) - 1), part=st.sampled_from([1, 2]), data=st.data())
def test_truncated_msgpack(index, part, data):
    frames = _frames(EXAMPLES[index])
    cut = data.draw(st.integers(0, len(frames[part]) - 1))
    frames[part] = frames[part][:cut]
    assert _code(frames) == "bad_msgpack"


@settings(max_examples=500)
@given(index=st.integers(0, len(EXAMPLES) - 1), data=st.data())
def test_corrupted_frames_decode_or_raise_protocol_error(index, data):
    """Flip bytes anywhere: the result is a valid message or a ProtocolError, never another exception."""
    frames = _frames(EXAMPLES[index])
    part = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(frames[part])
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    frames[part] = bytes(raw)
    with contextlib.suppress(ProtocolError):
        decode(frames)
