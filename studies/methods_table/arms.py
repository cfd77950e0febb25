"""The arms of the methods table: each method, run the way its paper runs it, on the same budget.

Which arms there are, and the method and settings of each, is data (arms.toml); this module runs an arm
of each group. Five groups, each arm from the SFT start and seeing `rounds x K` examples (K =
examples_per_round; a round short of data repeats what it has, and says so in its notes):
- demonstrations (noisy: a share state a wrong result): SFT on them; SPIN and GSIL's five objectives,
  each iteration answering every demonstrated prompt with the current policy (y_gen) and taking that
  policy as the reference (docs/algorithms.md);
- pairs, offline: (right, wrong) answers of the SFT start to the same prompts, for DPO (with and
  without the NLL term the demo uses), IPO, SimPO, contrastive SFT and SFT on the chosen answers;
- judgments, online: each round the policy answers fresh prompts and the world's checker writes a
  judgment of each answer; CUT trains on the triples, "sft-good" on the right answers only, and
  "hindsight" on every answer conditioned on its verdict (asked with "Correct." at test time);
- rewards, online: each round the policy answers fresh prompts `samples_per_prompt` times and the
  world's checker grades each answer; GRPO and RLOO train on the groups whose rewards differ, K answers
  a round (more prompts are answered until K are found, up to the round's share of the prompt set);
- prompts, online: eva (the real creator, evolving prompts with the world's mutator) against the
  static prompt set, both with DPO + NLL and the same number of pairs per round.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.worlds import arithmetic as world
from protocol.messages import JudgedGroup, Prompt, Sample, Verdict
from protocol.settings import read_config_file
from studies.methods_table.context import Context
from studies.methods_table.creator_arm import run_creator
from studies.methods_table.policy import Frames, Policy, Record, plain
from studies.methods_table.world import Budget, Data, verdict
from trainer.config import TrainConfig
from trainer.methods import get_method, rows_from_groups
from trainer.methods.cut import CUTSettings


@dataclass(frozen=True)
class Arm:
    name: str
    group: str
    about: str
    run: Callable[[Context], Record]
    algo: str  # the method it trains
    lrs: tuple[float, ...]  # its learning-rate grid (its family's, arms.toml [grids]); validation picks one
    spec: str = ""  # its arms.toml entry: a saved result of another spec is stale


# ---------------------------------------------------------------------- from demonstrations
def demonstrations(algo: str, **settings: Any) -> Callable[[Context], Record]:
    def run(ctx: Context) -> Record:
        policy = ctx.policy(algo, **settings)
        demos = ctx.data.demonstrations
        for _ in range(ctx.budget.rounds):
            rows = [{"prompt": p.text, "completion": p.demonstration} for p in demos]
            if get_method(algo).samples_own_answers:  # a new iteration: y_gen from the current policy, also the reference
                for row, [answer] in zip(rows, policy.answer([p.text for p in demos]), strict=True):
                    row["generated"] = answer
            policy.train(ctx.fit(policy, rows))
            ctx.round_done(policy)
        return policy.record
    return run


# ---------------------------------------------------------------------- from preference pairs
def offline_pairs(budget: Budget, data: Data, seed: int, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """(right, wrong) pairs of the SFT start's sampled answers: one pair per prompt that has both, the
    wrong answer the worst-graded (eva's best/worst pair with a right chosen answer)."""
    from trainer.generate import sample_responses

    n, prompts = budget.samples_per_prompt, data.pair_prompts
    flat = sample_responses(model, tokenizer, [p.text for p in prompts for _ in range(n)],
                            max_new_tokens=budget.max_new_tokens, temperature=budget.temperature,
                            top_p=budget.top_p, batch_size=64, seed=seed * 7_919 + 17)
    pairs = []
    for i, prompt in enumerate(prompts):
        graded = [(world.grade(prompt, a)[0], a) for a in flat[i * n:(i + 1) * n]]
        right = [a for s, a in graded if s >= 1.0]
        wrong = sorted((s, a) for s, a in graded if s < 1.0)
        if right and wrong:
            pairs.append({"prompt": prompt.text, "chosen": right[0], "rejected": wrong[0][1]})
    return pairs


def pairs(algo: str, *, as_sft: bool = False, **settings: Any) -> Callable[[Context], Record]:
    def run(ctx: Context) -> Record:
        assert ctx.pairs_file is not None, "pair arms need the seed's offline pairs"
        data = [json.loads(line) for line in ctx.pairs_file.read_text().splitlines()]
        policy = ctx.policy(algo, reference="initial", **settings)  # offline: the SFT start is the reference
        policy.record.notes["distinct_pairs"] = len(data)
        order = ctx.rng.sample(data, len(data))
        stream = (order * (ctx.budget.rounds * ctx.k // max(1, len(order)) + 1))[:ctx.budget.rounds * ctx.k]
        asked = get_method(algo).ask is not None  # asked inside the method's frame (contrastive SFT)
        frames = method_frames(policy.config) if asked else plain
        for r in range(ctx.budget.rounds):  # passes of K over the pairs (a repeat once they run out)
            rows = stream[r * ctx.k:(r + 1) * ctx.k]
            if as_sft:
                rows = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in rows]
            policy.train(rows)
            ctx.round_done(policy, frames)
        if asked:
            policy.record.variants["generated negative"] = policy.evaluate(
                ctx.data.held_out, method_frames(policy.config, generated_negative=True))
        return policy.record
    return run


def method_frames(config: TrainConfig, generated_negative: bool = False) -> Frames:
    """A method that asks inside its own frame (contrastive SFT) at test time: the frame without a negative
    answer, or with the model's own greedy plain answer as the negative (docs/algorithms.md)."""
    ask = get_method(config.algo).ask

    def frames(policy: Policy, prompts: Sequence[Prompt]) -> list[str]:
        if not generated_negative:
            return [ask(p.text, config, None) for p in prompts]
        first = policy.answer([p.text for p in prompts], temperature=0.0)
        return [ask(p.text, config, a) for p, [a] in zip(prompts, first, strict=True)]
    return frames


# ---------------------------------------------------------------------- from judgments
def hindsight_frames(policy: Policy, prompts: Sequence[Prompt]) -> list[str]:
    template = CUTSettings().template
    return [template.format(prompt=p.text, judgment="Correct.") for p in prompts]


def judgments(algo: str, use: str, **settings: Any) -> Callable[[Context], Record]:
    if use not in ("judgments", "right answers", "verdict"):
        raise ValueError(f"unknown use {use!r} of judgments")

    def run(ctx: Context) -> Record:
        budget = ctx.budget
        policy = ctx.policy(algo, **settings)
        frames = hindsight_frames if use == "verdict" else plain
        template = CUTSettings().template
        for r in range(budget.rounds):
            prompts = ctx.data.judged_prompts[r * ctx.k:(r + 1) * ctx.k]
            answers = policy.answer([p.text for p in prompts], n=budget.judged_samples)
            graded = [(p, a, *world.grade(p, a)) for p, group in zip(prompts, answers, strict=True) for a in group]
            good = [g for g in graded if g[2] >= 1.0]
            bad = [g for g in graded if g[2] < 1.0]
            policy.record.notes.setdefault("good_share", []).append(round(len(good) / max(1, len(graded)), 3))
            if use == "judgments":  # Align-P downsampled to 0.25 x Align-N here, before fitting to K
                good = ctx.rng.sample(good, min(len(good), round(0.25 * len(bad)))) if bad else good
                rows = [{"prompt": p.text, "completion": a, "judgment": j, "label": s >= 1.0}
                        for p, a, s, j in bad + good]
            elif use == "right answers":
                rows = [{"prompt": p.text, "completion": a} for p, a, _, _ in good]
            else:
                rows = [{"prompt": template.format(prompt=p.text, judgment=verdict(j)), "completion": a}
                        for p, a, _, j in graded]
            policy.train(ctx.fit(policy, rows))
            ctx.round_done(policy, frames)
        return policy.record
    return run


# ---------------------------------------------------------------------- from rewards
def rewards(algo: str, **settings: Any) -> Callable[[Context], Record]:
    def run(ctx: Context) -> Record:
        budget, n = ctx.budget, ctx.budget.samples_per_prompt
        policy = ctx.policy(algo, **settings)
        chunk = ctx.k // n  # prompts answered at a time: n answers each, K answers in all
        prompts = iter(ctx.data.judged_prompts)
        for r in range(budget.rounds):
            rows: list[dict[str, Any]] = []
            asked = 0
            for _ in range(-(-len(ctx.data.judged_prompts) // (budget.rounds * chunk))):  # this round's share
                batch = [p for _, p in zip(range(chunk), prompts, strict=False)]
                answers = policy.answer([p.text for p in batch], n=n)
                groups = [graded_group(p, group, r) for p, group in zip(batch, answers, strict=True)]
                rows += rows_from_groups(groups, algo)  # as the live trainer: groups whose rewards all tie give none
                asked += len(batch)
                if len(rows) >= ctx.k or not batch:
                    break
            notes = policy.record.notes
            notes.setdefault("groups_with_signal", []).append(round(len(rows) / n / max(1, asked), 3))
            rows = rows[:ctx.k]  # K answers a round, as every arm (whole groups: K is a multiple of n)
            if len(rows) < ctx.k:
                notes["short_rounds"] = notes.get("short_rounds", 0) + 1
            if rows:
                policy.train(rows)
            ctx.round_done(policy)
        return policy.record
    return run


def graded_group(prompt: Prompt, answers: Sequence[str], round_: int) -> JudgedGroup:
    """A prompt's answers with the world's grades, as the live loop's judge would return them."""
    samples = [Sample(sample_id=f"r{round_}.{prompt.prompt_id}.{j}", prompt_id=prompt.prompt_id, text=a,
                      policy_version=round_) for j, a in enumerate(answers)]
    return JudgedGroup(prompt=prompt, samples=samples,
                       verdicts=[Verdict(sample_id=s.sample_id, score=world.grade(prompt, s.text)[0]) for s in samples])


# ---------------------------------------------------------------------- prompt evolution
def prompts(algo: str, evolve: bool, **settings: Any) -> Callable[[Context], Record]:
    def run(ctx: Context) -> Record:
        policy = ctx.policy(algo, **settings)
        run_creator(ctx, policy, evolve)
        return policy.record
    return run


RUNNERS: dict[str, Callable[..., Callable[[Context], Record]]] = {
    "demonstrations": demonstrations, "pairs": pairs, "judgments": judgments, "rewards": rewards, "prompts": prompts}
GROUPS = tuple(RUNNERS)


ARMS_FILE = Path(__file__).with_name("arms.toml")


def load_arms(path: Path = ARMS_FILE) -> dict[str, Arm]:
    """The arms of arms.toml, each with its group's runner and its family's learning-rate grid; an unknown
    method, group or grid is named."""
    config = read_config_file(path)
    grids = {name: tuple(sorted({float(lr) for lr in lrs})) for name, lrs in config.get("grids", {}).items()}
    for name, lrs in grids.items():  # a rate names its result file and its column: two must not print alike
        if len({f"{lr:g}" for lr in lrs}) < len(lrs):
            raise ValueError(f"{path}: grid {name!r} has learning rates equal to 6 significant digits: {list(lrs)}")
    arms: dict[str, Arm] = {}
    for entry in config["arm"]:
        spec, entry = json.dumps(entry, sort_keys=True), dict(entry)
        missing = [k for k in ("name", "group", "about", "algo", "grid") if k not in entry]
        if missing:
            raise ValueError(f"{path}: arm {entry.get('name', '?')!r} has no {', '.join(missing)}")
        name, group, about, algo, grid = (entry.pop(k) for k in ("name", "group", "about", "algo", "grid"))
        get_method(algo)  # an unknown method is an error here, not when the arm runs
        if group not in RUNNERS:
            raise ValueError(f"{path}: arm {name!r}: unknown group {group!r}; one of {', '.join(RUNNERS)}")
        if grid not in grids or not grids[grid] or min(grids[grid]) <= 0:
            raise ValueError(f"{path}: arm {name!r}: grid {grid!r} is not a [grids] entry of positive learning "
                             f"rates; one of {', '.join(grids)}")
        unknown = set(entry) - {"settings"} - set(inspect.signature(RUNNERS[group]).parameters)
        if unknown:
            raise ValueError(f"{path}: arm {name!r}: {', '.join(sorted(unknown))} is not a key of a {group} arm")
        settings = entry.pop("settings", {})
        arms[name] = Arm(name, group, about, RUNNERS[group](algo, **entry, **settings), algo, grids[grid], spec)
    return arms


ARMS = load_arms()


def run_arm(name: str, ctx: Context) -> Record:
    """One arm for one seed at ctx.lr; train_s is its wall time less evaluation. The trained policy answers
    the validation set last, asked as the arm asks the test set."""
    started = time.perf_counter()
    try:
        record = ARMS[name].run(ctx)
        assert ctx.current is not None, f"arm {name} made no policy"
        record.validation = ctx.current.evaluate(ctx.data.validation, ctx.frames)
    finally:
        if ctx.current is not None:
            ctx.current.close()
    record.train_s = time.perf_counter() - started - record.eval_s
    return record
