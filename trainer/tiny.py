"""Tiny models built locally: a byte-level BPE tokenizer, a Llama-family causal LM and a reward model.

Tests and the CPU demo use these instead of downloading anything. They are saved with
`save_pretrained` and loaded back with the `Auto*` classes, so they take exactly the code path a
user's real model (a local directory or a hub id) takes.

    from trainer.tiny import save_tiny_models
    paths = save_tiny_models("/tmp/tiny")           # tokenizer + policy + reward model
    model = AutoModelForCausalLM.from_pretrained(paths.policy)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A minimal chat format in the spirit of Zephyr/Phi: one role tag per turn, `<|end|>` closes it, and the
# generation prompt opens an assistant turn. Responses end with eos so sampling stops. (The newline is
# an expression: transformers renders templates with trim_blocks, which eats a literal one after a tag.)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}</s>{% else %}<|end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def default_corpus(seed: int = 0, n: int = 2_000) -> list[str]:
    """Text the tokenizer is trained on: arithmetic, judgments and the training templates' labels."""
    rng = random.Random(seed)
    words = ("the answer is correct wrong because digit tens ones hundreds carry sum difference product "
             "question instruction negative positive answer explain step first then add subtract multiply "
             "result check good bad judgment response should be a an of to is are it this that").split()
    lines = ["Instruction:", "Question:", "Negative answer:", "Positive answer:", "Judgment:"]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"What is {a} {op} {b}? {a} {op} {b} = {value}")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return lines


def build_tokenizer(texts: list[str] | None = None, vocab_size: int = 384, *,
                    individual_digits: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`: every string encodes (no unknown tokens) and decodes back.
    `individual_digits` splits numbers into one token per digit (as Llama does): arithmetic learns faster."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if individual_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts if texts is not None else default_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE, padding_side="right")


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
                      max_positions: int = 512, **extra) -> LlamaConfig:
    """A few-layer Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention): the family most users train."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )


def build_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer, **config))


def build_reward_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config
                       ) -> LlamaForSequenceClassification:
    """One scalar per sequence (num_labels=1), read at the last non-pad token, as TRL's reward models."""
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1, **config))


@dataclass(frozen=True)
class TinyPaths:
    policy: Path  # causal LM + tokenizer
    reward: Path  # sequence classifier + tokenizer


def save_tiny_models(directory: str | os.PathLike, seed: int = 0, texts: list[str] | None = None,
                     **config) -> TinyPaths:
    """Build and save a tokenizer, a causal LM and a reward model under `directory`."""
    root = Path(directory)
    tokenizer = build_tokenizer(texts)
    paths = TinyPaths(root / "policy", root / "reward")
    for path, model in ((paths.policy, build_causal_lm(tokenizer, seed, **config)),
                        (paths.reward, build_reward_model(tokenizer, seed + 1, **config))):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths

