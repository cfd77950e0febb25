"""Datasets to token sequences: reading rows, rendering prompts and answers, length-aware batches.

A `Sequence` is token ids plus a *score mask*: the tokens whose log-probs count (the response; for
contrastive SFT only the positive answer). An `Example` holds one or more named sequences
("chosen"/"rejected", "real"/"generated", "plain"/"judged", or "policy"), and per-example values a
method needs (a reward, an advantage, the sampler's log-prob of each response token); `collate` stacks
every sequence of a batch into one right-padded tensor so each side of a pair shares one forward pass.

Which rows a method reads and how they become examples is the method's own business
(`trainer.methods`); this module holds what they share. Rows are JSON lines, or one JSON list, in TRL's
formats: prompt/completion, preference (prompt/chosen/rejected), conversational (messages).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class DataError(ValueError):
    """A dataset problem; the message names the file, the row and what is wrong."""


@dataclass
class Sequence:
    input_ids: list[int]
    score_mask: list[bool]  # same length; True where the token is a training target


@dataclass
class Example:
    index: int  # row number in the dataset: a stable id for caches and the data cursor
    sequences: dict[str, Sequence]
    negative: bool = False  # CUT: the response was judged bad
    values: dict[str, float] = field(default_factory=dict)  # per-example numbers (a reward, an advantage)
    token_values: dict[str, list[float]] = field(default_factory=dict)  # per scored token of its one sequence
    group: str = ""  # the examples answering one prompt share it (group-relative advantages)

    @property
    def length(self) -> int:
        return sum(len(s.input_ids) for s in self.sequences.values())


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T) every sequence of every example, right-padded
    attention_mask: torch.Tensor  # (N, T)
    score_mask: torch.Tensor  # (N, T) bool
    slices: dict[str, slice]  # role -> rows of the role in the stacked tensors
    rows: dict[str, list[int]]  # role -> which examples of the batch those rows belong to
    indices: list[int]  # dataset index of each example
    negative: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (B,)
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,)
    token_values: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, L), NaN where unknown
    empty: bool = False  # a stand-in for a rank whose share of the batch is empty: computed, weighted 0

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.score_mask.to(device),
                     self.slices, self.rows, self.indices, self.negative.to(device),
                     {k: v.to(device) for k, v in self.values.items()},
                     {k: v.to(device) for k, v in self.token_values.items()}, self.empty)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file or a JSON list (gzipped when the name ends in .gz), each a dict; errors name
    the line. Parquet, a folder saved with `datasets`' save_to_disk, or a hub id are read with `datasets`
    (trainer/dataset_files.py). Preference rows in TRL's implicit-prompt form (chat `chosen` and `rejected`
    that share their first messages, no `prompt`) get the shared messages as their prompt."""
    from trainer.dataset_files import SourceError, is_datasets_source, rows_from_datasets

    if is_datasets_source(path):
        try:
            rows = rows_from_datasets(path)
        except SourceError as e:
            raise DataError(str(e)) from None
        if not rows:
            raise DataError(f"{path}: no rows")
        return [explicit_prompt(row) for row in rows]
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file: {e}") from None
    else:
        text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid JSON: {e.msg}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {i}: expected an object, got {type(row).__name__}")
    if not rows:
        raise DataError(f"{path}: no rows")
    return [explicit_prompt(row) for row in rows]


def explicit_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A TRL implicit-prompt preference row (chat `chosen`/`rejected`, no `prompt`) with its shared first messages
    as the prompt and the rest as the two answers; any other row as it is."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "prompt" in row or not (isinstance(chosen, list) and isinstance(rejected, list)):
        return row
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        return row  # nothing shared: check_rows names the missing prompt
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


class Renderer:
    """Turns prompts and responses (plain strings or chat messages) into token sequences."""

    def __init__(self, tokenizer: Any, max_length: int, max_prompt_length: int) -> None:
        self.tok, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.eos = tokenizer.eos_token or ""

    def prompt_text(self, prompt: str | list[dict]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def response_text(self, prompt: str | list[dict], response: str | list[dict]) -> str:
        """Plain text: the response and eos. Chat: what the template adds after the generation prompt."""
        if isinstance(prompt, str) and isinstance(response, str):
            return response if response.endswith(self.eos) else response + self.eos
        turns = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        prompt_turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        head = self.tok.apply_chat_template(prompt_turns, tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(prompt_turns + turns, tokenize=False)
        if not full.startswith(head):
            raise DataError("the chat template does not render the prompt as a prefix of the conversation")
        return full[len(head):]

    def encode(self, text: str, *, special: bool) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def sequence(self, prompt_text: str, response_text: str, *, plain_prompt: bool = True,
                 scored_chars: tuple[int, int] | None = None) -> Sequence:
        """prompt + response ids (tokenized apart, so a response has the same ids in every context).

        The prompt keeps its last `max_prompt_length` tokens, the response is cut to fit `max_length`.
        `scored_chars` = (start, end) also scores the prompt tokens overlapping that character span
        (contrastive SFT's negative-answer ablation).
        """
        encoded = self.tok(prompt_text, add_special_tokens=plain_prompt, return_offsets_mapping=scored_chars is not None)
        prompt_ids = encoded["input_ids"][-self.max_prompt_length:]
        response_ids = self.encode(response_text, special=False)[: self.max_length - len(prompt_ids)]
        mask = [False] * len(prompt_ids) + [True] * len(response_ids)
        if scored_chars is not None:
            offsets = encoded["offset_mapping"][-self.max_prompt_length:]
            for i, (a, b) in enumerate(offsets):
                mask[i] = b > scored_chars[0] and a < scored_chars[1]
        return Sequence(prompt_ids + response_ids, mask)

    def sequence_ids(self, prompt_text: str, response_ids: list[int], *, plain_prompt: bool = True) -> Sequence:
        """prompt + response given as token ids (as a sampler produced them, so its per-token log-probs line up);
        cut to fit like `sequence`."""
        prompt_ids = self.tok(prompt_text, add_special_tokens=plain_prompt)["input_ids"][-self.max_prompt_length:]
        response_ids = list(response_ids)[: self.max_length - len(prompt_ids)]
        return Sequence(prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids))

    def pair(self, prompt: str | list[dict], response: str | list[dict]) -> Sequence:
        return self.sequence(self.prompt_text(prompt), self.response_text(prompt, response),
                             plain_prompt=isinstance(prompt, str))


def split_messages(row: dict[str, Any]) -> tuple[Any, Any]:
    """(prompt, completion) of a prompt/completion row or of a conversational row."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or messages[-1].get("role") != "assistant":
            raise DataError("a conversational row must end with an assistant turn")
        return messages[:-1], messages[-1:]
    return row["prompt"], row["completion"] if "completion" in row else row["chosen"]


def plan_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example positions for one epoch, deterministic in (seed, epoch).

    Length-aware: shuffle, sort by length inside windows of 32 batches, cut into batches, shuffle the
    batches. Padding then stays close to what each batch needs, and order is still random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: examples[i].length)
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Stack every sequence of every example (role by role) into one right-padded batch."""
    roles = list(dict.fromkeys(r for e in examples for r in e.sequences))
    seqs, slices, rows = [], {}, {}
    for role in roles:
        members = [(b, e.sequences[role]) for b, e in enumerate(examples) if role in e.sequences]
        slices[role] = slice(len(seqs), len(seqs) + len(members))
        rows[role] = [b for b, _ in members]
        seqs += [s for _, s in members]
    width = max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    score = torch.zeros((len(seqs), width), dtype=torch.bool)
    for n, s in enumerate(seqs):
        length = len(s.input_ids)
        input_ids[n, :length] = torch.tensor(s.input_ids)
        attention[n, :length] = 1
        score[n, :length] = torch.tensor(s.score_mask)
    negative = torch.tensor([e.negative for e in examples], dtype=torch.bool)
    values = {name: torch.tensor([e.values[name] for e in examples], dtype=torch.float32)
              for name in examples[0].values}
    token_values = {}
    for name in examples[0].token_values:
        columns = max(len(e.token_values[name]) for e in examples)
        token_values[name] = torch.full((len(examples), columns), float("nan"))
        for b, e in enumerate(examples):
            token_values[name][b, :len(e.token_values[name])] = torch.tensor(e.token_values[name])
    return Batch(input_ids, attention, score, slices, rows, [e.index for e in examples], negative, values,
                 token_values)
