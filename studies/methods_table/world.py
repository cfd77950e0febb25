"""The methods table's budget and data: one SFT start, fixed training sets, one held-out set.

Every arm of the table starts from the same SFT model (the demo's recipe, with a tokenizer that also
knows the words of judgments and prompt frames) and sees `rounds x examples_per_round` training
examples. The training sets are drawn once (seeded by `Budget.data_seed`) and never contain a
held-out prompt; the seeds of the seed list change LoRA initialisation, data order and sampling.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.worlds import arithmetic as world
from launch.demo import Plan, Say, prepare_model, write_data
from protocol.messages import Prompt
from trainer.methods.contrastive import ContrastiveSettings, contrastive_prompt
from trainer.methods.cut import CUTSettings

TABLE_DATA = {"seeds": 2048, "seed_levels": (2, 3, 4), "sft_three_operands": 0.10, "guard_seeds": 0}


@dataclass(frozen=True)
class Budget:
    """Every knob of the table; `QUICK` shrinks them to a smoke run."""

    # the demo's first SFT recipe (its data: 2,048 seed prompts of levels 2-4 drawn first, 10% three-operand
    # problems), twice the steps (half of the examples are framed; see framed_sft); pinned, so that the demo's
    # recipe can change without changing the table's start
    model: Plan = field(default_factory=lambda: Plan(sft_steps=1000, wrong_demonstrations=0.2, sft_max_prompt_length=112,
                                                     **TABLE_DATA))
    vocab_size: int = 512
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    rounds: int = 4  # SPIN/GSIL iterations, online rounds of CUT and eva; offline pair arms: passes of K
    examples_per_round: int = 512  # K: examples every arm trains on per round
    samples_per_prompt: int = 4  # answers per prompt where pairs or groups are built (offline pairs, eva, rewards)
    judged_samples: int = 2  # answers per prompt in the judgment arms
    temperature: float = 0.7  # sampling of every training answer (eva's defaults, docs/live.md)
    top_p: float = 0.9
    max_new_tokens: int = 48
    demonstrations: int = 512  # prompts with a demonstration (a share of them wrong), iterated on
    pair_prompts: int = 3072  # prompts the offline pairs are drawn from (one pair per usable prompt)
    pool_per_round: int = 512  # eva / static: prompts solved per round
    # difficulty of every training prompt set: what the start mostly solves (level 3: two 3-digit numbers) and the
    # level it barely does (4: three numbers), where a method has something to add
    levels: tuple[int, ...] = (3, 4)
    # the held-out test set and the validation set (which selects each arm's lr), most prompts on level 4; level 2
    # shows what a method forgets
    eval_per_level: tuple[tuple[int, int], ...] = ((2, 200), (3, 200), (4, 400))
    validation_per_level: tuple[tuple[int, int], ...] = ((2, 200), (3, 200), (4, 400))
    framed_share: float = 0.5  # SFT examples asked inside the arms' frames (judgments and negatives of this problem)
    lr_points: int = 0  # learning rates of each arm's grid (arms.toml) that run: 0 all, k the k smallest
    # warmup, then decay over the arm's whole run: 10% and cosine, the most common of the authors' recipes (SPIN and
    # GSIL decay linearly, CUT warms up for 100 steps; docs/methods.md)
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    batch_size: int = 8
    lora_r: int = 16
    max_length: int = 160
    max_prompt_length: int = 112

    def fingerprint(self) -> str:
        """What a result depends on; a saved result with another fingerprint is not reused."""
        return json.dumps({k: v for k, v in asdict(self).items() if k not in ("seeds", "lr_points")}, sort_keys=True)


QUICK = Budget(model=Plan(hidden=32, layers=1, sft_steps=20, sft_batch=16, wrong_demonstrations=0.2,
                          sft_max_prompt_length=112, **TABLE_DATA), seeds=(0,),
               rounds=1, examples_per_round=16, demonstrations=16, pair_prompts=48, pool_per_round=16,
               eval_per_level=((2, 8), (3, 4), (4, 4)), validation_per_level=((2, 8), (3, 4), (4, 4)),
               lr_points=2, max_new_tokens=24)


def quick_budget(**changes: Any) -> Budget:
    return replace(QUICK, **changes)


@dataclass
class Data:
    """The prompt sets every arm draws from (all disjoint from `held_out`)."""

    model: Path
    held_out: list[Prompt]  # the test set: what the table reports
    validation: list[Prompt]  # what each arm's learning rate is selected on
    demonstrations: list[Prompt]  # with .demonstration, a share of them stating a wrong result
    pair_prompts: list[Prompt]
    judged_prompts: list[Prompt]  # rounds x examples_per_round, a fresh slice each round
    eva_seeds: list[Prompt]


def tokenizer_words(rng: random.Random, n: int = 400) -> tuple[str, ...]:
    """Texts with the words the arms put in prompts: judgments of wrong answers, CUT's and contrastive
    SFT's frames. Only the tokenizer sees them; the model never trains on them before an arm does."""
    cut, contrastive = CUTSettings(), ContrastiveSettings()
    texts = [contrastive.template.format(instruction=contrastive.instruction, question="", negative=""),
             cut.template.format(prompt="", judgment="")]
    for p in world.problems(n, (1, 2, 3, 4), rng, distinct=False):
        prompt = p.prompt("w")
        wrong = str(world.corrupt(p.value, rng)) if rng.random() < 0.8 else str(p.value * 10 + 1)
        texts += [world.grade(prompt, wrong)[1], world.grade(prompt, str(p.value))[1]]
    return tuple(texts)


def framed_sft(plain: Path, out: Path, share: float, rng: random.Random) -> Path:
    """The SFT data with `share` of its prompts put in the frames the arms ask in, filled as a pretrained LLM would
    have read them, so that the start has the in-context abilities the arms assume. Half of the framed rows use
    CUT's judgment template, which means "the response that received this judgment" (Align-N trains a bad answer
    in it): the checker's judgment of an answer to this problem (wrong three times in four: it says which digits
    are wrong, and what the result is) or its verdict alone (hindsight's "The tens digit is wrong."), with that
    answer as the completion, so that given a critique the start makes the answer it criticises more likely, the
    signal CUT's Misalign term detects. The other half use contrastive SFT's frame, a wrong worked answer to this
    problem as the negative or none, with the right worked answer as the completion: the start answers away from
    a negative. Without frames the tiny start answers 0.5% of held-out prompts once words stand between question
    and answer; with fillers that say nothing about the problem it learnt to ignore them (p(y|x,j) = p(y|x)); with
    judgments followed by the right answer it learnt the opposite of CUT's frame, and CUT flagged 4% of tokens."""
    rows = [json.loads(line) for line in plain.read_text().splitlines()]
    cut, contrastive = CUTSettings(), ContrastiveSettings()
    for row in rows:
        kind, problem = rng.random(), world.parse(row["prompt"])
        if kind >= share or problem is None:
            continue
        wrong = world.corrupt(problem.value, rng)
        if kind < share / 2:
            given = wrong if rng.random() < 0.75 else problem.value
            judgment = world.grade(problem.prompt("framed"), str(given))[1]
            row["prompt"] = cut.template.format(prompt=row["prompt"], judgment=rng.choice([judgment, verdict(judgment)]))
            row["completion"] = problem.solution(given)
        else:
            negative = problem.solution(wrong) if rng.random() < 0.5 else None
            row["prompt"] = contrastive_prompt(row["prompt"], contrastive, negative=negative)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def verdict(judgment: str) -> str:
    """A judgment without its worked answer ("The tens digit is wrong: 37 + 48 is 85, not 75." -> "The tens
    digit is wrong."): what hindsight conditions on, since at test time no answer can be given to it."""
    return judgment.split(":")[0].rstrip(".") + "."


def prepare(budget: Budget, root: Path, say: Say) -> Data:
    """The SFT start (cached in ROOT/model) and the prompt sets."""
    plan = replace(budget.model, eval_per_level=budget.eval_per_level, validation_per_level=budget.validation_per_level,
                   seed=budget.data_seed)
    files = write_data(plan, root / "data")  # the SFT data, the test and validation sets, as the demo makes them
    sft = framed_sft(files["warmup"], root / "data" / "sft-framed.jsonl", budget.framed_share, random.Random(2))
    model = prepare_model(plan, root / "model", sft, say, words=tokenizer_words(random.Random(1)),
                          vocab_size=budget.vocab_size)
    held_out, validation = (
        [Prompt.model_validate({"prompt_id": r["id"], "text": r["prompt"], "answer": r["answer"],
                                "difficulty": r["difficulty"], "source": "eval"})
         for r in map(json.loads, files[name].read_text().splitlines())] for name in ("eval", "validation"))
    rng = random.Random(budget.data_seed + 1)
    taken = {p.text for p in held_out + validation}

    def draw(n: int, prefix: str) -> list[Prompt]:
        made = world.problems(n, budget.levels, rng, exclude=taken)
        taken.update(p.text for p in made)
        return [p.prompt(f"{prefix}{i}") for i, p in enumerate(made)]

    demos = world.demonstrations(world.problems(budget.demonstrations, budget.levels, rng, exclude=taken), rng,
                                 wrong_fraction=budget.model.wrong_demonstrations, prefix="demo")
    taken.update(p.text for p in demos)
    return Data(model=model, held_out=held_out, validation=validation, demonstrations=demos,
                pair_prompts=draw(budget.pair_prompts, "pair"),
                judged_prompts=draw(budget.rounds * budget.examples_per_round, "judged"),
                eva_seeds=draw(budget.pool_per_round * 2, "seed"))
