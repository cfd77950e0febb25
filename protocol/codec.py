"""Messages to frames and back: signature, msgpack header, msgpack body, raw tensor frames.

    frames = encode(Heartbeat(), sender="solver-0")             # list of bytes / memoryview
    socket.send_multipart(frames, copy=False)
    env = decode(socket.recv_multipart(copy=False))             # Envelope(header, message, tensors)

Wire layout (vLLM v1 style: metadata in msgpack, tensors as raw buffers beside it):

    [0] signature   b"SPLAY" + major version byte
    [1] header      msgpack array: kind, msg_id, sender, task_id, attempt, reply_to, tensors=[{name, dtype, shape}]
    [2] body        msgpack map: the message's fields except kind/task_id/attempt (those live in the header)
    [3:] tensors    raw bytes, C order, one frame per tensor (sent zero-copy, received with frombuffer)

Every size is checked against `Limits` *before* msgpack sees a byte, and every failure raises
`ProtocolError` whose `code` a receiver puts in an `Error` reply. Pickle is never used.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union, get_args, get_origin

import msgpack
from pydantic import ValidationError

from protocol.constants import DEFAULT_LIMITS, SIGNATURE, SIGNATURE_PREFIX, Limits
from protocol.messages import (
    FREEFORM_KINDS,
    MESSAGE_ADAPTER,
    MESSAGE_TYPES,
    Error,
    ErrorCode,
    TensorMeta,
    Wire,
)

if TYPE_CHECKING:
    import torch

# Fields carried by the header rather than the body: routing and logging read them without the body.
_ENVELOPE_FIELDS = frozenset({"kind", "task_id", "attempt"})
_HAS_TASK = frozenset(k for k, cls in MESSAGE_TYPES.items() if "task_id" in cls.model_fields)


def _plain(annotation: Any) -> bool:
    """True for types whose values msgpack packs as they are: scalars, Literals, and unions/lists of them."""
    if annotation in (str, int, float, bool, type(None)) or isinstance(annotation, (str, int, float, bool)):
        return True  # a type, or a Literal's value
    args = get_args(annotation)
    return bool(args) and get_origin(annotation) in (list, Literal, Union, UnionType) and all(map(_plain, args))


# Kinds whose instance __dict__ is already plain data: encode skips model_dump for them.
_FLAT_KINDS = frozenset(k for k, cls in MESSAGE_TYPES.items()
                        if all(_plain(f.annotation) for f in cls.model_fields.values()))
_packer = msgpack.Packer()  # reused: building a Packer per call costs more than packing a small message


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is the `Error.code` to answer with."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail
        self.msg_id: str | None = None  # the refused message's id, once its header was read: the Error replies to it

    def to_message(self) -> Error:
        return Error(code=self.code, detail=self.detail[:4096])


class Header(NamedTuple):
    """Routing and logging fields, readable without decoding the body. On the wire: a msgpack array in
    this field order (positional, like vLLM's array_like msgspec structs: smaller and faster than a map).
    A NamedTuple because every message builds one: immutable at a fifth of a frozen dataclass's cost."""

    kind: str  # picks the model the body is validated as
    msg_id: str  # unique per message; replies name it in reply_to
    sender: str  # sender's agent name, for logs (identity is the CURVE key, not this)
    task_id: str | None = None  # task the message concerns, if any
    attempt: int | None = None  # lease attempt the message concerns, if any
    reply_to: str | None = None  # msg_id this message answers
    tensors: tuple[TensorMeta, ...] = ()  # one entry per raw frame after the body


_HEADER_FIELDS = len(Header._fields)


def _parse_header(raw: Any) -> Header:
    """Check the header array field by field: it is read for every message, so no model validation."""
    if type(raw) is not list or len(raw) != _HEADER_FIELDS:
        raise ProtocolError("invalid_message", f"header must be an array of {_HEADER_FIELDS} fields")
    kind, msg_id, sender, task_id, attempt, reply_to, tensors = raw
    if not (type(kind) is str and type(msg_id) is str and type(sender) is str and len(msg_id) <= 64
            and len(sender) <= 128 and len(kind) <= 64):
        raise ProtocolError("invalid_message", "header: kind, msg_id and sender must be short strings")
    if not ((task_id is None or (type(task_id) is str and len(task_id) <= 128))
            and (attempt is None or (type(attempt) is int and attempt >= 1))
            and (reply_to is None or (type(reply_to) is str and len(reply_to) <= 64))
            and type(tensors) is list):
        raise ProtocolError("invalid_message", "header: bad task_id, attempt, reply_to or tensors field")
    metas: tuple[TensorMeta, ...] = ()
    if tensors:
        try:
            metas = tuple(TensorMeta.model_validate(t) for t in tensors)
        except ValidationError as e:
            raise ProtocolError("bad_tensor", "header tensors: " + _short(e)) from None
    return Header(kind, msg_id, sender, task_id, attempt, reply_to, metas)


@dataclass(slots=True)
class Envelope:
    header: Header
    message: Any  # one of protocol.messages.Message; Any keeps `match` ergonomic for callers
    # Received tensors alias the frames' memory (zero-copy): clone before changing them in place.
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


_MSG_ID_PREFIX = os.urandom(4).hex()  # per process: ids stay unique across agents without a syscall each
_msg_counter = itertools.count()


def new_msg_id() -> str:
    return f"{_MSG_ID_PREFIX}{next(_msg_counter):x}"


def encode(message: Wire, *, sender: str, msg_id: str | None = None, reply_to: str | None = None,
           tensors: Mapping[str, torch.Tensor] | None = None) -> list[bytes | memoryview]:
    """Frames for `message` (+ tensors). Non-contiguous or GPU tensors are copied once; others are not."""
    metas, buffers = [], []
    if tensors:
        for name, tensor in tensors.items():
            meta, buf = _tensor_to_frame(name, tensor)
            metas.append(meta)
            buffers.append(buf)
    header = [message.kind, msg_id or new_msg_id(), sender, getattr(message, "task_id", None),
              getattr(message, "attempt", None), reply_to, metas]
    if message.kind in _FLAT_KINDS:  # scalars only: the instance dict is already plain data
        body = {k: v for k, v in message.__dict__.items() if k not in _ENVELOPE_FIELDS}
    else:
        body = message.model_dump(mode="python", exclude=_ENVELOPE_FIELDS)
    pack = _packer.pack
    return [SIGNATURE, pack(header), pack(body), *buffers]


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Validate and decode `frames` (bytes, memoryviews or zmq.Frame objects). Raises ProtocolError."""
    n = len(frames)
    if n < 3:
        raise ProtocolError("too_few_frames", f"{n} frames, need signature, header and body")
    if n > limits.max_frames:
        raise ProtocolError("too_many_frames", f"{n} frames, limit {limits.max_frames}")
    # Signature, header and body are small: take them as bytes (cheaper than a zmq.Frame's buffer).
    # Tensor frames stay memoryviews over the received memory: zero-copy.
    sig, head, raw_body = frames[0], frames[1], frames[2]
    if type(head) is not bytes:  # zmq.Frame (copy=False) or memoryview
        sig, head, raw_body = (getattr(f, "bytes", f) for f in (sig, head, raw_body))
    buffers = [memoryview(f) for f in frames[3:]] if n > 3 else []
    if len(head) > limits.max_header_bytes:
        raise ProtocolError("oversized", f"header is {len(head)} bytes, limit {limits.max_header_bytes}")
    if len(raw_body) > limits.max_body_bytes:
        raise ProtocolError("oversized", f"body is {len(raw_body)} bytes, limit {limits.max_body_bytes}")
    if buffers:
        _check_buffer_sizes(buffers, len(sig) + len(head) + len(raw_body), limits)
    if sig != SIGNATURE:
        _bad_signature(bytes(sig[: len(SIGNATURE) + 1]))

    header = _parse_header(_unpack(head, "header"))
    try:
        return _decode_body(header, raw_body, buffers, limits)
    except ProtocolError as e:
        e.msg_id = header.msg_id
        raise


def _decode_body(header: Header, raw_body: Any, buffers: list[memoryview], limits: Limits) -> Envelope:
    kind = header.kind
    if kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown_kind", f"unknown message kind {kind[:64]!r}")
    if len(header.tensors) != len(buffers):
        raise ProtocolError("bad_tensor", f"header lists {len(header.tensors)} tensors, got {len(buffers)} frames")
    body = _unpack(raw_body, "body")
    if not isinstance(body, dict):
        raise ProtocolError("invalid_message", f"body is a {type(body).__name__}, not a map")
    if kind in FREEFORM_KINDS:  # fixed schemas stop at the first wrong level; free-form JSON must be bounded
        _check_depth(body, "body", limits.max_depth)
    body["kind"] = kind
    if kind in _HAS_TASK:
        body["task_id"], body["attempt"] = header.task_id, header.attempt
    try:
        message = MESSAGE_ADAPTER.validate_python(body)
    except ValidationError as e:
        raise ProtocolError("invalid_message", _short(e)) from None
    if not buffers:
        return Envelope(header, message, {})
    tensors = {}
    for meta, view in zip(header.tensors, buffers, strict=True):
        if meta.name in tensors:
            raise ProtocolError("bad_tensor", f"tensor {meta.name[:64]!r} appears twice")
        tensors[meta.name] = _frame_to_tensor(meta, view)
    return Envelope(header, message, tensors)


def _bad_signature(sig: bytes) -> None:
    if len(sig) == len(SIGNATURE) and sig.startswith(SIGNATURE_PREFIX):
        raise ProtocolError("version_mismatch", f"peer speaks protocol major {sig[-1]}, we speak {SIGNATURE[-1]}")
    raise ProtocolError("bad_signature", f"first frame {sig[:16]!r} is not a selfplay signature")


def _check_buffer_sizes(buffers: list[memoryview], small_bytes: int, limits: Limits) -> None:
    total = small_bytes
    for i, b in enumerate(buffers):
        if b.nbytes > limits.max_frame_bytes:
            raise ProtocolError("oversized", f"tensor frame {i} is {b.nbytes} bytes, limit {limits.max_frame_bytes}")
        total += b.nbytes
    if total > limits.max_total_bytes:
        raise ProtocolError("oversized", f"{total} bytes in all, limit {limits.max_total_bytes}")


def _unpack(data: Any, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise ProtocolError("too_deep", f"{what} nests deeper than msgpack allows") from None
    except Exception as e:  # msgpack raises several unrelated types (ValueError, FormatError, ExtraData, ...)
        raise ProtocolError("bad_msgpack", f"{what}: {type(e).__name__}: {str(e)[:200]}") from None


def _check_depth(obj: Any, what: str, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` (iterative: hostile input cannot blow the Python stack)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ProtocolError("too_deep", f"{what} nests deeper than {max_depth}")
        for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def _short(e: ValidationError) -> str:
    errs = e.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in errs[:5]]
    more = f" (+{len(errs) - 5} more)" if len(errs) > 5 else ""
    return "; ".join(parts) + more


@functools.cache
def _dtypes() -> dict[str, torch.dtype]:
    import torch

    names = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]
    return {name: getattr(torch, name) for name in names}


def _tensor_to_frame(name: str, tensor: torch.Tensor) -> tuple[dict, memoryview]:
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _dtypes():
        raise ProtocolError("bad_tensor", f"tensor {name!r}: dtype {dtype} is not sendable")
    shape = list(tensor.shape)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # no copy when already contiguous on CPU
    buf = flat.view(torch.uint8).numpy().data  # memoryview over the tensor's own memory
    return {"name": name, "dtype": dtype, "shape": shape}, buf


def _frame_to_tensor(meta: TensorMeta, view: memoryview) -> torch.Tensor:
    import torch

    dtype = _dtypes().get(meta.dtype)
    if dtype is None:
        raise ProtocolError("bad_tensor", f"tensor {meta.name[:64]!r}: unknown dtype {meta.dtype[:32]!r}")
    if any(d < 0 for d in meta.shape):
        raise ProtocolError("bad_tensor", f"tensor {meta.name[:64]!r}: negative dimension in {meta.shape}")
    expected = math.prod(meta.shape) * dtype.itemsize
    if view.nbytes != expected:
        raise ProtocolError("bad_tensor", f"tensor {meta.name[:64]!r}: {view.nbytes} bytes, shape needs {expected}")
    if expected == 0:
        return torch.empty(meta.shape, dtype=dtype)
    with warnings.catch_warnings():  # frames are read-only buffers; we hand out a read-mostly alias
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(view.cast("B"), dtype=torch.uint8)
    if raw.data_ptr() % dtype.itemsize:  # unaligned frame memory: one copy beats unaligned kernels
        raw = raw.clone()
    return raw.view(dtype).reshape(meta.shape)
