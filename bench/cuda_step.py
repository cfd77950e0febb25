"""One training step per algorithm on CUDA in bf16: the GPU check of the trainer.

    python bench/cuda_step.py [--steps 3]

Builds the tiny Llama locally, writes a small dataset per algorithm, and runs `--steps` optimizer
steps of every method with precision=bf16 on cuda:0, reporting the loss, its finiteness and the
median step time. Without CUDA it says so and exits 0. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per algorithm (default 3)")
    args = parser.parse_args(argv)
    import math

    import torch

    if not torch.cuda.is_available():
        result = {"bench": "cuda_step", "skipped": "no CUDA device"}
        print(json.dumps(result))
        return result
    from tests.trainer.datasets import FORMAT_OF, write
    from trainer.config import TrainConfig
    from trainer.methods import names
    from trainer.recipe import Recipe
    from trainer.tiny import save_tiny_models

    per_algo = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_models(Path(tmp) / "m").policy
        for algo in names():
            data = write(Path(tmp) / f"{algo}.jsonl", FORMAT_OF[algo], n=16)
            config = TrainConfig(algo=algo, model=str(model), data=str(data), out=str(Path(tmp) / algo),
                                 device="cuda", precision="bf16", batch_size=8, max_steps=args.steps,
                                 tensorboard=False, save_every=10**9)
            recipe = Recipe(config)
            recipe.setup()
            metrics = recipe.train()
            recipe.cleanup()
            per_algo[algo] = {"loss": round(metrics["loss"], 4), "finite": math.isfinite(metrics["loss"]),
                              "step_ms": round(statistics.median(recipe.step_seconds) * 1e3, 1)}
            print(f"{algo:16s} loss {metrics['loss']:.4f}  median step {per_algo[algo]['step_ms']} ms")
    result = {"bench": "cuda_step", "device": torch.cuda.get_device_name(0), "bf16": True,
              "all_finite": all(v["finite"] for v in per_algo.values()), "algos": per_algo}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
