"""Batched sampling from a causal LM: the self-generated answers y_gen of GSIL and SPIN.

    texts = sample_responses(model, tokenizer, ["What is 2 + 3?"], max_new_tokens=16, seed=0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def sample_responses(model: nn.Module, tokenizer: Any, prompts: list[str], *, max_new_tokens: int = 128,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                     add_special_tokens: bool = True) -> list[str]:
    """One sampled response per prompt (greedy when temperature is 0), without special tokens.

    Seeded per batch, so the answers do not depend on what ran before. Prompts are left-padded, as
    generation needs.
    """
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            torch.manual_seed(seed + start)
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=add_special_tokens).to(device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
                else {"do_sample": False}
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, **sampling)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return out
