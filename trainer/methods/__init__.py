"""The method registry: every training method, by name, and what the rest of the system asks of them.

    method = get_method("dpo")
    names()                                   # every method, in registry order
    check_rows(rows, "dpo")                   # DataError naming the row and what is missing
    build_examples(rows, config, renderer)    # rows -> the method's examples
    rows_from_groups(groups, "dpo")           # judged groups from the live loop -> the method's rows

Adding a method is one module here (its `Method`, settings, row builder, example builder and step) plus
its line in `METHODS` and its tests; nothing outside this folder names a method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.data import DataError
from trainer.methods import contrastive, cut, demonstrations, policy_gradient, preference, sft
from trainer.methods.base import TEXT_FIELDS, Method, Row

if TYPE_CHECKING:
    from protocol.messages import JudgedGroup
    from trainer.config import TrainConfig
    from trainer.data import Example, Renderer

METHODS: dict[str, Method] = {m.name: m for m in (
    sft.SFT, preference.DPO, preference.IPO, preference.SIMPO, demonstrations.SPIN, demonstrations.GSIL, cut.CUT,
    contrastive.CONTRASTIVE_SFT, policy_gradient.GRPO, policy_gradient.RLOO)}

DEFAULT_METHOD = preference.DPO.name  # what a run trains unless told otherwise (eva's loop)
SUPERVISED = sft.SFT.name  # plain SFT: how a model learns a task's format before the loop


def names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}") from None


RESPONSE_FIELDS = {"completion", "chosen", "rejected", "generated"}


def check_rows(rows: list[Row], algo: str, source: str = "data", *, empty_responses: bool = False) -> None:
    """Every row must have one of the field sets `algo` accepts, with non-empty text. `empty_responses`
    allows an empty answer (a policy that stopped at once: in the live loop that is a real, bad answer)."""
    method = get_method(algo)
    for i, row in enumerate(rows):
        problem = method.check_row(row)
        if problem:
            raise DataError(f"{source}, row {i}: {problem}")
        for key, value in row.items():
            if key not in TEXT_FIELDS:
                continue
            allowed_empty = empty_responses and key in RESPONSE_FIELDS and value == ""
            if not allowed_empty and (value is None or value == "" or value == []):
                raise DataError(f"{source}, row {i}: {key!r} is empty")
            if not (isinstance(value, str) or _is_chat(value)):
                got = type(value).__name__ if not isinstance(value, list) else "a list that is not chat messages"
                raise DataError(f"{source}, row {i}: {key!r} must be text or a list of chat messages "
                                f"({{'role': ..., 'content': text}}), got {got}")


def _is_chat(value: object) -> bool:
    """Chat messages as chat templates take them: a role, and content that is text, a list of parts
    ([{"type": "text", "text": ...}]) or None (an assistant turn of tool calls); other keys pass through."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str | list | None)
        for m in value)


def build_examples(rows: list[Row], config: TrainConfig, renderer: Renderer) -> list[Example]:
    """The examples of `config.algo`, one per row, then the method's pass over all of them (CUT's Align-P
    downsampling, group-relative advantages)."""
    method, examples = get_method(config.algo), []
    for i, row in enumerate(rows):
        try:
            examples.append(method.example(i, row, config, renderer))
        except DataError as e:
            raise DataError(f"row {i}: {e}") from None
    return method.prepare(examples, config)


def rows_from_groups(groups: list[JudgedGroup], algo: str, *, good_score: float = 1.0) -> list[dict[str, Any]]:
    """Judged groups -> `algo`'s rows, so live and offline training share one path."""
    method = get_method(algo)
    return [row for group in groups for row in method.rows_from_group(group, good_score)]


def settings_sections() -> dict[str, tuple[type, str]]:
    """TrainConfig's per-method sections: field name -> (settings model, which methods read it)."""
    sections: dict[str, tuple[type, list[str]]] = {}
    for m in METHODS.values():
        if m.section:
            sections.setdefault(m.section, (m.settings, []))[1].append(m.name)
    return {name: (model, ", ".join(users)) for name, (model, users) in sections.items()}
