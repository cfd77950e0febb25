"""Tiny models: built locally, saved, and loaded back through the same Auto* path a real model takes."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trainer.tiny import SPECIAL_TOKENS, build_tokenizer


def test_tokenizer_round_trips_any_text():
    tok = build_tokenizer()
    for text in ["What is 37 + 48? 85", "  spaces\tand\nnewlines ", "ünïcödé ✓ 数学 🙂", ""]:
        assert tok.decode(tok(text)["input_ids"]) == text
    for special in SPECIAL_TOKENS:
        assert len(tok(special)["input_ids"]) == 1, special
    assert tok.pad_token_id != tok.eos_token_id


def test_chat_template_marks_turns_and_generation_prompt(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models.policy)
    chat = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == "<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n5</s>\n"
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n"
    assert text.startswith(prompt)  # a response appended to the prompt is exactly the full chat


def test_saved_tokenizer_matches_the_built_one(tiny_models):
    loaded = AutoTokenizer.from_pretrained(tiny_models.policy)
    built = build_tokenizer()
    assert loaded.get_vocab() == built.get_vocab()
    assert loaded("What is 1 + 1?")["input_ids"] == built("What is 1 + 1?")["input_ids"]


def test_causal_lm_loads_with_auto_class_and_runs(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy)
    tok = AutoTokenizer.from_pretrained(tiny_models.policy)
    config = json.loads((tiny_models.policy / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    batch = tok(["What is 1 + 1?", "2 + 2 ="], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_reward_model_scores_ignore_padding(tiny_models):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models.reward).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models.reward)
    texts = ["37 + 48 = 85", "37 + 48 = 75 because the tens digit"]
    with torch.no_grad():
        batched = model(**tok(texts, return_tensors="pt", padding=True)).logits
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    assert batched.shape == (2, 1)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    assert batched[0].item() != batched[1].item()


def test_models_are_seeded(tmp_path):
    from trainer.tiny import save_tiny_models

    a = save_tiny_models(tmp_path / "a", seed=3)
    b = save_tiny_models(tmp_path / "b", seed=3)
    wa = AutoModelForCausalLM.from_pretrained(a.policy).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b.policy).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
