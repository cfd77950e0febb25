"""Who may send what to the hub: pure checks on a decoded message and its sender, before any handler runs.

    refused = sender_refusal("renew", "control", name="solver-1", bound="solver-1:solver", allowed=keys,
                             role_of_agent="solver")          # None, or (error code, detail) to answer with
    refused = ready_refusal(ready, name="solver-1", bound="solver-1:solver")

Over tcp the sender *is* its CURVE key (`bound`, ZAP's User-Id "name:role"): the name in its routing id must be
the key's, and its role is the key's, whatever a READY claims. Over ipc (the private 0700 run directory) the
READY's name and role are taken as they are. What a holder of a lease may do with it is the ledger's check.
"""

from __future__ import annotations

from protocol.messages import ALLOWED_SENDERS, ROLE_TASK_KINDS, ErrorCode, Ready

Refusal = tuple[ErrorCode, str] | None
DATA_KINDS = frozenset({"policy_fetch", "policy_update"})  # what the data socket takes: weight sync only
UNREGISTERED = frozenset({"ready", "status_query"})  # what a sender may do before its READY


def sender_refusal(kind: str, channel: str, *, name: str, bound: str | None, allowed: set[str] | None,
                   role_of_agent: str | None, claimed_role: str | None = None) -> Refusal:
    """Why a message of `kind` from the connection named `name` may not be handled, or None if it may.
    `role_of_agent`: the role of the agent that connection belongs to (None: not registered yet);
    `claimed_role`: a READY's role; `allowed`: the allow-list's "name:role" entries (None: not read yet)."""
    if channel == "data" and kind not in DATA_KINDS:
        return "invalid_message", f"the data socket does not take {kind}"
    if bound is not None:
        if allowed is not None and bound not in allowed:  # revoked since it connected
            return "forbidden", f"the key of {bound} was revoked"
        if name != bound.partition(":")[0]:
            return "forbidden", f"the key of {bound} cannot speak as {name[:64]!r}"
    if kind not in UNREGISTERED and role_of_agent is None:
        return "not_ready", f"{kind} before ready"
    role = bound.partition(":")[2] if bound is not None else role_of_agent or claimed_role or "observer"
    if role not in ALLOWED_SENDERS[kind]:
        return "forbidden", f"a {role} may not send {kind}"
    return None


def ready_refusal(ready: Ready, *, name: str, bound: str | None) -> Refusal:
    """Why a READY may not register its sender: another name or role than its key's, another name than its
    connection's, or queues its role may not lease."""
    if bound is not None and bound != f"{ready.name}:{ready.role}":
        return "forbidden", f"key is bound to {bound}, not {ready.name}:{ready.role}"
    if name != ready.name:
        return "forbidden", f"a connection named {name[:64]!r} says it is {ready.name!r}"
    if not set(ready.task_kinds) <= ROLE_TASK_KINDS[ready.role]:
        return "forbidden", f"a {ready.role} may not take {', '.join(ready.task_kinds)} tasks"
    return None
