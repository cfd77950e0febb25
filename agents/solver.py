"""The solver process: answers generation tasks with the newest policy, n samples per prompt.

    link = AgentLink(LinkConfig(name="solver-0", role="solver", task_kinds=["generate"], control=HUB_CONTROL,
                                data=HUB_DATA))
    link.start()
    Solver(link, HFGenerator("./tiny/policy")).run(stop_event)

(`selfplay up` and `selfplay attach solver` start it as a process: launch/worker.py.)

Loop: bring the policy up to date (announcements from the hub; a task may demand a minimum
version) -> take a task -> generate -> tag every sample with the policy version that made it ->
complete. Heartbeats, leases and the outbox live on the AgentLink's I/O thread; the data channel
(weight sync) is the link's too, keyed with the same credentials. A policy that does not load (its
tensors fit no model) is logged and skipped: the solver keeps the one it has, and a task that needs
the new one fails with the reason, so no solver exits over a bad adapter.
"""

from __future__ import annotations

import threading
import time

import structlog
import zmq

from agents.agent import AgentLink
from agents.backends import Generator
from protocol.codec import Envelope, ProtocolError, decode, encode
from protocol.messages import Assign, GenerateResult, PolicyFetch, Sample
from protocol.transport import limits_for

log = structlog.get_logger("agents.solver")


class Solver:
    def __init__(self, link: AgentLink, generator: Generator) -> None:
        self.link, self.generator = link, generator
        self.data_endpoint: str | None = link.config.data  # None: no weight sync (in-process runs)
        self._data: zmq.Socket | None = None  # owned by the compute thread (the only one that fetches)
        self._following: str | None = None  # the hub incarnation that pushes us new versions
        self.unloadable: dict[int, str] = {}  # policy versions that fit no model here -> why (never tried again)
        self._load_error = ""  # why the last load failed, if it did for another reason (tried again when asked)
        self.sync_seconds: list[float] = []  # wall time of each fetch + load (benchmarks read it)

    def run(self, stop: threading.Event) -> None:
        self.link.serve(self.solve, stop, each=self.sync_policy)

    def solve(self, assign: Assign) -> None:
        task = assign.task
        if task.kind != "generate_task":
            return self.link.fail(assign, f"a solver does not take {task.kind}", retryable=True)
        if self.generator.version < task.min_policy_version:
            self.sync_policy(task.min_policy_version)
        if self.generator.version < task.min_policy_version:  # never answer with an older policy than asked
            why = next((f"policy v{v} does not load: {reason}" for v, reason in self.unloadable.items()
                        if v <= task.min_policy_version),
                       self._load_error or f"policy v{task.min_policy_version} did not arrive")
            return self.link.fail(assign, f"{self.link.config.name} holds v{self.generator.version}; {why}"[:4096])
        version = self.generator.version
        outputs = self.generator.generate(task.prompts, task.sampling)
        samples = [Sample(sample_id=f"{assign.task_id}.{assign.attempt}.{i}.{j}", prompt_id=prompt.prompt_id,
                          text=g.text, token_ids=g.token_ids, logprobs=g.logprobs, policy_version=version,
                          finish_reason=g.finish_reason)
                   for i, (prompt, gens) in enumerate(zip(task.prompts, outputs, strict=True))
                   for j, g in enumerate(gens)]
        self.link.complete(assign, GenerateResult(samples=samples))

    def sync_policy(self, at_least: int = 0) -> None:
        """Swap in the newest policy. The solver follows the hub (from its first call, and again after the hub
        restarts), which pushes each version over the data socket as it is published; a version announced or
        demanded (`at_least`) that has not arrived is waited for a moment, then fetched."""
        if self.data_endpoint is None:
            return
        wanted, num_bytes = at_least, 0
        while not self.link.announcements.empty():
            announce = self.link.announcements.get_nowait()
            wanted, num_bytes = max(wanted, announce.version), max(num_bytes, announce.num_bytes)
        started = time.perf_counter()
        if self._data is None:
            self._data = self.link.data_socket()
        if self._following != self.link.hub_id:  # the reply to this is the newest version, if there is one
            self._fetch(0)
            self._following = self.link.hub_id
        update = self._received(0)  # pushed while it worked
        fetched = False
        if wanted > max(self.generator.version, _version(update)):
            update = self._received(wanted, update, timeout_s=1.0 + num_bytes / 1e8)  # the push is on its way
            if wanted > _version(update):  # missed (the hub forgot us, or our queue was full): ask for it
                fetched = True
                self._fetch(wanted)
                update = self._received(wanted, update)
                if wanted > _version(update):
                    log.warning("policy fetch timed out", version=wanted)
        if update is None or update.message.version <= self.generator.version:
            return
        version = update.message.version
        if version in self.unloadable:
            return
        try:
            self.generator.load_policy(version, update.message.adapter_config, update.tensors)
        except (ValueError, TypeError, KeyError) as e:  # it fits no model here: keep the policy we have, for good
            self.unloadable[version] = f"{type(e).__name__}: {e}"[:1000]
            log.error("policy does not load; keeping the current one", version=version,
                      current=self.generator.version, error=self.unloadable[version])
            return
        except Exception as e:  # out of memory, a full disk (vllm writes adapters): the next sync tries again
            self._load_error = f"policy v{version} could not be loaded: {type(e).__name__}: {e}"[:1000]
            log.exception("policy load failed; trying again when asked", version=version)
            return
        self._load_error = ""
        self.sync_seconds.append(time.perf_counter() - started)
        log.info("policy loaded", version=update.message.version, tensors=len(update.tensors), fetched=fetched,
                 seconds=round(self.sync_seconds[-1], 4))

    def _fetch(self, version: int) -> None:
        self._data.send_multipart(encode(PolicyFetch(version=version, follow=True), sender=self.link.config.name))

    def _received(self, wanted: int, newest: Envelope | None = None, timeout_s: float = 60.0) -> Envelope | None:
        """The newest policy update waiting on the data socket (pushed, or a reply), or `newest` if none is
        newer; while it has less than `wanted`, waits up to `timeout_s` for more."""
        deadline = time.monotonic() + timeout_s
        while True:
            short = _version(newest) < wanted
            if not self._data.poll(max(0, int((deadline - time.monotonic()) * 1000)) if short else 0):
                return newest
            try:
                env = decode(self._data.recv_multipart(copy=False), limits_for("data"))
            except ProtocolError as e:
                log.warning("bad message on the data channel", code=e.code, detail=e.detail)
                continue
            if env.message.kind == "policy_update":
                if env.message.version > _version(newest):
                    newest = env
            elif env.message.kind == "error":  # e.g. the version was retired: keep what there is
                log.warning("policy fetch refused", reply=env.message.model_dump())
                wanted = 0


def _version(update: Envelope | None) -> int:
    return update.message.version if update is not None else 0
