"""Protocol constants: versions, framing, size limits and timing, in one small file (zguide's MDP style).

Every number here has its unit in its name and the reason beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Major version goes on the wire in the signature frame: a peer with another major version is refused
# before anything else is decoded. Minor versions only add optional fields: a receiver of a newer minor
# version fills in the defaults, but messages are strict (extra fields refused), so a receiver of an older
# one refuses a message carrying a field it does not know. Upgrade the hub before the agents.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 5  # 1.1: Submit.key (idempotent submits), TaskQuery.wait_s (long polling); 1.2: TaskQuery.wait_for;
# 1.3: PolicyFetch.follow (adapters pushed to solvers); 1.4: every number and size bounded (no new fields);
# 1.5: TrainTask.best and .restore (promotion and rollback), Prompt.source "validation"
PROTOCOL_VERSION = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"

# First frame of every message: a fixed prefix and the major version byte. Six bytes are cheap to check
# and let us reject stray traffic (a port scanner, another protocol) without touching msgpack.
SIGNATURE_PREFIX = b"SPLAY"
SIGNATURE = SIGNATURE_PREFIX + bytes([PROTOCOL_MAJOR])

# ZAP domain the hub's CURVE sockets authenticate in; with ZAP_ENFORCE_DOMAIN a missing handler refuses.
ZAP_DOMAIN = "selfplay"

# Liveness (Paranoid Pirate): both sides send a heartbeat every interval; a peer silent for
# HEARTBEAT_LIVENESS intervals is dead. 1 s x 5 = 5 s: long enough to ride out a GC pause or a loaded
# laptop, short enough that a dead solver's leases go back to the queue within seconds.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 5

# ZMTP-level heartbeats (libzmq PING/PONG) detect dead TCP connections underneath our own heartbeats,
# so a half-open connection is torn down and reconnected even when the application is idle.
ZMTP_HEARTBEAT_IVL_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 5_000

# Pending outgoing messages are dropped on close after this long, so a process stops promptly even
# when its peer is gone; durable state is in the ledger and the outbox, not in socket buffers.
LINGER_MS = 1_000

# High-water marks: control messages are small and many, data messages are adapter tensors and few.
# Bounded queues keep memory bounded when a peer is slow; ROUTER_MANDATORY turns "peer gone or full"
# into an error the sender sees instead of a silent drop.
CONTROL_HWM = 10_000
DATA_HWM = 8

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Bounds on every number and size a message carries (protocol/messages.py), so that a well-formed message
# from an allowed key cannot break its receiver. SQLite stores INTEGER as signed 64 bits and raises
# OverflowError on a larger one, while msgpack carries integers up to 2**64 - 1; counts and versions stay
# below 2**53, exact as a float and in JSON too. Floats must be finite everywhere (Wire's allow_inf_nan).
MAX_COUNT = 2**53 - 1  # versions, steps, examples, byte counts, queue depths
MAX_ATTEMPT = 1_000_000  # lease attempts (a task gets max_attempts of them, a small number)
MAX_SMALL_INT = 2**31 - 1  # token ids, difficulty levels, ranks
MAX_ID_CHARS = 128  # task, prompt and sample ids, agent names, metric names
MAX_TEXT_CHARS = 4 * MiB  # one prompt, answer or judgment; a control message is at most 16 MiB in all
MAX_ITEMS = 1 << 17  # entries of one list: prompts of a task, samples of a result, tokens of a sample
MAX_REAL = 1e12  # |a score| or |a metric|: the ledger's averages over a whole run's verdicts stay finite


@dataclass(frozen=True)
class Limits:
    """Size limits checked before anything is decoded.

    Defaults fit a LoRA adapter of a 70B model (a few hundred tensors, hundreds of MiB) on the data
    socket; a control socket can use tighter ones. `max_frame_bytes` is also set as the socket's
    MAXMSGSIZE (libzmq applies it to each frame), so an oversized frame never reaches Python.
    """

    max_frames: int = 2_048
    max_header_bytes: int = 512 * KiB
    max_body_bytes: int = 32 * MiB
    max_frame_bytes: int = 2 * GiB
    max_total_bytes: int = 4 * GiB
    max_depth: int = 32  # nesting of maps/arrays in a header or body; our schemas need fewer than 8


DEFAULT_LIMITS = Limits()
CONTROL_LIMITS = Limits(max_frames=8, max_header_bytes=64 * KiB, max_body_bytes=16 * MiB,
                        max_frame_bytes=16 * MiB, max_total_bytes=32 * MiB)
