"""Trainer benchmark: our DPO recipe against TRL's DPOTrainer and against bare compute, in one run.

    python bench/trainer.py [--pairs 96] [--batch-size 8] [--epochs 2] [--hidden 256] [--layers 4]

Both trainers get the same tiny Llama (built locally), the same preference pairs, batch size,
sequence lengths, LoRA settings (r 16, alpha 32, all linear layers), beta, learning rate, number
of epochs and precision (fp32 on a CPU, bf16 autocast on a GPU that has it; no gradient
checkpointing), each in its own process, each with its own default data handling (we batch by
length and cache reference log-probs; TRL computes them every step unless told to precompute):
- pairs/s: pairs trained / wall time of the training loop (setup and tokenization excluded);
- peak memory: on a CPU, peak RSS during training minus RSS just before it, sampled every 2 ms by a
  thread, in a second run of each trainer with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns
  freed tensors to the OS and RSS follows live memory (with the default allocator, retained and
  fragmented heap moves RSS by hundreds of MiB between steps); on a GPU, max_memory_allocated;
- compute fraction: in our worker, after training, a bare forward + backward of the model (full
  logits, no loss, no optimizer) on exactly the batches the recipe trained on, against the recipe's
  own step times. 1.0 would mean every second of a step is that compute.
Needs the bench extra (`pip install -e '.[bench]'`, TRL). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LORA = {"r": 16, "alpha": 32}
WORDS = ("the answer is because first add the tens then the ones carry one so the sum equals check each digit "
         "again and write the result").split()


def make_data(path: Path, pairs: int, seed: int = 0) -> Path:
    """Preference pairs with answers of varied length (12-60 words), as real data has."""
    rng = random.Random(seed)
    rows = []
    for _ in range(pairs):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        explain = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 60)))
        rows.append({"prompt": f"What is {a} + {b}? Explain.", "chosen": f"{explain} {a + b}",
                     "rejected": f"{explain} {a + b + rng.choice([-10, 10])}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class PeakMemory:
    """Peak memory above the level at start: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self.thread.join()
            self.peak = max(self.peak, self._rss())
        self.delta = self.peak - self.base


def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    from trainer.checkpoint import Cursor
    from trainer.config import TrainConfig
    from trainer.methods.preference import DPO
    from trainer.recipe import Recipe

    config = TrainConfig(algo=DPO.name, model=args.model, data=args.data, out=str(Path(args.workdir) / "ours"),
                         batch_size=args.batch_size, epochs=args.epochs, lr=5e-5, max_length=args.max_length,
                         max_prompt_length=args.max_length // 2, lora=LORA, save_every=10**9,
                         tensorboard=False, log_every=10**9)
    recipe = Recipe(config)
    recipe.setup()
    device = recipe.device.type
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        recipe.train()
        elapsed = time.perf_counter() - start
    recipe.cleanup()

    # Bare compute on the very batches the recipe trained on (replayed from a fresh data cursor):
    # the model's full forward (all logits) + backward, no loss terms, no reference, no optimizer.
    recipe.cursor = Cursor()
    batches = [recipe.next_batch() for _ in range(recipe.total_steps)]
    bare_times = []
    for batch in batches:
        t = time.perf_counter()
        logits = recipe.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits.float().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        bare_times.append(time.perf_counter() - t)
        recipe.model.zero_grad(set_to_none=True)
    steady = slice(1, None)  # the first step pays one-time allocation in both
    return {"pairs": sum(len(b.indices) for b in batches), "seconds": elapsed, "peak_bytes": memory.delta,
            "step_s": sum(recipe.step_seconds[steady]), "bare_s": sum(bare_times[steady]), "device": device}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = DPOConfig(output_dir=str(Path(args.workdir) / "trl"), per_device_train_batch_size=args.batch_size,
                       num_train_epochs=args.epochs, learning_rate=5e-5, beta=0.1, max_length=args.max_length,
                       report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
                       use_cpu=device == "cpu", seed=0, dataloader_num_workers=0,
                       # TRL 1.x turns on bf16 autocast and gradient checkpointing by default, even on a
                       # CPU; match our recipe instead (bf16 only on a GPU that has it, no checkpointing),
                       # or the comparison would measure precision and recomputation, not the trainers.
                       bf16=device == "cuda" and torch.cuda.is_bf16_supported(), gradient_checkpointing=False)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - start
    return {"pairs": len(rows) * args.epochs, "seconds": elapsed, "peak_bytes": memory.delta, "device": device}


def spawn(worker: str, args: argparse.Namespace, memory_run: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--model", args.model, "--data", args.data,
           "--workdir", args.workdir, "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--max-length", str(args.max_length)]
    env = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars off: they would be timed too
    if memory_run:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{worker} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=96, help="preference pairs in the dataset (default 96)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data (default 2)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--hidden", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (worker_ours if args.worker == "ours" else worker_trl)(args)
        print(json.dumps(result))
        return result

    from trainer.tiny import save_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_tiny_models(Path(tmp) / "model", hidden_size=args.hidden, num_layers=args.layers,
                                 num_heads=8, num_kv_heads=4, intermediate_size=args.hidden * 4)
        args.model, args.workdir = str(paths.policy), tmp
        args.data = str(make_data(Path(tmp) / "pairs.jsonl", args.pairs))
        ours, trl = spawn("ours", args), spawn("trl", args)
        if ours["device"] == "cpu":
            ours["peak_bytes"] = spawn("ours", args, memory_run=True)["peak_bytes"]
            trl["peak_bytes"] = spawn("trl", args, memory_run=True)["peak_bytes"]
    ours_rate, trl_rate = ours["pairs"] / ours["seconds"], trl["pairs"] / trl["seconds"]
    result = {
        "bench": "trainer",
        "pairs_per_s_vs_trl": round(ours_rate / trl_rate, 3),
        "peak_mem_vs_trl": round(ours["peak_bytes"] / max(trl["peak_bytes"], 1), 3),
        "compute_fraction": round(ours["bare_s"] / ours["step_s"], 3),
        "ours_pairs_per_s": round(ours_rate, 2), "trl_pairs_per_s": round(trl_rate, 2),
        "ours_peak_mib": round(ours["peak_bytes"] / 2**20, 1), "trl_peak_mib": round(trl["peak_bytes"] / 2**20, 1),
        "device": ours["device"], "pairs": args.pairs, "epochs": args.epochs, "batch_size": args.batch_size,
        "hidden": args.hidden, "layers": args.layers,
    }
    print(f"pairs/s: ours {ours_rate:.2f}, TRL {trl_rate:.2f} -> {result['pairs_per_s_vs_trl']}x (target >= 1.3)")
    print(f"peak training memory: ours {result['ours_peak_mib']} MiB, TRL {result['trl_peak_mib']} MiB -> "
          f"{result['peak_mem_vs_trl']}x (target <= 1.0)")
    print(f"compute fraction: {result['compute_fraction']} of our step time is bare forward+backward (target >= 0.85)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
