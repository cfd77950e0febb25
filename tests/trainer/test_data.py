"""Datasets to sequences: prompt masking, padding, truncation, each algorithm's views, row errors."""

import json

import pytest
import torch

from tests.trainer.datasets import rows
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.data import DataError, Renderer, collate, plan_batches, read_rows
from trainer.methods import build_examples, check_rows
from trainer.methods.contrastive import contrastive_prompt
from trainer.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def config(algo, **kw):
    return TrainConfig(algo=algo, model="m", data="d", out="o", **kw)


def ids(tok, text, special=True):
    return tok(text, add_special_tokens=special)["input_ids"]


def scored(seq):
    """The token ids a sequence trains on."""
    return [t for t, m in zip(seq.input_ids, seq.score_mask, strict=True) if m]


def test_plain_prompt_is_masked_and_response_ends_with_eos(tok):
    seq = Renderer(tok, 64, 32).pair("What is 2 + 3?", "5")
    prompt, response = ids(tok, "What is 2 + 3?"), ids(tok, "5</s>", special=False)
    assert seq.input_ids == prompt + response
    assert seq.score_mask == [False] * len(prompt) + [True] * len(response)
    assert response[-1] == tok.eos_token_id


def test_chat_prompt_uses_the_template_and_masks_everything_before_the_answer(tok):
    renderer = Renderer(tok, 64, 32)
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    assert renderer.prompt_text(chat) == "<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n"
    assert renderer.response_text(chat, [{"role": "assistant", "content": "5"}]) == "5</s>\n"
    seq = renderer.pair(chat, [{"role": "assistant", "content": "5"}])
    assert tok.decode(scored(seq)) == "5</s>\n"


def test_truncation_cuts_the_prompt_from_the_left_and_the_response_to_fit(tok):
    renderer = Renderer(tok, max_length=12, max_prompt_length=5)
    prompt = "one two three four five six seven eight nine ten"
    seq = renderer.pair(prompt, "alpha beta gamma delta epsilon zeta eta theta iota kappa")
    assert len(seq.input_ids) == 12
    assert seq.input_ids[:5] == ids(tok, prompt)[-5:]
    assert seq.score_mask == [False] * 5 + [True] * 7


def test_collate_pads_right_and_stacks_both_sides_of_a_pair(tok):
    examples = build_examples(rows("preference", 3), config("dpo"), Renderer(tok, 64, 32))
    batch = collate(examples, pad_id=tok.pad_token_id)
    assert batch.slices == {"chosen": slice(0, 3), "rejected": slice(3, 6)}
    assert batch.rows == {"chosen": [0, 1, 2], "rejected": [0, 1, 2]}
    for n, seq in enumerate([e.sequences[r] for r in ("chosen", "rejected") for e in examples]):
        length = len(seq.input_ids)
        assert batch.input_ids[n, :length].tolist() == seq.input_ids
        assert (batch.input_ids[n, length:] == tok.pad_token_id).all()
        assert batch.attention_mask[n].tolist() == [1] * length + [0] * (batch.input_ids.shape[1] - length)
        assert batch.score_mask[n, :length].tolist() == seq.score_mask and not batch.score_mask[n, length:].any()
    assert batch.input_ids.shape[1] == max(len(s.input_ids) for e in examples for s in e.sequences.values())


def test_contrastive_frame_scores_only_the_positive_answer(tok):
    row = {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}
    (example,) = build_examples([row], config("contrastive-sft"), Renderer(tok, 128, 100))
    seq = example.sequences["policy"]
    text = tok.decode(seq.input_ids)
    assert text.startswith("Instruction: ") and "Question: What is 2 + 3?\nNegative answer: 6\nPositive answer: " in text
    assert tok.decode(scored(seq)) == "5</s>"
    ablation = config("contrastive-sft", contrastive={"train_on_negative": True})
    (example,) = build_examples([row], ablation, Renderer(tok, 128, 100))
    seq = example.sequences["policy"]
    # the negative answer is scored too (its token carries the space before it: byte-level BPE)
    assert tok.decode(scored(seq)) == " 65</s>"


def test_contrastive_inference_prompt_is_the_training_frame_up_to_the_positive_answer(tok):
    cfg = config("contrastive-sft")
    row = {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}
    (example,) = build_examples([row], cfg, Renderer(tok, 128, 100))
    seq = example.sequences["policy"]
    head = tok.decode([t for t, s in zip(seq.input_ids, seq.score_mask, strict=True) if not s])
    assert head.endswith(contrastive_prompt("What is 2 + 3?", cfg.contrastive, negative="6"))  # with a negative: the same frame
    bare = contrastive_prompt("What is 2 + 3?", cfg.contrastive)  # without one: that line is gone, the rest unchanged
    assert bare == head[head.index("Instruction"):].replace("Negative answer: 6\n", "")
    assert "Negative" not in bare and bare.endswith("Question: What is 2 + 3?\nPositive answer: ")


def test_cut_views_share_response_tokens_and_align_p_is_downsampled(tok):
    data = rows("judged", 16)  # 8 good, 8 bad
    examples = build_examples(data, config("cut"), Renderer(tok, 128, 100))
    assert sum(e.negative for e in examples) == 8 and sum(not e.negative for e in examples) == 2  # 0.25 x 8
    for e in examples:
        plain = e.sequences["plain"]
        assert ("judged" in e.sequences) == e.negative
        if e.negative:
            judged = e.sequences["judged"]
            assert scored(plain) == scored(judged)
            assert "Judgment: Wrong: the sum is" in tok.decode(judged.input_ids)


def test_plan_is_deterministic_complete_and_length_aware(tok):
    examples = build_examples(rows("preference", 40), config("dpo"), Renderer(tok, 64, 32))
    a, b = plan_batches(examples, 4, seed=1, epoch=0), plan_batches(examples, 4, seed=1, epoch=0)
    assert a == b and a != plan_batches(examples, 4, seed=1, epoch=1)
    assert sorted(i for batch in a for i in batch) == list(range(40))
    for batch in a:  # within a window, batches hold neighbours in length
        lengths = [examples[i].length for i in batch]
        assert lengths == sorted(lengths)


def test_chat_messages_may_carry_content_parts_and_tool_calls():
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}]
    tool = [{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "add"}}]},
            {"role": "tool", "content": "4", "name": "add"}, {"role": "assistant", "content": "4"}]
    check_rows([{"prompt": parts, "completion": tool}], "sft")  # accepted as a chat template would take them


@pytest.mark.parametrize("algo, row, problem", [
    ("dpo", {"prompt": "q", "chosen": "a"}, "row 1: missing 'rejected'"),
    ("sft", {"question": "q"}, "row 1: missing"),
    ("cut", {"prompt": "q", "completion": "a", "judgment": "j", "label": "yes"}, "row 1: 'label' must be"),
    ("gsil", {"prompt": "", "completion": "a"}, "row 1: 'prompt' is empty"),
    ("sft", {"prompt": "q", "completion": 5}, "row 1: 'completion' must be text or a list of chat messages .*got int"),
    ("dpo", {"prompt": [{"role": "user", "content": 3}], "chosen": "a", "rejected": "b"},
     "row 1: 'prompt' must be text or a list of chat messages .*got a list that is not chat messages"),
])
def test_bad_rows_name_the_row_and_what_is_wrong(algo, row, problem):
    good = rows("prompt_completion" if algo in {"sft", "gsil"} else "preference" if algo == "dpo" else "judged", 1)
    with pytest.raises(DataError, match=problem):
        check_rows([*good, row], algo)


def test_unreadable_files_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        read_rows(path)
    path.write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_rows(path)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"dpo\.bta: Extra inputs are not permitted"):
        load_config(None, algo="dpo", model="m", data="d", out="o", **{"dpo.bta": 0.1})
    with pytest.raises(ConfigError, match=r"gsil\.variant"):
        load_config(None, algo="gsil", model="m", data="d", out="o", **{"gsil.variant": "squared"})
    with pytest.raises(ConfigError, match="algo"):
        load_config(None, algo="ppo", model="m", data="d", out="o")
    path = tmp_path / "c.toml"
    path.write_text('algo = "simpo"\nmodel = "m"\ndata = "d"\nout = "o"\n[simpo]\nbeta = 2.5\n')
    assert load_config(path, **{"simpo.gamma_beta_ratio": 0.5}).simpo.model_dump() == {
        "beta": 2.5, "gamma_beta_ratio": 0.5, "cpo_alpha": 0.0}


def test_defaults_follow_the_papers():
    cfg = config("dpo")
    assert (cfg.dpo.beta, cfg.simpo.beta, cfg.simpo.gamma_beta_ratio, cfg.spin.beta) == (0.1, 2.0, 0.25, 0.1)
    assert (cfg.gsil.beta, cfg.gsil.gamma, cfg.gsil.variant) == (0.1, 0.1, "logistic")
    assert (cfg.cut.threshold, cfg.cut.alpha, cfg.cut.combine, cfg.cut.align_p_ratio) == (1.2, 0.5, "mean", 0.25)
    assert cfg.finetune == "lora" and not cfg.contrastive.train_on_negative and cfg.simpo.cpo_alpha == 0


def test_collate_negative_flags(tok):
    examples = build_examples(rows("judged", 8), config("cut"), Renderer(tok, 128, 100))
    batch = collate(examples, tok.pad_token_id)
    assert batch.negative.tolist() == [e.negative for e in examples]
    assert batch.rows["judged"] == [b for b, e in enumerate(examples) if e.negative]
    assert torch.equal(batch.score_mask[batch.slices["judged"]].sum(-1),
                       batch.score_mask[batch.slices["plain"]][batch.negative].sum(-1))


def test_printed_config_reference_loads_back_as_the_defaults(tmp_path):
    from trainer.config import config_reference

    path = tmp_path / "c.toml"
    path.write_text(config_reference())
    loaded = load_config(path, algo="dpo", model="m", data="d", out="o")
    assert loaded == config("dpo")
    assert "# Inverse temperature of the implicit reward" in config_reference()


def test_an_empty_answer_is_a_data_error_offline_but_a_real_answer_in_a_live_round():
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": ""}]  # the policy stopped at once
    with pytest.raises(DataError, match="'rejected' is empty"):
        check_rows(rows, "dpo")
    check_rows(rows, "dpo", source="round", empty_responses=True)
    with pytest.raises(DataError, match="'prompt' is empty"):
        check_rows([{"prompt": "", "chosen": "4", "rejected": ""}], "dpo", empty_responses=True)


def test_gzipped_rows_and_trls_implicit_prompt_preference_rows(tmp_path):
    import gzip

    user = {"role": "user", "content": "What is 2 + 2?"}
    implicit = {"chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}]}
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(implicit) + "\n" + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    first, second = read_rows(path)
    assert first == {"prompt": [user], "chosen": [{"role": "assistant", "content": "4"}],
                     "rejected": [{"role": "assistant", "content": "5"}]}
    assert second == {"prompt": "q", "chosen": "a", "rejected": "b"}
    check_rows([first, second], "dpo")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_rows(tmp_path / "broken.jsonl.gz")


def test_parquet_saved_datasets_and_an_offline_hub_id(tmp_path, monkeypatch):
    import datasets

    rows_ = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3)]
    data = datasets.Dataset.from_list(rows_)
    data.to_parquet(str(tmp_path / "pairs.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(str(tmp_path / "splits"))
    for source in ("pairs.parquet", "saved", "splits"):
        assert read_rows(tmp_path / source) == rows_, source  # a DatasetDict: its train split
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="trl-lib/ultrafeedback_binarized: not a local file or folder, and HF_HUB_OFFLINE"):
        read_rows("trl-lib/ultrafeedback_binarized")
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
