"""Small arithmetic datasets in every format the trainer reads, written to files like a user's data."""

import json
import random
from pathlib import Path


def _problems(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        yield f"What is {a} + {b}?", str(a + b), str(a + b + rng.choice([-10, -1, 1, 10]))


def rows(kind: str, n: int = 8, seed: int = 0) -> list[dict]:
    if kind == "rewarded":  # n / 2 questions, each answered twice: right (reward 1) and wrong (reward 0)
        return [{"prompt": question, "completion": answer, "reward": reward}
                for question, right, wrong in _problems(n // 2, seed) for answer, reward in ((right, 1.0), (wrong, 0.0))]
    out = []
    for i, (question, right, wrong) in enumerate(_problems(n, seed)):
        if kind == "prompt_completion":
            out.append({"prompt": question, "completion": right})
        elif kind == "messages":
            out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": right}]})
        elif kind == "preference":
            out.append({"prompt": question, "chosen": right, "rejected": wrong})
        elif kind == "preference_chat":
            out.append({"prompt": [{"role": "user", "content": question}],
                        "chosen": [{"role": "assistant", "content": right}],
                        "rejected": [{"role": "assistant", "content": wrong}]})
        elif kind == "judged":
            good = i % 2 == 0
            out.append({"prompt": question, "completion": right if good else wrong, "label": good,
                        "judgment": "Correct." if good else f"Wrong: the sum is {right}, not {wrong}."})
        elif kind == "demonstrations":
            out.append({"prompt": question, "completion": right, "generated": wrong})
        else:
            raise ValueError(kind)
    return out


FORMAT_OF = {"sft": "prompt_completion", "dpo": "preference", "ipo": "preference", "simpo": "preference",
             "contrastive-sft": "preference", "spin": "demonstrations", "gsil": "demonstrations", "cut": "judged",
             "grpo": "rewarded", "rloo": "rewarded"}


def write(path: Path, kind: str, n: int = 8, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(kind, n, seed)))
    return path
