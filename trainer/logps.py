"""Log-probs of response tokens: computed here, and only here, for every loss.

    out = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.score_mask)
    out.logps        # (N,)   sum of log p(token) over scored tokens
    out.lengths      # (N,)   number of scored tokens
    out.token_logps  # (N, L) per scored token, left-aligned (L = most scored tokens in a row)
    out.mask         # (N, L)

Efficiency: the decoder runs once on the whole batch (both sides of every pair stacked by
`trainer.data.collate`); the LM head runs only at positions whose next token is scored, so no logits
are computed for prompts or padding; log-softmax is taken as gather - logsumexp in chunks, so the
(positions x vocab) matrix never exists whole in float32. Models whose logits are post-processed
(Gemma-2's soft-capping, Cohere's scale) fall back to the model's own full forward.

The reference policy is the same model with its LoRA adapter disabled (no second copy), or a frozen
copy for full fine-tuning (`reference_logps`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_CHUNK_ROWS = 4096  # positions per lm_head/logsumexp chunk: bounds the float32 (rows x vocab) buffer


@dataclass
class SeqLogps:
    logps: Tensor  # (N,)
    lengths: Tensor  # (N,)
    token_logps: Tensor  # (N, L)
    mask: Tensor  # (N, L) bool

    def rows(self, index: slice | Tensor | list[int]) -> SeqLogps:
        return SeqLogps(self.logps[index], self.lengths[index], self.token_logps[index], self.mask[index])


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay injected and active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_is_plain(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


def selective_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per row, as logit[target] - logsumexp(logits), in float32.

    logits: (M, V), targets: (M,) -> (M,)
    """
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor) -> SeqLogps:
    """Per-token and per-sequence log-probs of the scored tokens. input_ids etc.: (N, T)."""
    target_mask = score_mask[:, 1:] & attention_mask[:, 1:].bool()  # (N, T-1): token t+1 scored from position t
    targets = input_ids[:, 1:][target_mask]  # (M,)
    base = _unwrap(model)
    if _head_is_plain(base) and hasattr(base, "get_decoder"):
        # a sharded model carries this function as its method `scored_logps`, which FSDP's hooks wrap
        scored = getattr(base, "scored_logps", None) or (lambda *args: scored_logps(base, *args))
        flat = scored(input_ids, attention_mask, target_mask, targets)
    else:  # the model's own head (soft-capping, logit scales): full logits, then select
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        flat = selective_logps(logits[target_mask], targets)
    return _scatter(flat, target_mask)


def scored_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor,
                 targets: Tensor) -> Tensor:
    """(M,) log-probs of `targets`, the tokens where `target_mask` (N, T-1) is set: the decoder on the whole batch,
    the head only at those positions, in chunks. `model` is the transformers model (no peft wrapper)."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    selected = hidden[:, :-1][target_mask]  # (M, H) only where a scored token is predicted
    if not len(targets):
        return hidden.new_zeros(0, dtype=torch.float32)
    head = model.get_output_embeddings()
    return torch.cat([selective_logps(head(selected[i:i + _CHUNK_ROWS]), targets[i:i + _CHUNK_ROWS])
                      for i in range(0, len(targets), _CHUNK_ROWS)])


def _scatter(flat: Tensor, target_mask: Tensor) -> SeqLogps:
    """(M,) values in row-major order of `target_mask` -> left-aligned (N, L) with a mask."""
    lengths = target_mask.sum(-1)  # (N,)
    width = int(lengths.max()) if len(lengths) else 0
    column = torch.cumsum(target_mask.long(), dim=-1) - 1  # (N, T-1) column of each scored token
    row_index, _ = target_mask.nonzero(as_tuple=True)
    token_logps = flat.new_zeros(target_mask.shape[0], width)
    token_logps = token_logps.index_put((row_index, column[target_mask]), flat)
    mask = torch.arange(width, device=flat.device)[None, :] < lengths[:, None]
    return SeqLogps(token_logps.sum(-1), lengths.to(flat.dtype), token_logps, mask)


@contextlib.contextmanager
def reference_mode(model: nn.Module, use_adapter: bool = False):
    """Eval mode (no dropout), no grad and, for a peft model, the adapter disabled unless `use_adapter`
    (then the reference is the policy as it is now: the start of an online round)."""
    was_training = model.training
    model.eval()
    off = hasattr(model, "disable_adapter") and not use_adapter
    ctx = model.disable_adapter() if off else contextlib.nullcontext()
    try:
        with ctx, torch.no_grad():
            yield
    finally:
        model.train(was_training)


def reference_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor,
                    frozen_reference: nn.Module | None = None, current: bool = False) -> SeqLogps:
    """Log-probs under the reference: `model` as it is now if `current` (online rounds), else
    `frozen_reference` if given (full fine-tuning), else `model` with its adapter disabled."""
    if frozen_reference is not None and not current:
        with torch.no_grad():
            return sequence_logps(frozen_reference, input_ids, attention_mask, score_mask)
    if not current and not hasattr(model, "disable_adapter"):
        raise ValueError("full fine-tuning needs a frozen reference model")
    with reference_mode(model, use_adapter=current):
        return sequence_logps(model, input_ids, attention_mask, score_mask)
