"""Messages to frames and back: signature, msgpack header, msgpack body, raw tensor frames.

    frames = encode(Heartbeat(), sender="solver-0")             # list of bytes / memoryview
    socket.send_multipart(frames, copy=False)
    env = decode(socket.recv_multipart(copy=False))             # Envelope(header, message, tensors)

Wire layout (vLLM v1 style: metadata in msgpack, tensors as raw buffers beside it):

    [0] signature   b"SPLAY" + major version byte
    [1] header      msgpack map: kind, msg_id, sender, task_id, attempt, reply_to, tensors=[{name, dtype, shape}]
    [2] body        msgpack map: the message's fields except kind/task_id/attempt (those live in the header)
    [3:] tensors    raw bytes, C order, one frame per tensor (sent zero-copy, received with frombuffer)

Every size is checked against `Limits` *before* msgpack sees a byte, and every failure raises
`ProtocolError` whose `code` a receiver puts in an `Error` reply. Pickle is never used.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
from pydantic import Field, ValidationError

from protocol.constants import DEFAULT_LIMITS, SIGNATURE, SIGNATURE_PREFIX, Limits
from protocol.messages import MESSAGE_ADAPTER, MESSAGE_TYPES, Error, ErrorCode, TensorMeta, Wire

if TYPE_CHECKING:
    import torch

# Fields carried by the header rather than the body: routing and logging read them without the body.
_ENVELOPE_FIELDS = frozenset({"kind", "task_id", "attempt"})
_HAS_TASK = frozenset(k for k, cls in MESSAGE_TYPES.items() if "task_id" in cls.model_fields)


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is the `Error.code` to answer with."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail

    def to_message(self) -> Error:
        return Error(code=self.code, detail=self.detail[:4096])


class Header(Wire):
    kind: str = Field(description="Message kind; picks the model the body is validated as.")
    msg_id: str = Field(max_length=64, description="Unique per message; replies name it in reply_to.")
    sender: str = Field(max_length=128, description="Sender's agent name, for logs (identity is the CURVE key).")
    task_id: str | None = Field(None, max_length=128, description="Task the message concerns, if any.")
    attempt: int | None = Field(None, ge=1, description="Lease attempt the message concerns, if any.")
    reply_to: str | None = Field(None, max_length=64, description="msg_id this message answers.")
    tensors: list[TensorMeta] = Field(default_factory=list, description="One entry per raw frame after the body.")


@dataclass
class Envelope:
    header: Header
    message: Any  # one of protocol.messages.Message; Any keeps `match` ergonomic for callers
    # Received tensors alias the frames' memory (zero-copy): clone before changing them in place.
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def new_msg_id() -> str:
    return os.urandom(8).hex()


def encode(message: Wire, *, sender: str, msg_id: str | None = None, reply_to: str | None = None,
           tensors: Mapping[str, torch.Tensor] | None = None) -> list[bytes | memoryview]:
    """Frames for `message` (+ tensors). Non-contiguous or GPU tensors are copied once; others are not."""
    metas, buffers = [], []
    for name, tensor in (tensors or {}).items():
        meta, buf = _tensor_to_frame(name, tensor)
        metas.append(meta)
        buffers.append(buf)
    header = {
        "kind": message.kind, "msg_id": msg_id or new_msg_id(), "sender": sender,
        "task_id": getattr(message, "task_id", None), "attempt": getattr(message, "attempt", None),
        "reply_to": reply_to, "tensors": metas,
    }
    body = message.model_dump(mode="python", exclude=_ENVELOPE_FIELDS)
    return [SIGNATURE, msgpack.packb(header), msgpack.packb(body), *buffers]


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Validate and decode `frames` (bytes, memoryviews or zmq.Frame objects). Raises ProtocolError."""
    n = len(frames)
    if n < 3:
        raise ProtocolError("too_few_frames", f"{n} frames, need signature, header and body")
    if n > limits.max_frames:
        raise ProtocolError("too_many_frames", f"{n} frames, limit {limits.max_frames}")
    views = [memoryview(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > limits.max_total_bytes:
        raise ProtocolError("oversized", f"{total} bytes in all, limit {limits.max_total_bytes}")
    _check_signature(views[0])
    _check_size("header", views[1].nbytes, limits.max_header_bytes)
    _check_size("body", views[2].nbytes, limits.max_body_bytes)
    for i, v in enumerate(views[3:]):
        _check_size(f"tensor frame {i}", v.nbytes, limits.max_frame_bytes)

    header = _validate_header(_unpack(views[1], "header", limits))
    if header.kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown_kind", f"unknown message kind {header.kind[:64]!r}")
    if len(header.tensors) != n - 3:
        raise ProtocolError("bad_tensor", f"header lists {len(header.tensors)} tensors, got {n - 3} frames")
    body = _unpack(views[2], "body", limits)
    if not isinstance(body, dict):
        raise ProtocolError("invalid_message", f"body is a {type(body).__name__}, not a map")
    body["kind"] = header.kind
    if header.kind in _HAS_TASK:
        body["task_id"], body["attempt"] = header.task_id, header.attempt
    try:
        message = MESSAGE_ADAPTER.validate_python(body)
    except ValidationError as e:
        raise ProtocolError("invalid_message", _short(e)) from None
    tensors = {}
    for meta, view in zip(header.tensors, views[3:], strict=True):
        if meta.name in tensors:
            raise ProtocolError("bad_tensor", f"tensor {meta.name[:64]!r} appears twice")
        tensors[meta.name] = _frame_to_tensor(meta, view)
    return Envelope(header, message, tensors)


def _check_signature(view: memoryview) -> None:
    sig = bytes(view[: len(SIGNATURE) + 1])
    if sig == SIGNATURE:
        return
    if len(sig) == len(SIGNATURE) and sig.startswith(SIGNATURE_PREFIX):
        raise ProtocolError("version_mismatch", f"peer speaks protocol major {sig[-1]}, we speak {SIGNATURE[-1]}")
    raise ProtocolError("bad_signature", f"first frame {sig[:16]!r} is not a selfplay signature")


def _check_size(what: str, nbytes: int, limit: int) -> None:
    if nbytes > limit:
        raise ProtocolError("oversized", f"{what} is {nbytes} bytes, limit {limit}")


def _unpack(view: memoryview, what: str, limits: Limits) -> Any:
    try:
        obj = msgpack.unpackb(view, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise ProtocolError("too_deep", f"{what} nests deeper than msgpack allows") from None
    except Exception as e:  # msgpack raises several unrelated types (ValueError, FormatError, ExtraData, ...)
        raise ProtocolError("bad_msgpack", f"{what}: {type(e).__name__}: {str(e)[:200]}") from None
    _check_depth(obj, what, limits.max_depth)
    return obj


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


def _validate_header(raw: Any) -> Header:
    try:
        return Header.model_validate(raw)
    except ValidationError as e:
        raise ProtocolError("invalid_message", "header: " + _short(e)) from None


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
