"""The solver process: answers generation tasks with the newest policy, n samples per prompt.

    link = AgentLink(LinkConfig(name="solver-0", role="solver", task_kinds=["generate"], control=HUB_CONTROL))
    link.start()
    Solver(link, HFGenerator("./tiny/policy"), data_endpoint=HUB_DATA).run(stop_event)

(`selfplay up` / `selfplay attach solver` will start it as a process; they land with the launch work.)

Loop: bring the policy up to date (announcements from the hub; a task may demand a minimum
version) -> take a task -> generate -> tag every sample with the policy version that made it ->
complete. Heartbeats, leases and the outbox live on the AgentLink's I/O thread.
"""

from __future__ import annotations

import threading
import time

import structlog
import zmq

from agents.agent import AgentLink
from agents.backends import Generator
from protocol.codec import decode, encode
from protocol.messages import Assign, GenerateResult, PolicyFetch, Sample
from protocol.transport import agent_socket, limits_for

log = structlog.get_logger("agents.solver")


class Solver:
    def __init__(self, link: AgentLink, generator: Generator, data_endpoint: str | None) -> None:
        self.link, self.generator, self.data_endpoint = link, generator, data_endpoint
        self._data: zmq.Socket | None = None  # owned by the compute thread (the only one that fetches)
        self.sync_seconds: list[float] = []  # wall time of each fetch + load (benchmarks read it)

    def run(self, stop: threading.Event) -> None:
        self.link.serve(self.solve, stop, each=self.sync_policy)

    def solve(self, assign: Assign) -> None:
        task = assign.task
        if task.kind != "generate_task":
            return self.link.fail(assign, f"a solver does not take {task.kind}", retryable=True)
        if self.generator.version < task.min_policy_version:
            self.sync_policy(task.min_policy_version)
        version = self.generator.version
        outputs = self.generator.generate(task.prompts, task.sampling)
        samples = [Sample(sample_id=f"{assign.task_id}.{assign.attempt}.{i}.{j}", prompt_id=prompt.prompt_id,
                          text=g.text, token_ids=g.token_ids, logprobs=g.logprobs, policy_version=version,
                          finish_reason=g.finish_reason)
                   for i, (prompt, gens) in enumerate(zip(task.prompts, outputs, strict=True))
                   for j, g in enumerate(gens)]
        self.link.complete(assign, GenerateResult(samples=samples))

    def sync_policy(self, at_least: int = 0) -> None:
        """Fetch the newest announced version (or `at_least`) over the data socket and swap it in."""
        newest = at_least
        while not self.link.announcements.empty():
            newest = max(newest, self.link.announcements.get_nowait().version)
        if newest <= self.generator.version or self.data_endpoint is None:
            return
        started = time.perf_counter()
        if self._data is None:
            self._data = agent_socket(self.link.ctx, self.data_endpoint, "data", name=self.link.config.name)
        self._data.send_multipart(encode(PolicyFetch(version=newest), sender=self.link.config.name))
        if not self._data.poll(60_000):
            log.warning("policy fetch timed out", version=newest)
            return
        env = decode(self._data.recv_multipart(copy=False), limits_for("data"))
        if env.message.kind != "policy_update":
            log.warning("policy fetch refused", reply=env.message.model_dump())
            return
        self.generator.load_policy(env.message.version, env.message.adapter_config, env.tensors)
        self.sync_seconds.append(time.perf_counter() - started)
        log.info("policy loaded", version=env.message.version, tensors=len(env.tensors),
                 seconds=round(self.sync_seconds[-1], 4))
