"""Who may send what to the hub, case by case (agents/admission.py); the same rules against a live hub over tcp +
CURVE are in tests/reliability/test_allowed_but_hostile.py."""

import pytest

from agents.admission import ready_refusal, sender_refusal
from protocol.messages import Ready

KEYS = {"solver-0:solver", "observer-0:observer", "trainer-0:trainer"}


@pytest.mark.parametrize("kind, channel, name, bound, role_of_agent, expected", [
    ("renew", "control", "solver-0", "solver-0:solver", "solver", None),
    ("policy_fetch", "data", "solver-0", "solver-0:solver", "solver", None),
    ("status_query", "control", "observer-0", "observer-0:observer", None, None),  # no READY needed to ask
    ("status_query", "data", "solver-0", "solver-0:solver", "solver", "invalid_message"),  # weight sync only there
    ("heartbeat", "control", "solver-0", "observer-0:observer", None, "forbidden"),  # another agent's name
    ("renew", "control", "solver-9", "solver-9:solver", "solver", "forbidden"),  # a key no longer allowed
    ("renew", "control", "solver-0", "solver-0:solver", None, "not_ready"),
    ("submit", "control", "solver-0", "solver-0:solver", "solver", "forbidden"),  # a solver does not submit
    ("policy_update", "data", "solver-0", "solver-0:solver", "solver", "forbidden"),
    ("policy_update", "data", "trainer-0", "trainer-0:trainer", "trainer", None),
    ("result", "control", "observer-0", "observer-0:observer", "solver", "forbidden"),  # the key's role counts
])
def test_sender_rules(kind, channel, name, bound, role_of_agent, expected):
    refused = sender_refusal(kind, channel, name=name, bound=bound, allowed=KEYS, role_of_agent=role_of_agent)
    assert (refused[0] if refused else None) == expected, refused


def test_over_ipc_the_ready_role_is_taken_as_it_is():
    assert sender_refusal("ready", "control", name="j", bound=None, allowed=None, role_of_agent=None,
                          claimed_role="judge") is None
    assert sender_refusal("submit", "control", name="j", bound=None, allowed=None, role_of_agent="judge")[0] == "forbidden"


@pytest.mark.parametrize("ready, name, bound, expected", [
    (Ready(role="solver", name="solver-0", task_kinds=["generate"]), "solver-0", "solver-0:solver", None),
    (Ready(role="trainer", name="solver-0", task_kinds=["train"]), "solver-0", "solver-0:solver", "key is bound"),
    (Ready(role="solver", name="solver-1", task_kinds=["generate"]), "solver-0", None, "says it is"),
    (Ready(role="judge", name="judge-0", task_kinds=["generate"]), "judge-0", None, "may not take generate"),
    (Ready(role="observer", name="o", task_kinds=["judge"]), "o", None, "may not take judge"),
])
def test_ready_rules(ready, name, bound, expected):
    refused = ready_refusal(ready, name=name, bound=bound)
    assert (expected is None and refused is None) or (refused[0] == "forbidden" and expected in refused[1]), refused
