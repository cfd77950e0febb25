"""`selfplay status`: one StatusQuery to a running hub, printed for people (or as JSON).

    reply = query_status("ipc:///runs/a/sock/hub-control.ipc")
    print(format_status(reply))

A status query needs no READY, so asking does not register an agent. Over tcp it needs an allowed
key (an observer's): `--keys DIR --name NAME`. With a run directory, the processes of this machine's
supervisor are shown too (RUN/supervisor.json: pid, restarts, the last line each printed before it exited):

    print(format_processes(read_processes("runs/a")))

When no hub answers and the run directory holds a ledger (a finished or stopped run), `format_ledger` shows
what the ledger says instead: policy versions, rollbacks, reward and held-out scores by version, tasks.

    print(format_ledger("runs/a"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zmq

from protocol import keys
from protocol.codec import decode, encode
from protocol.messages import StatusQuery, StatusReply
from protocol.transport import ClientCurve, agent_socket


def query_status(endpoint: str, *, keys_dir: str | None = None, name: str = "status",
                 timeout_s: float = 5.0) -> StatusReply:
    ctx = zmq.Context()
    curve = None
    if keys_dir:
        curve = ClientCurve(keys.agent_keypair(keys_dir, name), keys.hub_public(keys_dir))
    sock = agent_socket(ctx, endpoint, "control", name=name, curve=curve)  # over tcp the name must be the key's
    try:
        sock.send_multipart(encode(StatusQuery(), sender=name))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while poller.poll(int(timeout_s * 1000)):
            reply = decode(sock.recv_multipart()).message
            if reply.kind == "status_reply":
                return reply
            if reply.kind == "error":
                raise RuntimeError(f"hub refused the status query: {reply.code}: {reply.detail}")
        raise TimeoutError(f"no answer from a hub at {endpoint} within {timeout_s:.0f} s")
    finally:
        sock.close(linger=0)
        ctx.term()


def format_status(reply: StatusReply) -> str:
    lines = [f"hub {reply.hub_id}   policy version {reply.policy_version}", "", "agents:"]
    if not reply.agents:
        lines.append("  (none)")
    for a in sorted(reply.agents, key=lambda a: (a.role, a.name)):
        version = "" if a.policy_version is None else f"  policy v{a.policy_version}"
        lines.append(f"  {a.name:<20} {a.role:<8} {a.in_flight}/{a.capacity} tasks  seen {a.last_seen_s:.1f} s ago{version}")
    lines += ["", "queues:        queued  leased    done    dead"]
    for kind, q in sorted(reply.queues.items()):
        lines.append(f"  {kind:<10} {q.queued:>8} {q.leased:>7} {q.done:>7} {q.dead:>7}")
    if "ledger_bytes" in reply.metrics:
        m = reply.metrics
        lines += ["", f"ledger: {m['ledger_bytes'] / 2**20:.1f} MiB on disk ({m.get('ledger_blob_bytes', 0) / 2**20:.1f} "
                  f"MiB of it large results as blobs); {int(m.get('archived_tasks', 0))} finished tasks and "
                  f"{int(m.get('archived_prompts', 0))} prompts archived"]
    rewards = _by_version(reply.metrics, "reward_mean.v")
    if rewards:
        lines += ["", "reward by policy version (mean verdict score of its samples):"]
        lines += [f"  v{version:<4} {mean:.4f}  ({int(reply.metrics.get(f'reward_count.v{version}', 0))} samples)"
                  for version, mean in rewards]
    for prompts, title in (("eval", "held-out test"), ("validation", "validation (promotion decides on it)")):
        scores = _by_version(reply.metrics, f"{prompts}_reward.v")
        if scores:
            counts = {v: int(reply.metrics.get(f"{prompts}_count.v{v}", 0)) for v, _ in scores}
            full = max(counts.values())  # the whole set; a version with fewer is still being evaluated
            lines += ["", f"{title} by policy version (never trained on):"]
            lines += [f"  v{version:<4} {mean:.4f}  ({counts[version]} samples)" + (
                f"  evaluating: {counts[version]} of {full} so far" if counts[version] < full else "")
                for version, mean in scores]
    restored = _by_version(reply.metrics, "restored.v")
    if restored:
        lines += ["", "rollbacks (a version worse than the best on validation was not served):"]
        lines += [f"  v{version:<4} = v{int(source)} again (v{version - 1} rejected, or the run ended on its best)"
                  for version, source in restored]
    other = {k: v for k, v in reply.metrics.items() if not k.startswith(
        ("reward_mean.", "reward_count.", "eval_reward.", "eval_count.", "validation_reward.", "validation_count.",
         "restored.", "ledger_bytes", "ledger_blob_bytes", "archived_tasks", "archived_prompts"))}
    if other:
        lines += ["", "counters:"] + [f"  {k} = {v:.4g}" for k, v in sorted(other.items())]
    return "\n".join(lines)


def _by_version(metrics: dict[str, float], prefix: str) -> list[tuple[int, float]]:
    """(version, value) of the metrics named PREFIX + version, in version order."""
    return sorted((int(k[len(prefix):]), v) for k, v in metrics.items() if k.startswith(prefix))


def read_processes(run_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """This machine's supervisor's processes (name -> pid, restarts, last_error), or None when none runs here."""
    try:
        return json.loads((Path(run_dir) / "supervisor.json").read_text()).get("processes")
    except (OSError, json.JSONDecodeError):
        return None


def read_ended(run_dir: str | Path) -> dict[str, Any] | None:
    """How this machine's supervisor ended the run ({"ended": why, "at", "processes"}), or None."""
    try:
        return json.loads((Path(run_dir) / "supervisor-ended.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def format_processes(processes: dict[str, dict[str, Any]], ended: dict[str, Any] | None = None) -> str:
    """This machine's processes; with `ended` (read_ended), as they were when the run ended, and why."""
    lines = [f"run ended {ended.get('at', '')}: {ended.get('ended', '')}", "processes when it ended:"] if ended \
        else ["processes (this machine's supervisor):"]
    for name, p in sorted(processes.items()):
        state = f"pid {p['pid']}" if p.get("pid") else "stopped" if ended else "waiting to restart"
        line = f"  {name:<20} {state:<20} restarts {p.get('restarts', 0)}"
        if p.get("last_error"):
            line += f"   last error: {p['last_error']}"
        lines.append(line)
    return "\n".join(lines)


def format_ledger(run_dir: str | Path) -> str:
    """The run as its ledger records it (no hub needed): what `selfplay status` shows for a run that has ended."""
    from agents.ledger_query import LedgerReader

    with LedgerReader.for_run(run_dir) as ledger:
        versions = ledger.policy_versions()
        restores = ledger.restores()
        rewards = ledger.reward_by_version()
        scores = {source: ledger.reward_by_version(source) for source in ("eval", "validation")}
        states = ledger.tasks_by_state()
    lines = [f"run {run_dir} (no hub answers: from its ledger)",
             f"published policy versions: {len(versions)}" + (f", newest v{max(versions)}" if versions else "")]
    if rewards:
        lines += ["", "reward by policy version (mean verdict score of its samples):"]
        lines += [f"  v{v:<4} {mean:.4f}  ({n} samples)" for v, (mean, n) in sorted(rewards.items())]
    for source, title in (("eval", "held-out test"), ("validation", "validation")):
        if scores[source]:
            lines += ["", f"{title} by policy version (mean verdict score; `selfplay report` gives the share solved):"]
            lines += [f"  v{v:<4} {mean:.4f}  ({n} samples)" for v, (mean, n) in sorted(scores[source].items())]
    if restores:
        lines += ["", "rollbacks:"] + [f"  v{v:<4} = v{source} again" for v, source in sorted(restores.items())]
    lines += ["", "tasks: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))]
    return "\n".join(lines)
