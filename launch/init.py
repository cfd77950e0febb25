"""`selfplay init DIR`: a task folder that runs as it is, the starting point of a task of your own.

    init_task("mytask", tiny_model=True)     # then: cd mytask && selfplay up topology.toml

DIR gets a task world (world.py: the checker, the judgment writer and eva's mutator, as docs/tasks.md
describes them), its prompt files (seeds to train on, held-out test and validation sets, disjoint), a
topology that runs eva + RLOO with a verifier judge on one machine, and a README. The model is one you name
(`model`: a local folder or a hub id) or, with `tiny_model`, a tiny Llama built here in seconds: it runs the
whole loop on a CPU in minutes, to try the plumbing and your world, and learns little (it starts from
random weights). Paths in the topology are relative to DIR, so `selfplay up` runs from there.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import structlog

from agents.worlds import reverse

log = structlog.get_logger("launch.init")

TOPOLOGY = """\
# selfplay topology for this task folder: run `selfplay up topology.toml` from this folder (paths are
# relative to it, and world.py is found here). Every section and setting: docs/live.md.

[run]
dir = "run"                       # ledger, adapters, logs, report
rounds = {rounds}

[hub]
control = "ipc"                   # one machine; tcp with keys for several (docs/live.md, Two machines)
data = "ipc"

[creator]
prompts = "prompts/seeds.jsonl"   # {{"prompt", "answer", "demonstration"?, "difficulty"?}} per line
eval_prompts = "prompts/test.jsonl"
validation_prompts = "prompts/validation.jsonl"
mutator = "world:mutate"          # eva's evolver that keeps answers (world.py)

[creator.settings]
samples_per_prompt = 4
temperature = 0.7
max_new_tokens = {max_new_tokens}
prompts_per_task = 32
pool_per_round = 128
rewrites_per_prompt = 1
train_groups = 128
promotion = true                  # a version worse on validation than the best is not served

[solver]
count = 1
model = "{model}"
batch_size = 64

[judge]
backend = "verifier"
checker = "world:check"           # (score, judgment) per response (world.py)

[trainer]
algo = "rloo"
model = "{model}"
lr = {lr}
batch_size = 8
max_length = {max_length}
max_prompt_length = {max_prompt_length}

[trainer.lora]
r = 16
alpha = 32
"""

README = """\
# {name}: a selfplay task

Made by `selfplay init`. Run it from this folder:

    selfplay up topology.toml            # the loop: creator, solver, judge, trainer ({rounds} rounds)
    selfplay status --run-dir run        # while it runs (and after: what the ledger recorded)
    selfplay report run                  # run/summary.json and run/report.png
    selfplay export run --out adapter    # the newest policy version as a PEFT adapter folder

- `world.py`: the task. `check` scores each response and writes what is wrong; `mutate` makes a new prompt
  with its own answer from one the policy finds hard (eva). Make it yours: the contract is in selfplay's
  docs/tasks.md.
- `prompts/`: seeds.jsonl (trained on), test.jsonl (held-out, reported), validation.jsonl (decides which
  version is served); made by `make_prompts` in world.py, with no word in two files.
- `topology.toml`: the processes and their settings; set `model` (solver and trainer) to your own model.
{model_note}"""


class InitError(ValueError):
    """The folder cannot be made as asked (the message says why)."""


def init_task(directory: str | Path, model: str | None = None, tiny_model: bool = False, seed: int = 0,
              rounds: int = 3) -> Path:
    """Write the task folder; returns its path. Exactly one of `model` and `tiny_model`."""
    root = Path(directory)
    if (model is None) == (not tiny_model):
        raise InitError("give the model to train (--model PATH_OR_HUB_ID) or --tiny-model (a tiny one built here)")
    if root.exists() and any(root.iterdir()):
        raise InitError(f"{root} is not empty: init writes a new folder")
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / "world.py").write_text(Path(reverse.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    rng = random.Random(seed)
    test = reverse.make_prompts(150, rng, "test")
    validation = reverse.make_prompts(150, rng, "val", exclude={reverse.word_of(p) for p in test})
    seeds = reverse.make_prompts(512, rng, "seed", exclude={reverse.word_of(p) for p in test + validation})
    for name, prompts in (("seeds", seeds), ("test", test), ("validation", validation)):
        _write_prompts(root / "prompts" / f"{name}.jsonl", prompts)
    if tiny_model:
        _tiny_model(root / "model", [p.text for p in seeds] + [p.answer or "" for p in seeds], seed)
        model = "model"
    settings = {"model": model, "rounds": rounds, "lr": 2e-4, "max_new_tokens": 16, "max_length": 64,
                "max_prompt_length": 48}
    (root / "topology.toml").write_text(TOPOLOGY.format(**settings), encoding="utf-8")
    note = ("\nThe model in `model/` is a tiny Llama with random weights, built by `selfplay init --tiny-model`: "
            "it runs the loop on a CPU in minutes and learns little.\n") if tiny_model else ""
    (root / "README.md").write_text(README.format(name=root.name, rounds=rounds, model_note=note), encoding="utf-8")
    log.info("task folder written", path=str(root), model=model, prompts={"seeds": len(seeds), "test": len(test),
                                                                          "validation": len(validation)})
    return root


def _write_prompts(path: Path, prompts: list) -> None:
    rows = ({"id": p.prompt_id, "prompt": p.text, "answer": p.answer, "demonstration": p.demonstration,
             "difficulty": p.difficulty} for p in prompts)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _tiny_model(path: Path, texts: list[str], seed: int) -> None:
    from trainer.tiny import build_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(texts)
    build_causal_lm(tokenizer, seed, hidden_size=128, num_layers=4).save_pretrained(path)
    tokenizer.save_pretrained(path)
