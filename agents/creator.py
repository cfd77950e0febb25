"""The creator process: eva's evolving prompt set, one round at a time, through the hub.

    creator = Creator(link, CreatorConfig(algo="dpo"), seed_prompts, mutator=world.mutate)
    creator.run(rounds=2)

Round t (eva; docs/live.md, *eva's rounds*):
  1. solve:    generate n answers for every prompt of the pool, judge them          -> old groups
               (each generation task's answers go to the judges as soon as it is done)
  2. estimate: informativeness of each prompt from its rewards (reward_gap)
  3. sample:   25% of the prompts, weighted without replacement
  4. evolve:   chains of rewrites with random mutation kinds; a task world's programmatic mutator,
               or an LLM evolver answering eva's meta-prompts through the solver pool; filtered
  5. solve the evolved prompts                                                     -> new groups
  6. mix:      20% old, 80% new groups -> a train task
  7. the pool grows by the evolved prompts.
With `max_staleness` 0 (the papers' synchronous loop) the creator waits for round t's new policy
before it generates round t+1. With k >= 1 it goes on generating while up to k train tasks are
outstanding, so round t+1's answers come from a policy up to k versions old and generation overlaps
training (the hub's `max_staleness` must allow the same lag).
`evolve=False` is the static baseline (train on the pool's own groups). GSIL/SPIN need no judge:
their groups carry the prompts' demonstrations. CUT asks the judge for written judgments.
Everything it makes is in the ledger (prompts with lineage and round). With a `state_path` the creator
also journals what it needs to go on (round, pool, outstanding train tasks, policy version, held-out
rewards, its random state) after every round it submits or collects; a restarted creator resumes from
there: it waits for the train tasks it had submitted and redoes only the round it was in the middle of
(those answers are then unused, never trained on), with the same random draws.
With `promotion` (docs/live.md, *promotion and rollback*) every new version is first validated
(greedy answers to the validation prompts, judged; agents/promotion.py): one worse than the best so
far by more than `promotion_tolerance_se` standard errors is rejected before any round generates with
it: a train task with `restore` makes the trainer resume from the best version (adapter and
optimizer) and publish it again as the next version, which the solvers then serve. The run ends on
its best version. Train tasks name the best version (`best`), so the trainer keeps its checkpoint.
A round fails when one of its tasks goes DEAD (or takes longer than `task_timeout_s`): it is logged,
journaled and listed in the run's summary, and then the creator goes on with the next round or, with
`on_failed_round = "stop"` or after `max_failed_rounds`, stops the run (`RunStopped`), never a crash
that a supervisor would restart into the same failure.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

import structlog

from agents.agent import AgentLink
from agents.creator_config import CreatorConfig
from agents.eva import MUTATIONS, filter_prompts, informativeness, meta_prompt, mix, parse_rewrite
from agents.eva import sample_prompts as eva_sample
from agents.promotion import Promotion, Score
from protocol.messages import (
    ChatTurn,
    GenerateResult,
    GenerateTask,
    JudgedGroup,
    JudgeTask,
    Prompt,
    ResultPayload,
    SamplingParams,
    TrainingReport,
    TrainTask,
)
from trainer.methods import get_method

log = structlog.get_logger("agents.creator")

def with_last_turn(messages: Sequence[ChatTurn], text: str) -> list[ChatTurn]:
    """A chat prompt's messages with its last (user) turn rewritten to `text`: an evolved prompt keeps its
    parent's system turn and history; a plain-text parent makes a plain-text child (no messages)."""
    return [*messages[:-1], ChatTurn(role="user", content=text)] if messages else []


# eva's evolver on a server (agents/backends/openai_api.py): meta-prompts -> replies, in order.
class Evolver(Protocol):
    def complete(self, texts: Sequence[str], temperature: float = ..., max_tokens: int = ...,
                 seed: int | None = ...) -> list[str]: ...


# A task world's mutator: (prompt, mutation kind, rng) -> the new prompt (with its answer), or None.
Mutator = Callable[[Prompt, str, random.Random], Prompt | None]


class RoundFailed(RuntimeError):
    """A task of the round went DEAD or took too long; the message says which and why."""


class RunStopped(RuntimeError):
    """The creator ends the run after failed rounds (on_failed_round = "stop", or max_failed_rounds reached)."""


class Creator:
    def __init__(self, link: AgentLink, config: CreatorConfig, seed_prompts: list[Prompt],
                 mutator: Mutator | None = None, eval_prompts: list[Prompt] | None = None,
                 state_path: str | Path | None = None, validation_prompts: list[Prompt] | None = None,
                 evolver: Evolver | None = None) -> None:
        self.link, self.config, self.mutator, self.evolver = link, config, mutator, evolver
        self.eval_prompts = [p.model_copy(update={"source": "eval"}) for p in eval_prompts or []]
        self.validation_prompts = [p.model_copy(update={"source": "validation"}) for p in validation_prompts or []]
        check_disjoint({"seed": seed_prompts, "test": self.eval_prompts, "validation": self.validation_prompts})
        if config.promotion and not self.validation_prompts:
            raise ValueError("promotion needs validation prompts (a topology's creator.validation_prompts), disjoint "
                             "from the held-out test prompts")
        self.eval_rewards: dict[int, float] = {}  # policy version -> held-out mean reward
        self.promotion = Promotion(config.promotion_tolerance_se)  # validation scores, best version, rollbacks
        self.pool = list(seed_prompts)
        self.rng = random.Random(config.seed)
        self.round = 0
        self.policy_version = link.hub_policy_version  # answers must come from at least this version
        self._training: deque[tuple[int, str]] = deque()  # (round, train task id) submitted, not yet reported
        self.failures: list[dict] = []  # {"round", "reason"} of each failed round
        self.elapsed_s, self._started = 0.0, None  # seconds of run() so far, counting earlier incarnations
        self.failing = 0  # rounds failed in a row
        self.state_path = Path(state_path) if state_path else None
        self.journal_id = os.urandom(6).hex()  # names this run's train submissions (kept in the journal)
        if self.state_path is not None and self.state_path.exists():
            self._load()
        else:
            self._save()  # the journal id is on disk before anything is submitted under it

    # ------------------------------------------------------------------ the journal
    def _save(self) -> None:
        if self.state_path is None:
            return
        version, internal, gauss = self.rng.getstate()
        if self._started is not None:
            self.elapsed_s = time.monotonic() - self._started
        state = {"journal_id": self.journal_id, "round": self.round, "policy_version": self.policy_version,
                 "elapsed_s": self.elapsed_s, "training": list(self._training), "failures": self.failures, "failing": self.failing,
                 "eval_rewards": self.eval_rewards, "pool": [p.model_dump(mode="json") for p in self.pool],
                 "promotion": self.promotion.to_json(),
                 "rng": [version, list(internal), gauss]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)  # atomic: a crash leaves the old journal or the new one

    def _load(self) -> None:
        state = json.loads(self.state_path.read_text())
        self.round, self.policy_version = state["round"], max(self.policy_version, state["policy_version"])
        self.journal_id = state.get("journal_id", self.journal_id)
        self._training = deque((r, t) for r, t in state["training"])
        self.failures, self.failing = state.get("failures", []), state.get("failing", 0)
        self.elapsed_s = state.get("elapsed_s", 0.0)
        self.eval_rewards = {int(v): reward for v, reward in state["eval_rewards"].items()}
        self.promotion.load(state.get("promotion", {}))
        self.pool = [Prompt.model_validate(p) for p in state["pool"]]
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        log.info("resumed", round=self.round, pool=len(self.pool), outstanding=len(self._training),
                 policy_version=self.policy_version)

    def run(self, rounds: int) -> list[TrainingReport]:
        """Rounds up to round `rounds` (counting those of a resumed journal); stops early at `max_wall_s`
        or once `target_eval_reward` is reached.
        Every submitted train task is waited for before it returns, whichever stop ended the rounds."""
        cfg, reports = self.config, []
        self._started = time.monotonic() - self.elapsed_s  # a resumed run goes on counting where it was
        if self.policy_version not in self.eval_rewards:
            self._unless_failed(self.round, self.evaluate)
        if cfg.promotion:  # the start, or what a crash left: a version not validated yet, a rollback not done
            self._unless_failed(self.round, self.settle)
        while self.round < rounds:
            if cfg.max_wall_s is not None and time.monotonic() - self._started > cfg.max_wall_s:
                log.info("stopping: wall time reached", rounds=self.round)
                break
            if self._unless_failed(self.round + 1, lambda: self._next_round(reports)):
                break
        while self._training:  # each failure gives up one outstanding train task
            self._unless_failed(self._training[0][0], lambda: self._collect(reports, keep=0))
        if cfg.promotion and not self.failing:
            self._unless_failed(self.round, self.end_on_best)
        if self.eval_prompts and self.policy_version not in self.eval_rewards:
            # the final policy is always evaluated, whatever eval_every or the stop
            self._unless_failed(self.round, self.evaluate)
        return reports

    def _next_round(self, reports: list[TrainingReport]) -> bool:
        """One round submitted, and train tasks collected down to max_staleness; True once the target is reached."""
        self.start_round()
        return self._collect(reports, keep=self.config.max_staleness)

    def _unless_failed(self, round_: int, step: Callable[[], object]) -> object:
        """`step()`; when it fails the round, record that and go on (None), or raise RunStopped."""
        try:
            done = step()
        except RoundFailed as e:
            self.failures.append({"round": round_, "reason": str(e)[:2000]})
            self.failing += 1
            self._save()
            log.error("round failed", round=round_, reason=str(e), failed_in_a_row=self.failing)
            cfg = self.config
            if cfg.on_failed_round == "stop" or self.failing >= cfg.max_failed_rounds:
                raise RunStopped(f"{self.failing} failed round(s) in a row; the last, round {round_}: {e}") from None
            return None
        self.failing = 0
        return done

    def _collect(self, reports: list[TrainingReport], keep: int) -> bool:
        """Wait for outstanding train tasks until at most `keep` remain; evaluate on schedule.
        True when the target metric is reached."""
        reached = False
        while len(self._training) > keep:
            round_, task_id = self._training[0]
            try:
                report = self._finish(round_, task_id)
            except RoundFailed:  # DEAD, or too long: given up, no longer outstanding
                self._training.popleft()
                self._save()
                raise
            self._training.popleft()
            self._save()
            reports.append(report)
            new = self.policy_version not in self.eval_rewards  # a round with nothing to learn makes no version
            rejected = self.config.promotion and self.policy_version not in self.promotion.validation and self.promote()
            on_schedule = new and round_ % self.config.eval_every == 0
            reward = self.evaluate() if on_schedule else None  # a rejected version too: the report shows it
            if rejected:
                self.roll_back("restore")
                reward = self.evaluate() if on_schedule else None
            target = self.config.target_eval_reward
            if reward is not None and target is not None and reward >= target:
                log.info("stopping: target reached", eval_reward=reward, rounds=round_)
                reached = True
        return reached

    def _finish(self, round_: int, task_id: str) -> TrainingReport:
        [report] = self.wait([task_id])
        self.policy_version = max(self.policy_version, report.policy_version)
        log.info("round trained", round=round_, policy_version=report.policy_version, examples=report.examples)
        return report

    def evaluate(self) -> float | None:
        """Greedy answers to the held-out prompts by the current policy, judged; never trained on.
        (Scoring needs a judge in every algorithm, GSIL/SPIN included.)"""
        if not self.eval_prompts:
            return None
        scores = self.greedy_scores(self.eval_prompts)
        reward = sum(scores) / len(scores) if scores else 0.0
        self.eval_rewards[self.policy_version] = reward
        self._save()
        log.info("evaluated", policy_version=self.policy_version, eval_reward=round(reward, 4), prompts=len(scores))
        return reward

    def greedy_scores(self, prompts: list[Prompt]) -> list[float]:
        """The verdict score of the current policy's greedy answer to each prompt (a judge scores every method's)."""
        return [v.score for g in self.solve(prompts, n=1, temperature=0.0, judge=True) for v in g.verdicts]

    # ------------------------------------------------------------------ promotion
    def settle(self) -> None:
        """Validate the newest version if it is not yet, and finish a rollback a crash or a failure left pending:
        no round generates with a version before it is validated and kept."""
        if self.policy_version not in self.promotion.validation:
            self.promote()
        if self.promotion.pending is not None:
            self.roll_back("restore")

    def promote(self) -> bool:
        """Validate the newest version and decide on it (agents/promotion.py): True when it is rejected; otherwise
        it is served, and it becomes the best when it beats it. The decision is journaled before anything else."""
        version = self.policy_version
        scores = self.greedy_scores(self.validation_prompts)
        if self.config.promotion_metric == "solved":
            scores = [float(s >= self.config.good_score) for s in scores]
        if not scores:
            raise RoundFailed(f"round {self.round}: no validation answer of policy v{version} was judged")
        rejected = self.promotion.decide(version, Score.of(scores))
        self._save()
        score, state = self.promotion.validation[version], self.promotion
        (log.warning if rejected else log.info)("rejected on validation" if rejected else "validated",
                                                policy_version=version, validation=round(score.mean, 4),
                                                best_version=state.best, below_best_se=round(state.gap(version), 2),
                                                tolerance_se=state.tolerance_se)
        return rejected

    def roll_back(self, why: str) -> None:
        """The trainer resumes from the best version and publishes it again as the next version, which the solvers
        serve from then on. Keyed by the version it replaces, so a retry or a restarted creator queues it once."""
        state, replaced = self.promotion, self.policy_version
        task = TrainTask(groups=[], round=self.round, best=state.best, restore=state.best)
        [task_id] = self.submit([task], key=f"{self.journal_id}:{why}:v{replaced}")
        [report] = self.wait([task_id])
        if report.policy_version <= replaced:
            raise RoundFailed(f"round {self.round}: the restore of v{state.best} published v{report.policy_version}, "
                              f"not a version after v{replaced}")
        self.policy_version = report.policy_version
        state.rolled_back(self.policy_version, why)
        self._save()
        log.warning("rolled back", replaced=replaced, restored=state.rollbacks[-1]["restored"],
                    policy_version=self.policy_version, why=why)

    def end_on_best(self) -> None:
        """At the end of a run: when the served version scored below the best on validation, serve the best."""
        if self.promotion.below_best(self.policy_version):
            self.roll_back("final")

    def start_round(self) -> tuple[int, str]:
        """Generate and judge the pool, evolve, mix, and submit the train task (not waited for here)."""
        cfg = self.config
        if cfg.promotion:
            self.settle()  # a rollback that failed last round is done before this round generates anything
        self.round += 1
        pool = self.pool
        if cfg.pool_per_round is not None and len(pool) > cfg.pool_per_round:
            pool = self.rng.sample(pool, cfg.pool_per_round)
        old = self.solve(pool)
        new: list[JudgedGroup] = []
        if cfg.evolve:
            scores = [informativeness([v.score for v in g.verdicts] or [0.0], cfg.informativeness) for g in old]
            chosen = eva_sample(scores, fraction=cfg.sample_fraction, method=cfg.sample_method, rng=self.rng)
            evolved = self.evolve([old[i].prompt for i in chosen])
            new = self.solve(evolved) if evolved else []
            self.pool += evolved
        old, new = self.trainable(old), self.trainable(new)
        groups = mix(old, new, total=cfg.train_groups, old_fraction=cfg.old_fraction if new else 1.0, rng=self.rng)
        # Keyed by journal and round: a retry after a lost reply, or this round redone by a restarted creator,
        # gets the task the hub already queued back, so no round is trained twice.
        task = TrainTask(groups=groups, round=self.round, best=self.promotion.best if cfg.promotion else None)
        [task_id] = self.submit([task], key=f"{self.journal_id}:train:{self.round}")
        log.info("round submitted", round=self.round, pool=len(self.pool), evolved=len(new), trained=len(groups),
                 answers_from=self.policy_version)
        self._training.append((self.round, task_id))
        self._save()
        return self.round, task_id

    def trainable(self, groups: list[JudgedGroup]) -> list[JudgedGroup]:
        """The groups worth training on: for pair methods those with a preference (scores not all equal: a
        tie gives the trainer no pair, and would only take a slot of the mix); and, with `min_train_score`,
        those whose best answer reaches it."""
        method, floor = get_method(self.config.algo), self.config.min_train_score
        if method.judge == "none":
            return groups
        scores = [[v.score for v in g.verdicts] for g in groups]
        return [g for g, s in zip(groups, scores, strict=True)
                if (not method.contrast or (s and max(s) > min(s))) and (floor is None or (s and max(s) >= floor))]

    # ------------------------------------------------------------------ solve = generate (+ judge)
    def solve(self, prompts: list[Prompt], n: int | None = None, temperature: float | None = None,
              judge: bool | None = None) -> list[JudgedGroup]:
        """Generate n answers per prompt (defaults from the config) and judge them when `judge` says so
        (default: when the algorithm needs scores, i.e. not for GSIL/SPIN)."""
        cfg = self.config
        sampling = SamplingParams(n=n or cfg.samples_per_prompt,
                                  temperature=cfg.temperature if temperature is None else temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, seed=self.rng.randrange(2**31))
        version = self.policy_version
        chunks = split_evenly(prompts, cfg.prompts_per_task)
        ids = self.submit([GenerateTask(prompts=c, sampling=sampling, min_policy_version=version) for c in chunks])
        method = get_method(cfg.algo)
        if judge is None:
            judge = method.judge != "none"
        if not judge:
            return [g for chunk, result in zip(chunks, self.wait(ids), strict=True) for g in _groups(chunk, result)]
        # Pipelined: each generation task's groups go to the judges as soon as it is done, so judging overlaps
        # the generation still running (the same judge tasks as judging everything at the end).
        want_judgment = method.judge == "judgment"
        groups: dict[int, list[JudgedGroup]] = {}
        judge_ids: dict[int, str] = {}
        for done in self.finished(ids, wait_for="any"):
            for i, result in done:
                groups[i] = _groups(chunks[i], result)
            submitted = self.submit([JudgeTask(groups=groups[i], want_judgment=want_judgment) for i, _ in done])
            judge_ids.update(zip((i for i, _ in done), submitted, strict=True))
        results = self.wait([judge_ids[i] for i in range(len(chunks))])
        verdicts = {v.sample_id: v for result in results for v in result.verdicts}
        return [g.model_copy(update={"verdicts": [verdicts[s.sample_id] for s in g.samples]})
                for i in range(len(chunks)) for g in groups[i]]

    # ------------------------------------------------------------------ evolve
    def evolve(self, parents: list[Prompt]) -> list[Prompt]:
        """Chains of `rewrites_per_prompt` rewrites from each parent, each a random mutation kind."""
        cfg, made = self.config, []
        current = list(parents)
        for step in range(cfg.rewrites_per_prompt):
            mutations = [self.rng.choice(MUTATIONS) for _ in current]
            children = self._mutate(current, mutations, step)
            existing = [p.text for p in self.pool + made + self.eval_prompts + self.validation_prompts]  # never trained on
            keep = filter_prompts([c.text if c else None for c in children], existing, max_chars=cfg.max_prompt_chars)
            made += [children[i] for i in keep]
            current = [children[i] for i in keep]  # the chain continues from what survived
            if not current:
                break
        return made

    def _mutate(self, parents: list[Prompt], mutations: list[str], step: int) -> list[Prompt | None]:
        def child(parent: Prompt, mutation: str, i: int, text: str | None, answer: str | None = None,
                  difficulty: int | None = None) -> Prompt | None:
            if not text:
                return None
            return Prompt(prompt_id=f"r{self.round}s{step}i{i}-{parent.prompt_id}"[:120], text=text, answer=answer,
                          messages=with_last_turn(parent.messages, text), source="evolved",
                          parent_id=parent.prompt_id, mutation=mutation,
                          difficulty=parent.difficulty if difficulty is None else difficulty)

        if self.mutator is not None:  # a task world's programmatic mutator (keeps answers checkable)
            out = []
            for i, (p, m) in enumerate(zip(parents, mutations, strict=True)):
                made = self.mutator(p, m, self.rng)
                out.append(child(p, m, i, made.text, made.answer, made.difficulty) if made else None)
            return out
        metas = [Prompt(prompt_id=f"meta-{i}", text=meta_prompt(p.text, m),  # a chat prompt's rewriter is asked in chat
                        messages=[ChatTurn(role="user", content=meta_prompt(p.text, m))] if p.messages else [])
                 for i, (p, m) in enumerate(zip(parents, mutations, strict=True))]
        if self.evolver is not None:  # a model on an OpenAI-compatible server writes the rewrites
            try:
                replies = self.evolver.complete([m.text for m in metas], temperature=0.7,
                                                max_tokens=self.config.max_new_tokens, seed=self.rng.randrange(2**31))
            except Exception as e:  # the server is down or refuses: this round fails, with why
                raise RoundFailed(f"round {self.round}: the evolver failed: {e}") from e
            return [child(p, m, i, parse_rewrite(r)) for i, (p, m, r) in enumerate(zip(parents, mutations, replies,
                                                                                        strict=True))]
        ids = self.submit([GenerateTask(prompts=metas, purpose="evolve",
                                             sampling=SamplingParams(n=1, temperature=0.7,
                                                                     max_new_tokens=self.config.max_new_tokens,
                                                                     seed=self.rng.randrange(2**31)))])
        [result] = self.wait(ids)
        texts = {s.prompt_id: parse_rewrite(s.text) for s in result.samples}
        return [child(p, m, i, texts.get(f"meta-{i}")) for i, (p, m) in enumerate(zip(parents, mutations, strict=True))]

    # ------------------------------------------------------------------ talking to the hub
    def submit(self, tasks: list, key: str | None = None) -> list[str]:
        """Queue tasks, retrying while the hub is away (a restart). Every try carries the same idempotency key
        (`key`, else a new random one), so a retry after a lost reply queues nothing twice."""
        key = key or os.urandom(8).hex()
        deadline = time.monotonic() + self.config.task_timeout_s
        while True:
            try:
                return self.link.submit(tasks, timeout_s=10.0, key=key)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RoundFailed(f"round {self.round}: the hub took no tasks for "
                                      f"{self.config.task_timeout_s:.0f} s") from None
                log.warning("hub not answering; submitting again", round=self.round, tasks=len(tasks))

    def wait(self, task_ids: list[str]) -> list[ResultPayload]:
        """Results of `task_ids` in order, once all are done; a DEAD task fails the round with its reason."""
        results: list[ResultPayload | None] = [None] * len(task_ids)
        for done in self.finished(task_ids, wait_for="all"):
            for i, result in done:
                results[i] = result
        return results  # type: ignore[return-value]  # every index was filled

    def finished(self, task_ids: list[str], wait_for: Literal["all", "any"] = "any"
                 ) -> Iterator[list[tuple[int, ResultPayload]]]:
        """(index, result) of `task_ids` as they are done, a batch per answer of the hub; a DEAD task fails the round.
        Each query waits at the hub (long polling, `wait_s`) until the tasks it names (those not done yet) are
        all finished, or with `wait_for="any"` until one of them is: the answer comes as soon as they are."""
        wait_s = self.config.wait_s
        deadline = time.monotonic() + self.config.task_timeout_s
        left = dict(enumerate(task_ids))  # index -> task id, not done yet
        while left:
            if time.monotonic() > deadline:
                raise RoundFailed(f"round {self.round}: tasks not done within {self.config.task_timeout_s:.0f} s")
            asked = time.monotonic()
            try:
                infos = self.link.query(list(left.values()), timeout_s=wait_s + 10.0, wait_s=wait_s, wait_for=wait_for)
            except TimeoutError:  # the hub is restarting: the link reconnects, the ledger kept everything
                log.warning("hub not answering; still waiting", round=self.round, tasks=len(left))
                continue
            dead = [i for i in infos if i.state in ("dead", "unknown")]
            if dead:
                raise RoundFailed(f"round {self.round}: task {dead[0].task_id} is {dead[0].state}: {dead[0].reason}")
            done = [(i, info.result) for i, info in zip(list(left), infos, strict=True)
                    if info.state == "done" and info.result is not None]  # no result: no room in that reply
            if done:
                for i, _ in done:
                    del left[i]
                yield done
            elif time.monotonic() - asked < wait_s / 2:  # answered early, unfinished (a hub holding too many queries)
                time.sleep(min(0.1, wait_s))


def split_evenly(prompts: list[Prompt], most: int) -> list[list[Prompt]]:
    """As few tasks of at most `most` prompts as hold them, their sizes differing by one at most: 172 prompts at 128
    a task are two tasks of 86, not 128 and 44 (whose solver would wait for the other's)."""
    count = -(-len(prompts) // most)
    return [prompts[len(prompts) * i // count:len(prompts) * (i + 1) // count] for i in range(count)]


def _groups(prompts: list[Prompt], result: GenerateResult) -> list[JudgedGroup]:
    """One unjudged group per prompt of a generation task, with that prompt's samples from its result."""
    return [JudgedGroup(prompt=p, samples=[s for s in result.samples if s.prompt_id == p.prompt_id], verdicts=[])
            for p in prompts]


def check_disjoint(sets: dict[str, list[Prompt]]) -> None:
    """Seed, test and validation prompts share no id (the ledger files a prompt under its first source) and no
    text (a test or validation prompt trained on measures nothing)."""
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = ({p.prompt_id for p in sets[a]} & {p.prompt_id for p in sets[b]}
                    or {p.text for p in sets[a]} & {p.text for p in sets[b]})
            if both:
                raise ValueError(f"{a} and {b} prompts must be disjoint; both have {sorted(both)[:3]}")
