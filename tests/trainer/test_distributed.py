"""Two ranks (torchrun, gloo, FSDP2) train what one process trains on the same global batch, and resume each other.

The ranks run the user's command, `selfplay train --nproc 2`, as real processes; the one-process runs use the same
config. Batches are chosen so that the ranks' shares differ in size and one share is empty.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.trainer.datasets import write
from trainer.config import TrainConfig
from trainer.recipe import run

REPO = Path(__file__).resolve().parents[2]
# fp32 on CPU: the ranks' reduce-scatter sums gradients in another order than one backward does
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def config(tmp_path: Path, tiny_models, algo: str, fmt: str, rows: int, **overrides) -> TrainConfig:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write(data, fmt, n=rows)
    settings = {"algo": algo, "model": str(tiny_models.policy), "data": str(data), "out": str(tmp_path / "out"),
                "batch_size": 5, "max_steps": 4, "lr": 2e-3, "warmup_ratio": 0.0, "scheduler": "constant",
                "save_every": 2, "tensorboard": False, "max_length": 64, "max_prompt_length": 32,
                "lora": {"r": 4, "alpha": 8}, **overrides}
    return TrainConfig.model_validate(settings)


def train_ranks(config: TrainConfig, nproc: int, *flags: str) -> str:
    """`selfplay train --config FILE --nproc N` in a subprocess, as a user runs it; its log."""
    file = Path(config.out).parent / f"config-{nproc}.json"
    file.write_text(json.dumps(config.model_dump()))
    done = subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", str(file), "--nproc", str(nproc),
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    log = done.stdout + done.stderr
    assert f"ranks={nproc}" in log and (nproc == 1 or "rank=1" in log), "each rank set up as one of nproc"
    return log


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors")


def assert_same_run(one: Path, two: Path, step: int) -> None:
    assert losses(two) == pytest.approx(losses(one), rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"])
    a, b = weights(one, step), weights(two, step)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], **TOLERANCE)


@pytest.mark.parametrize("algo, fmt, finetune", [("dpo", "preference", "lora"), ("gsil", "demonstrations", "lora"),
                                                 ("sft", "prompt_completion", "full")])
def test_two_ranks_train_what_one_process_trains(tmp_path, tiny_models, algo, fmt, finetune):
    """11 rows at batch 5: shares of 3 and 2, then a batch of 1 whose second share is empty (the rank computes
    a stand-in and weighs it 0). LoRA for the pair methods, every weight for SFT (a token-mean loss, so the ranks
    are weighted by tokens, not rows)."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = config(tmp_path / "one", tiny_models, algo, fmt, 11, finetune=finetune, max_steps=6)
    two = config(tmp_path / "two", tiny_models, algo, fmt, 11, finetune=finetune, max_steps=6)
    run(one)
    log = train_ranks(two, 2)
    assert_same_run(Path(one.out), Path(two.out), 6)
    # sharded: each rank holds about half of the weights (setup logs the rank's own elements as `held`)
    total = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(tiny_models.policy).parameters())
    held = [int(n) for n in re.findall(r"held=(\d+)", log)]
    assert len(held) == 2 and all(n < 0.6 * total for n in held) and sum(held) >= total, (held, total)
    final = Path(two.out) / ("adapter" if finetune == "lora" else "model")
    assert final.is_dir() and any(final.glob("*.safetensors")), "rank 0 exports the gathered weights"
    before = load_file(next(Path(tiny_models.policy).glob("*.safetensors")))
    after = weights(Path(two.out), 6)
    if finetune == "full":
        common = [n for n in after if n in before]
        assert common and all(not torch.equal(after[n], before[n]) for n in common), "every weight trains"


def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, tiny_models):
    """6 steps straight on one process == 2 steps on 2 ranks, --resume to 4 on one process, --resume to 6 on 2."""
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    straight = config(tmp_path / "straight", tiny_models, "dpo", "preference", 9, max_steps=6)
    run(straight)
    split = config(tmp_path / "split", tiny_models, "dpo", "preference", 9, max_steps=6)
    train_ranks(split.model_copy(update={"max_steps": 2}), 2)
    run(split.model_copy(update={"max_steps": 4}), resume=True)  # one process, as train_ranks(..., 1) runs it
    for name, tensor in weights(Path(straight.out), 4).items():  # 2 ranks -> 1
        torch.testing.assert_close(weights(Path(split.out), 4)[name], tensor, **TOLERANCE)
    train_ranks(split, 2, "--resume")
    assert_same_run(Path(straight.out), Path(split.out), 6)
