"""Solver generation benchmark: the hf backend's merged adapter and large batches against its old defaults.

    python bench/solver.py [--hidden 128] [--layers 4] [--prompts 512] [--threads 1]

One tiny Llama (built locally, the demo's size by default) with a published LoRA adapter (r 16, alpha 32,
all linear layers, random weights), arithmetic prompts, one CPU thread per solver as the demo runs them.
Three ways to serve it, each timed on the same prompts in the same process:
- baseline: the adapter's LoRA layers run unmerged, 16 prompts per generate() call (before this change);
- merged: the adapter merged into the base weights, 16 prompts per call;
- merged, batch 128: merged, 128 prompts per call (a whole task of the demo).
Two workloads: greedy answers (n=1, what evaluation asks) and 4 samples per prompt at temperature 0.7
(what a round asks), up to 48 new tokens. Figures: generated tokens per second and the ratio to the
baseline; `same_greedy` is the share of greedy answers identical to the baseline's (merging changes the
weights' rounding, so a near tie between two tokens may break the other way). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(directory: Path, hidden: int, layers: int) -> tuple[Path, dict, dict]:
    """A tiny Llama and tokenizer in `directory`, and a random LoRA adapter for it (config, tensors)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from agents.worlds import arithmetic as world
    from trainer.tiny import build_causal_lm, build_tokenizer

    rng = random.Random(0)
    corpus = [f"{p.text} {p.solution()}" for p in world.problems(2000, (1, 2, 3, 4, 5), rng, distinct=False)]
    tokenizer = build_tokenizer(corpus, vocab_size=384, individual_digits=True)
    model = build_causal_lm(tokenizer, seed=0, hidden_size=hidden, num_layers=layers,
                            intermediate_size=3 * hidden, max_positions=256)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    peft = get_peft_model(model, LoraConfig(**config, init_lora_weights=False))
    tensors = {k: v * 0.1 for k, v in get_peft_model_state_dict(peft).items()}  # a modest delta, as training makes
    return directory, config, tensors


def timed(generator, prompts, sampling) -> tuple[float, int, list[list[int]]]:
    started = time.perf_counter()
    groups = generator.generate(prompts, sampling)
    seconds = time.perf_counter() - started
    ids = [g.token_ids for group in groups for g in group]
    return seconds, sum(len(i) for i in ids), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=512, help="greedy prompts (a quarter of them are sampled x4)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from agents.backends.hf import HFGenerator
    from agents.worlds import arithmetic as world
    from protocol.messages import SamplingParams

    torch.set_num_threads(args.threads)
    problems = world.problems(args.prompts, (2, 3, 4), random.Random(1))
    prompts = [p.prompt(f"bench-{i}") for i, p in enumerate(problems)]
    workloads = {"greedy": (prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=48, seed=0)),
                 "sampled x4": (prompts[:len(prompts) // 4],
                                SamplingParams(n=4, temperature=0.7, top_p=1.0, max_new_tokens=48, seed=0))}
    arms = {"baseline": (False, 16), "merged": (True, 16), "merged, batch 128": (True, 128)}
    with tempfile.TemporaryDirectory() as tmp:
        path, config, tensors = build(Path(tmp), args.hidden, args.layers)
        results: dict[str, dict[str, float]] = {}
        reference: list[list[int]] = []
        for arm, (merge, batch) in arms.items():
            generator = HFGenerator(str(path), device="cpu", batch_size=batch)
            generator._merge = merge  # the baseline: the adapter's layers unmerged, as before this change
            generator.load_policy(1, config, tensors)
            timed(generator, prompts[:16], workloads["greedy"][1])  # warm-up
            results[arm] = {}
            for name, (batch_prompts, sampling) in workloads.items():
                seconds, tokens, ids = timed(generator, batch_prompts, sampling)
                results[arm][name] = tokens / seconds
                if name == "greedy":
                    reference = reference or ids
                    same = sum(a == b for a, b in zip(ids, reference, strict=True)) / len(ids)
                    results[arm]["same_greedy"] = same
            print(f"{arm:>18}: " + ", ".join(f"{name} {results[arm][name]:,.0f} tokens/s ("
                                               f"{results[arm][name] / results['baseline'][name]:.2f}x)"
                                               for name in workloads)
                  + f"; greedy answers as the baseline's: {results[arm]['same_greedy']:.3f}", flush=True)
    figures = {"hidden": args.hidden, "layers": args.layers, "threads": args.threads, "prompts": args.prompts}
    for arm, row in results.items():
        key = arm.replace(", ", "_").replace(" ", "_")
        figures |= {f"{key}_{name.replace(' ', '')}_tokens_per_s": round(row[name], 1) for name in workloads}
        figures |= {f"{key}_{name.replace(' ', '')}_speedup": round(row[name] / results["baseline"][name], 3)
                    for name in workloads}
        figures[f"{key}_same_greedy"] = round(row["same_greedy"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
