"""Conversational prompts in the live loop: read from prompt files, rendered with the model's chat template
the same way by the solver and the trainer (checked against `apply_chat_template`), kept by eva's rewrites."""

import json

import pytest
from transformers import AutoTokenizer

from agents.backends.hf import prompt_ids
from agents.creator import with_last_turn
from launch.preflight import PromptFileError, read_prompts
from protocol.messages import ChatTurn, JudgedGroup, Prompt, Sample, Verdict
from trainer.config import TrainConfig
from trainer.data import Renderer
from trainer.methods import build_examples, rows_from_groups

SYSTEM = {"role": "system", "content": "Answer with the number only."}


def test_prompt_files_take_messages_and_chat_makes_text_a_user_turn(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}], "answer": 4}) + "\n"
                    + json.dumps({"prompt": "What is 3 + 3?", "answer": "6"}) + "\n")
    chat, plain = read_prompts(path, "seed", "seed")
    assert chat.text == "What is 2 + 2?" and [t.role for t in chat.messages] == ["system", "user"]
    assert plain.messages == []  # text stays text unless chat is on
    assert read_prompts(path, "seed", "seed", chat=True)[1].messages == [ChatTurn(role="user", content="What is 3 + 3?")]


@pytest.mark.parametrize("prompt, named", [
    ([SYSTEM], "the last message of 'prompt' must be the user's"),
    ([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}], "message 0 of 'prompt' must be"),
    ([{"role": "user", "content": ["parts"]}], "message 0 of 'prompt' must be"),
    ([], "'prompt' is an empty list of messages"),
])
def test_bad_messages_are_named_with_the_line(tmp_path, prompt, named):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": prompt}) + "\n")
    with pytest.raises(PromptFileError, match=f"line 2: {named}"):
        read_prompts(path, "seed", "seed")


def test_solver_and_trainer_render_a_chat_prompt_as_the_chat_template_does(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.policy)
    turns = [SYSTEM, {"role": "user", "content": "What is 37 + 48?"}]
    expected = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)  # BatchEncoding in new versions
    prompt = Prompt(prompt_id="q", text="What is 37 + 48?", messages=turns, answer="85")
    assert prompt_ids(tokenizer, prompt) == expected  # what the solver feeds the model

    samples = [Sample(sample_id=f"s{i}", prompt_id="q", text=t, policy_version=0) for i, t in enumerate(["85", "84"])]
    group = JudgedGroup(prompt=prompt, samples=samples, verdicts=[Verdict(sample_id="s0", score=1.0),
                                                                  Verdict(sample_id="s1", score=0.0)])
    config = TrainConfig(algo="dpo", model=str(tiny_models.policy), data="-", out="-", max_length=128,
                         max_prompt_length=64)
    [example] = build_examples(rows_from_groups([group], "dpo"), config, Renderer(tokenizer, 128, 64))
    chosen = example.sequences["chosen"]
    prompt_part = [t for t, scored in zip(chosen.input_ids, chosen.score_mask, strict=True) if not scored]
    assert prompt_part == expected  # what the trainer trains on, after the same prompt
    answer = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": "85"}], tokenize=False)
    assert tokenizer.decode(chosen.input_ids) == answer


def test_an_evolved_chat_prompt_keeps_its_system_turn_and_history():
    turns = [ChatTurn(**SYSTEM), ChatTurn(role="user", content="What is 2 + 2?")]
    assert with_last_turn(turns, "What is 22 + 2?") == [turns[0], ChatTurn(role="user", content="What is 22 + 2?")]
    assert with_last_turn([], "What is 22 + 2?") == []
