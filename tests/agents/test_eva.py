"""eva's creator functions against numbers worked by hand and seeded draws."""

import random
from collections import Counter

import pytest

from agents.eva import (
    MUTATIONS,
    filter_prompts,
    informativeness,
    meta_prompt,
    mix,
    parse_rewrite,
    sample_prompts,
)


@pytest.mark.parametrize("method, expected", [
    ("reward_gap", 0.75), ("reward_maxmean", 0.5), ("reward_var", 0.09375), ("reward_mean", -0.5), ("uniform", 1.0)])
def test_informativeness_by_hand(method, expected):
    """rewards 0.25, 1.0, 0.25, 0.5: mean 0.5; gap 1.0 - 0.25 = 0.75; max - mean = 0.5;
    variance (0.0625 + 0.25 + 0.0625 + 0) / 4 = 0.09375; reward_mean -0.5."""
    assert informativeness([0.25, 1.0, 0.25, 0.5], method) == pytest.approx(expected)


def test_weighted_sampling_follows_normalised_scores_without_replacement():
    """scores 0, 1, 3: normalised 0, 1/3, 1 -> one draw picks index 2 three times as often as index 1,
    and never index 0 while others have weight."""
    counts = Counter()
    rng = random.Random(0)
    for _ in range(4000):
        (i,) = sample_prompts([0.0, 1.0, 3.0], fraction=0.34, rng=rng)
        counts[i] += 1
    assert counts[0] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.15)
    picks = sample_prompts([0.0, 1.0, 3.0, 2.0], fraction=0.75, rng=random.Random(1))
    assert len(picks) == 3 and len(set(picks)) == 3 and 0 not in picks


def test_sampling_defaults_and_edge_cases():
    scores = [float(i) for i in range(20)]
    assert len(sample_prompts(scores, rng=random.Random(0))) == 5  # 25% by default
    assert sample_prompts(scores, fraction=0.1, method="greedy", rng=random.Random(0)) == [19, 18]
    equal = sample_prompts([0.5] * 8, fraction=0.5, rng=random.Random(0))  # no signal: uniform
    assert len(set(equal)) == 4
    short = sample_prompts([0.0, 0.0, 0.0, 1.0], fraction=0.75, rng=random.Random(0))  # one positive weight
    assert len(set(short)) == 3 and 3 in short


def test_meta_prompts_and_parsing():
    for mutation in MUTATIONS:
        text = meta_prompt("What is 2 + 3?", mutation)
        assert "What is 2 + 3?" in text and text.endswith("#New Prompt#:\n")
    with pytest.raises(ValueError, match="unknown mutation"):
        meta_prompt("x", "shorten")
    assert parse_rewrite("sure!\n#New Prompt#: What is 2 + 3 + 4?") == "What is 2 + 3 + 4?"
    assert parse_rewrite("New prompt: What is 7 * 8?") == "What is 7 * 8?"
    assert parse_rewrite("#New Prompt#:   ") is None


def test_filters_drop_empty_long_and_duplicate_prompts():
    candidates = ["What is 2 + 3?", None, "  ", "what is  2 + 3?", "x" * 50, "What is 9 - 4?", "What is 9 - 4?"]
    assert filter_prompts(candidates, existing=["What is 1 + 1?"], max_chars=40) == [0, 5]
    assert filter_prompts(["What is 1 + 1?"], existing=["what is 1 + 1?"]) == []


def test_mix_is_twenty_eighty_and_tops_up():
    rng = random.Random(0)
    old, new = [f"o{i}" for i in range(100)], [f"n{i}" for i in range(100)]
    batch = mix(old, new, total=50, rng=rng)
    assert len(batch) == 50 and len(set(batch)) == 50
    assert sum(x.startswith("o") for x in batch) == 10
    short = mix(old, new[:5], total=20, rng=rng)  # too few evolved: top up from old
    assert len(short) == 20 and sum(x.startswith("n") for x in short) == 5
    assert sorted(mix([], new[:10], total=10, rng=rng)) == sorted(new[:10])  # no old prompts yet: all new
