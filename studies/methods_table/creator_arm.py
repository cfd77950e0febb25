"""eva and static arms: the real creator (agents/creator.py) on a LocalLink whose workers are this arm's
policy (answers), the world's checker (verdicts) and the policy's trainer (DPO + NLL on K pairs a round).

The creator decides what eva decides in the live system: which prompts to solve, their informativeness,
which to evolve and how (the world's mutator), and the 20/80 old/new mix of the groups it trains on.
"""

from __future__ import annotations

from collections import Counter

from agents.creator import Creator, CreatorConfig
from agents.local import LocalLink
from agents.worlds import arithmetic as world
from protocol.messages import Assign, GenerateResult, JudgeResult, Sample, TrainingReport, Verdict
from studies.methods_table.context import Context
from studies.methods_table.policy import Policy
from trainer.methods import rows_from_groups


def run_creator(ctx: Context, policy: Policy, evolve: bool) -> None:
    budget, state = ctx.budget, {"version": 0}
    notes = policy.record.notes
    link = LocalLink()

    def generate(assign: Assign) -> None:
        task = assign.task
        answers = policy.answer([p.text for p in task.prompts], n=task.sampling.n,
                                temperature=task.sampling.temperature)
        link.complete(assign, GenerateResult(samples=[
            Sample(sample_id=f"{assign.task_id}-{i}-{j}", prompt_id=p.prompt_id, text=text,
                   policy_version=state["version"])
            for i, (p, group) in enumerate(zip(task.prompts, answers, strict=True)) for j, text in enumerate(group)]))

    def judge(assign: Assign) -> None:
        link.complete(assign, JudgeResult(verdicts=[
            Verdict(sample_id=s.sample_id, score=world.grade(g.prompt, s.text)[0])
            for g in assign.task.groups for s in g.samples]))

    def train(assign: Assign) -> None:
        groups = assign.task.groups
        notes.setdefault("evolved_share", []).append(
            round(sum(g.prompt.source == "evolved" for g in groups) / max(1, len(groups)), 3))
        rows = rows_from_groups(groups, policy.config.algo)
        policy.train(ctx.fit(policy, rows))
        ctx.round_done(policy)
        state["version"] += 1
        link.complete(assign, TrainingReport(policy_version=state["version"], step=policy.recipe.cursor.step,
                                             examples=ctx.k))

    link.workers = {"generate": generate, "judge": judge, "train": train}
    config = CreatorConfig(algo=policy.config.algo, samples_per_prompt=budget.samples_per_prompt, temperature=budget.temperature,
                           top_p=budget.top_p, max_new_tokens=budget.max_new_tokens, prompts_per_task=10**6, evolve=evolve,
                           pool_per_round=budget.pool_per_round, rewrites_per_prompt=1, min_train_score=1.0,
                           train_groups=ctx.k, seed=ctx.seed)
    creator = Creator(link, config, ctx.data.eva_seeds, mutator=world.mutate)
    creator.run(budget.rounds)
    notes["pool"] = len(creator.pool)
    notes["evolved_by_mutation"] = dict(Counter(p.mutation for p in creator.pool if p.source == "evolved"))
    notes["evolved_difficulty"] = dict(Counter(p.difficulty for p in creator.pool if p.source == "evolved"))
