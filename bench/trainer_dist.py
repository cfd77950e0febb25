"""Distributed trainer benchmark: the recipe on 1 and on 2 ranks (torchrun, FSDP2) with the same global batch.

    python bench/trainer_dist.py [--ranks 1,2] [--hidden 512] [--layers 8] [--steps 6] [--device cpu]

For SFT with full fine-tuning (where sharding pays: weights, gradients and Adam's two moments are all
split) and DPO with LoRA (where only the frozen base is split), per rank:
- tokens/s: the rank's own tokens (its share of each batch) / wall time of the training steps;
- comm share: time inside collectives (all-gather, reduce-scatter, all-reduce: torch.profiler's c10d and
  gloo/nccl events on the rank's thread) / wall time of the steps; 0 on one rank;
- state MiB: the bytes of the rank's parameters, gradients and optimizer state (its shards), after the
  last step: what sharding divides;
- peak MiB: on a CPU, peak RSS during training above RSS before it (sampled every 2 ms, glibc made to return
  freed memory, as bench/trainer.py does); on a GPU, max_memory_allocated.
The model is a Llama built locally (no download). On a CPU the ranks share the machine's cores, so
tokens/s per rank on 2 ranks mostly shows that sharing; the memory figures are what 2 ranks are for.
`--device cuda --ranks 1` checks the bf16 GPU path (bf16 frozen weights, bf16 compute with fp32 gradient
reduction under FSDP2 needs 2 GPUs; one rank runs the one-process path with bf16 autocast).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.methods.preference import DPO  # noqa: E402
from trainer.methods.sft import SFT  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_trainer", ROOT / "bench" / "trainer.py")
bench_trainer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_trainer)

CASES = {"sft-full": {"algo": SFT.name, "finetune": "full", "lr": 1e-5},
         "dpo-lora": {"algo": DPO.name, "finetune": "lora", "lr": 5e-6, "lora": {"r": 16, "alpha": 32}}}
COMM = ("c10d", "gloo:", "nccl:", "all_gather", "allgather", "reduce_scatter", "allreduce", "all_reduce")


def worker(args: argparse.Namespace) -> None:
    """One rank (torchrun sets RANK etc.): train `steps` steps of one case; rank-N.json gets its figures."""
    from torch.profiler import ProfilerActivity, profile

    from trainer.config import TrainConfig
    from trainer.recipe import Recipe

    case = CASES[args.case]
    data = args.sft_data if case["algo"] == SFT.name else args.pair_data
    config = TrainConfig.model_validate({
        **case, "model": args.model, "data": data, "out": str(Path(args.workdir) / f"{args.case}-{args.ranks}"),
        "batch_size": args.batch_size, "max_steps": args.steps, "max_length": args.max_length,
        "max_prompt_length": args.max_length // 2, "save_every": 10**9, "tensorboard": False, "log_every": 10**9,
        "device": args.device, "warmup_ratio": 0.0})
    recipe = Recipe(config)
    recipe.setup()
    device = recipe.device.type
    tokens = [0]
    take = recipe.next_batch

    def counted():  # this rank's tokens: its share of each batch
        batch = take()
        tokens[0] += 0 if batch.empty else int(batch.attention_mask.sum())
        return batch

    recipe.next_batch = counted
    recipe.precompute_reference()  # outside the timed steps, as in every run
    with bench_trainer.PeakMemory(device) as memory, profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        recipe.train()
        elapsed = time.perf_counter() - start
    tokens = tokens[0]
    comm_us = sum(e.self_cpu_time_total for e in prof.key_averages()
                  if any(k in e.key.lower() for k in COMM))
    state = _state_bytes(recipe)
    result = {"rank": recipe.world.rank, "ranks": recipe.world.size, "device": device, "tokens": tokens,
              "seconds": elapsed, "tokens_per_s": tokens / elapsed, "comm_share": comm_us / 1e6 / elapsed,
              "state_mib": state / 2**20, "peak_mib": memory.delta / 2**20,
              "step_s": recipe.step_seconds[1:] or recipe.step_seconds}
    recipe.cleanup()
    from trainer import distributed
    distributed.stop()
    Path(args.workdir, f"{args.case}-{args.ranks}-rank{result['rank']}.json").write_text(json.dumps(result))


def _state_bytes(recipe) -> int:
    """Bytes this rank holds of parameters (trained and frozen), gradients and optimizer state: local shards."""
    from torch.distributed.tensor import DTensor

    def local(t) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    total = sum(local(p) for p in recipe.model.parameters())
    total += sum(local(p.grad) for p in recipe.model.parameters() if p.grad is not None)
    for state in recipe.optimizer.state.values():
        total += sum(local(v) for v in state.values() if hasattr(v, "numel") and v.dim() > 0)
    return total


def run_case(args: argparse.Namespace, case: str, ranks: int) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               __file__, "--worker", "--case", case, "--ranks", str(ranks), "--model", args.model,
               "--pair-data", args.pair_data, "--sft-data", args.sft_data, "--workdir", args.workdir,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
               str(args.max_length), "--device", args.device]
    threads = max(1, (os.cpu_count() or 1) // ranks)
    env = {**os.environ, "TQDM_DISABLE": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} on {ranks} ranks failed:\n{done.stderr[-4000:]}")
    return [json.loads(Path(args.workdir, f"{case}-{ranks}-rank{r}.json").read_text()) for r in range(ranks)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2", help="rank counts to compare (default 1,2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (pairs or rows)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    for name in ("--model", "--pair-data", "--sft-data", "--workdir"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.ranks = int(args.ranks)
        worker(args)
        return {}

    from trainer.tiny import build_causal_lm, build_tokenizer, default_corpus

    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = tmp
        tokenizer = build_tokenizer(default_corpus())
        model = build_causal_lm(tokenizer, hidden_size=args.hidden, num_layers=args.layers)
        args.model = str(Path(tmp) / "model")
        model.save_pretrained(args.model)
        tokenizer.save_pretrained(args.model)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        args.pair_data = str(bench_trainer.make_data(Path(tmp) / "pairs.jsonl", args.batch_size * args.steps))
        rows = [json.loads(line) for line in Path(args.pair_data).read_text().splitlines()]
        args.sft_data = str(Path(tmp) / "sft.jsonl")
        Path(args.sft_data).write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                                               for r in rows))
        figures: dict = {"params_m": n_params / 1e6, "device": args.device, "cases": {}}
        for case in args.cases.split(","):
            for ranks in map(int, args.ranks.split(",")):
                results = run_case(args, case, ranks)
                row = {"tokens_per_s_per_rank": sum(r["tokens_per_s"] for r in results) / ranks,
                       "comm_share": max(r["comm_share"] for r in results),
                       "state_mib_per_rank": max(r["state_mib"] for r in results),
                       "peak_mib_per_rank": max(r["peak_mib"] for r in results)}
                figures["cases"][f"{case}/{ranks}"] = row
                print(f"{case:9s} {ranks} rank(s): {row['tokens_per_s_per_rank']:8.0f} tokens/s per rank, "
                      f"comm {row['comm_share']:.0%} of a step, state {row['state_mib_per_rank']:7.1f} MiB, "
                      f"peak {row['peak_mib_per_rank']:7.1f} MiB per rank", flush=True)
        for case in args.cases.split(","):
            one, two = figures["cases"].get(f"{case}/1"), figures["cases"].get(f"{case}/2")
            if one and two:
                figures[f"{case}/state_ratio_2_vs_1"] = two["state_mib_per_rank"] / one["state_mib_per_rank"]
                figures[f"{case}/peak_ratio_2_vs_1"] = two["peak_mib_per_rank"] / max(one["peak_mib_per_rank"], 1e-9)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
