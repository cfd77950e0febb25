"""Judged groups from the live system -> dataset rows, so live and offline training share one path.

    rows = rows_from_groups(groups, "dpo")           # best/worst pairs
    examples = build_examples(rows, config, renderer, ...)

Each algorithm takes what it needs from a group (a prompt, its n samples and their verdicts):
- dpo / ipo / simpo / contrastive-sft: the best- and worst-scored samples as chosen / rejected
  (eva's pairs); groups whose scores are all equal carry no preference and are skipped;
- sft: the demonstration if the prompt has one, else the best sample;
- spin / gsil: the demonstration as y_real and one sample as y_gen (the policy's own answer);
  prompts without a demonstration are skipped;
- cut: every sample with its written judgment; label = score >= `good_score`.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import JudgedGroup, Prompt, Sample, Verdict

PAIR_ALGOS = {"dpo", "ipo", "simpo", "contrastive-sft"}
DEMONSTRATION_ALGOS = {"spin", "gsil"}  # learn from demonstrations: no judge needed


def _prompt_field(prompt: Prompt) -> str | list[dict[str, str]]:
    return [t.model_dump() for t in prompt.messages] if prompt.messages else prompt.text


def _scored(group: JudgedGroup) -> list[tuple[Sample, Verdict]]:
    by_id = {v.sample_id: v for v in group.verdicts}
    missing = [s.sample_id for s in group.samples if s.sample_id not in by_id]
    if missing:
        raise ValueError(f"prompt {group.prompt.prompt_id}: no verdict for samples {missing}")
    return [(s, by_id[s.sample_id]) for s in group.samples]


def rows_from_groups(groups: list[JudgedGroup], algo: str, *, good_score: float = 1.0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for group in groups:
        prompt = _prompt_field(group.prompt)
        meta = {"prompt_id": group.prompt.prompt_id, "source": group.prompt.source}
        if algo in PAIR_ALGOS:
            scored = _scored(group)
            best = max(scored, key=lambda sv: sv[1].score)
            worst = min(scored, key=lambda sv: sv[1].score)
            if best[1].score > worst[1].score:
                rows.append({"prompt": prompt, "chosen": best[0].text, "rejected": worst[0].text,
                             "margin": best[1].score - worst[1].score, **meta})
        elif algo == "sft":
            demo = group.prompt.demonstration
            completion = demo if demo is not None else max(_scored(group), key=lambda sv: sv[1].score)[0].text
            rows.append({"prompt": prompt, "completion": completion, **meta})
        elif algo in DEMONSTRATION_ALGOS:
            if group.prompt.demonstration is not None and group.samples:
                rows.append({"prompt": prompt, "completion": group.prompt.demonstration,
                             "generated": group.samples[0].text, **meta})
        elif algo == "cut":
            for sample, verdict in _scored(group):
                if verdict.judgment:
                    rows.append({"prompt": prompt, "completion": sample.text, "judgment": verdict.judgment,
                                 "label": verdict.score >= good_score, **meta})
        else:
            raise ValueError(f"unknown algo {algo!r}")
    return rows
