"""Datasets to token sequences: TRL's formats, each algorithm's examples, length-aware batches.

A `Sequence` is token ids plus a *score mask*: the tokens whose log-probs count (the response; for
contrastive SFT only the positive answer). An `Example` holds one or more named sequences
("chosen"/"rejected", "real"/"generated", "plain"/"judged", or "policy"); `collate` stacks every
sequence of a batch into one right-padded tensor so each side of a pair shares one forward pass.

Formats read (JSON lines, or one JSON list):
    prompt/completion            {"prompt": str | messages, "completion": str | messages}
    preference                   {"prompt": ..., "chosen": ..., "rejected": ...}
    conversational               {"messages": [{"role": ..., "content": ...}, ...]}  (last turn: assistant)
    judged (CUT)                 {"prompt", "completion", "judgment": str, "label": bool (true: y is good)}
GSIL/SPIN rows may carry "generated" (a y_gen); otherwise the trainer samples one per prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig

ROW_FIELDS = {
    "sft": [("prompt", "completion"), ("messages",), ("prompt", "chosen")],
    "dpo": [("prompt", "chosen", "rejected")],
    "spin": [("prompt", "completion"), ("messages",)],
    "cut": [("prompt", "completion", "judgment", "label")],
}
ROW_FIELDS |= {"ipo": ROW_FIELDS["dpo"], "simpo": ROW_FIELDS["dpo"], "contrastive-sft": ROW_FIELDS["dpo"],
               "gsil": ROW_FIELDS["spin"]}


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

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.score_mask.to(device),
                     self.slices, self.rows, self.indices, self.negative.to(device))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file or a JSON list, each a dict; errors name the line."""
    path = Path(path)
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
    return rows


RESPONSE_FIELDS = {"completion", "chosen", "rejected", "generated"}


def check_rows(rows: list[dict[str, Any]], algo: str, source: str = "data", *, empty_responses: bool = False) -> None:
    """Every row must have one of the field sets `algo` accepts, with non-empty values. `empty_responses`
    allows an empty answer (a policy that stopped at once: in the live loop that is a real, bad answer)."""
    accepted = ROW_FIELDS[algo]
    for i, row in enumerate(rows):
        if not any(all(k in row for k in fields) for fields in accepted):
            fields = max(accepted, key=lambda fs: sum(k in row for k in fs))
            missing = [k for k in fields if k not in row]
            options = " or ".join("/".join(fs) for fs in accepted)
            raise DataError(f"{source}, row {i}: missing {', '.join(repr(m) for m in missing)} "
                            f"({algo} needs {options})")
        for key, value in row.items():
            if empty_responses and key in RESPONSE_FIELDS and value == "":
                continue
            if key in {"prompt", "completion", "chosen", "rejected", "judgment", "messages", "generated"} and (
                    value is None or value == "" or value == []):
                raise DataError(f"{source}, row {i}: {key!r} is empty")
        if algo == "cut" and not isinstance(row["label"], bool):
            raise DataError(f"{source}, row {i}: 'label' must be true (good response) or false (bad)")


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


def build_examples(rows: list[dict[str, Any]], config: TrainConfig, renderer: Renderer,
                   generated: dict[int, str] | None = None) -> list[Example]:
    """Examples for `config.algo`, one per row (CUT: after Align-P downsampling)."""
    algo, examples = config.algo, []
    for i, row in enumerate(rows):
        try:
            examples.append(_example(i, row, config, renderer, generated))
        except DataError as e:
            raise DataError(f"row {i}: {e}") from None
    if algo == "cut":
        examples = _downsample_align_p(examples, config.cut.align_p_ratio, config.seed)
    return examples


def _example(i: int, row: dict[str, Any], config: TrainConfig, renderer: Renderer,
             generated: dict[int, str] | None) -> Example:
    algo = config.algo
    if algo == "sft":
        prompt, completion = split_messages(row)
        return Example(i, {"policy": renderer.pair(prompt, completion)})
    if algo in {"dpo", "ipo", "simpo"}:
        return Example(i, {"chosen": renderer.pair(row["prompt"], row["chosen"]),
                           "rejected": renderer.pair(row["prompt"], row["rejected"])})
    if algo in {"spin", "gsil"}:
        prompt, completion = split_messages(row)
        y_gen = row.get("generated") if generated is None else generated.get(i)
        if y_gen is None:
            raise DataError("no 'generated' answer (sample them first with the trainer)")
        return Example(i, {"real": renderer.pair(prompt, completion), "generated": renderer.pair(prompt, y_gen)})
    if algo == "cut":
        prompt_text = renderer.prompt_text(row["prompt"])
        response = renderer.response_text(row["prompt"], row["completion"])
        plain = isinstance(row["prompt"], str)
        sequences = {"plain": renderer.sequence(prompt_text, response, plain_prompt=plain)}
        negative = not row["label"]
        if negative:
            judged_prompt = config.cut.template.format(prompt=prompt_text, judgment=row["judgment"])
            sequences["judged"] = renderer.sequence(judged_prompt, response, plain_prompt=plain)
            _same_response_length(sequences["plain"], sequences["judged"])
        return Example(i, sequences, negative=negative)
    if algo == "contrastive-sft":
        return Example(i, {"policy": contrastive_sequence(row, config, renderer)})
    raise ValueError(f"unknown algo {algo!r}")


def _same_response_length(a: Sequence, b: Sequence) -> None:
    """Trim the longer response so both views score the same tokens (truncation can differ by view)."""
    keep = min(sum(a.score_mask), sum(b.score_mask))
    for seq in (a, b):
        extra = sum(seq.score_mask) - keep
        if extra:
            del seq.input_ids[-extra:], seq.score_mask[-extra:]


def contrastive_frame(question: str, negative: str, config: TrainConfig) -> tuple[str, int, int]:
    """The frame text before the positive answer, and the character span of the negative answer."""
    head, tail = config.contrastive.template.split("{negative}")
    fill = {"instruction": config.contrastive.instruction, "question": question}
    before = head.format(**fill)
    return before + negative + tail.format(**fill), len(before), len(before) + len(negative)


def contrastive_prompt(question: str, config: TrainConfig, negative: str | None = None) -> str:
    """The inference prompt of contrastive SFT: the training frame up to the positive answer, either without
    the negative answer's line (default) or with `negative` (e.g. the model's own first answer) in it."""
    if negative is not None:
        return contrastive_frame(question, negative, config)[0]
    template = config.contrastive.template
    head, _, tail = template.partition("{negative}")
    line_start = head.rfind("\n") + 1  # drop the whole line that holds the negative answer
    newline = tail.find("\n")
    rest = tail[newline + 1:] if newline >= 0 else ""
    fill = {"instruction": config.contrastive.instruction, "question": question}
    return (head[:line_start] + rest).format(**fill)


def contrastive_sequence(row: dict[str, Any], config: TrainConfig, renderer: Renderer) -> Sequence:
    """Contrastive SFT (docs/training.md, *Methods*): instruction, question, negative answer, then the positive
    answer as the only target."""
    question = renderer.prompt_text(row["prompt"])
    negative = row["rejected"] if isinstance(row["rejected"], str) else row["rejected"][-1]["content"]
    positive = row["chosen"] if isinstance(row["chosen"], str) else row["chosen"][-1]["content"]
    frame, start, end = contrastive_frame(question, negative, config)
    span = (start, end) if config.contrastive.train_on_negative else None
    return renderer.sequence(frame, renderer.response_text(frame, positive), scored_chars=span)


def _downsample_align_p(examples: list[Example], ratio: float, seed: int) -> list[Example]:
    """CUT keeps ratio x (number of Align-N) of the Align-P examples, drawn with a fixed seed."""
    negatives = [e for e in examples if e.negative]
    positives = [e for e in examples if not e.negative]
    keep = min(len(positives), round(ratio * len(negatives))) if negatives else len(positives)
    kept = random.Random(seed).sample(positives, keep)
    return sorted(negatives + kept, key=lambda e: e.index)


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
    return Batch(input_ids, attention, score, slices, rows, [e.index for e in examples], negative)
