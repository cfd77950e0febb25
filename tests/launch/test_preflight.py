"""`selfplay up` checks what would make a process fail on start before it starts any: each problem is named,
with its file and row, and nothing runs (no run directory is made)."""

import json

import pytest

from launch.cli import main
from tests.reliability.run import write_topology


def _up(capsys, path) -> str:
    code = main(["up", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot start:" in err and not (path.parent / "run").exists()
    return err


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _verifier(path, tiny_models):
    _edit(path, f'backend = "reward_model"\nmodel = "{tiny_models.reward}"', 'backend = "verifier"')


@pytest.mark.parametrize("row, named", [
    ({"text": "What is 2 + 2?"}, "line 3: missing 'prompt' (fields: text)"),
    ({"prompt": 5}, "line 3: 'prompt' must be non-empty text or chat messages, got 5"),
    ({"prompt": "What is 2 + 2?", "answer": {"value": 4}}, "line 3: 'answer' must be text, got dict"),
    ({"prompt": "What is 2 + 2?", "difficulty": "hard"}, "line 3: 'difficulty' must be an integer"),
    ({"prompt": "What is 2 + 2?", "difficulty": 2.5}, "line 3: 'difficulty' must be an integer, got 2.5"),
    ("not an object", "line 3: expected an object with a 'prompt', got str"),
])
def test_a_bad_prompts_row_is_named_with_its_line(tmp_path, tiny_models, capsys, row, named):
    path = write_topology(tmp_path, tiny_models)
    seeds = tmp_path / "seeds.jsonl"
    lines = seeds.read_text().splitlines()
    seeds.write_text("\n".join([*lines[:2], json.dumps(row), *lines[2:]]) + "\n")
    err = _up(capsys, path)
    assert f"creator.prompts: {seeds} {named}" in err, err


def test_a_difficulty_written_as_3_0_or_as_text_is_read(tmp_path):
    from launch.preflight import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "difficulty": d}) for i, d in enumerate([3, 3.0, "3", " 4"])))
    assert [p.difficulty for p in read_prompts(path, "seed", "seed")] == [3, 3, 3, 4]


def test_missing_files_models_and_overlapping_sets_are_all_named(tmp_path, tiny_models, capsys):
    path = write_topology(tmp_path, tiny_models)
    seeds = tmp_path / "seeds.jsonl"
    test = tmp_path / "test.jsonl"
    test.write_text(seeds.read_text().splitlines()[0] + "\n")  # a seed prompt in the test set
    _edit(path, f'prompts = "{seeds}"', f'prompts = "{seeds}"\neval_prompts = "{test}"\n'
                                        f'validation_prompts = "{tmp_path / "nope.jsonl"}"')
    _edit(path, f'[trainer]\nalgo = "dpo"\nmodel = "{tiny_models.policy}"',
          f'[trainer]\nalgo = "dpo"\nmodel = "{tmp_path / "no-model"}"')
    err = _up(capsys, path)
    assert f"creator.validation_prompts: {tmp_path / 'nope.jsonl'}" in err
    assert "creator: seed and eval prompts must be disjoint" in err
    assert f"trainer.model: {tmp_path / 'no-model'} does not exist" in err
    assert "solver.model" not in err  # that one exists


def test_a_hub_id_must_be_cached_when_offline(tmp_path, tiny_models, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_topology(tmp_path, tiny_models)
    _edit(path, f'[solver]\ncount = 1\nmodel = "{tiny_models.policy}"', '[solver]\ncount = 1\nmodel = "nobody/not-cached"')
    assert "solver.model: nobody/not-cached is not a local folder and not in the Hugging Face cache" in _up(capsys, path)


def test_evolving_prompts_without_a_mutator_cannot_be_checked_by_an_answer_verifier(tmp_path, tiny_models, capsys):
    path = write_topology(tmp_path, tiny_models)
    _verifier(path, tiny_models)
    _edit(path, 'mutator = "agents.worlds.arithmetic:mutate"\n', "")
    assert "creator.settings.evolve with no creator.mutator" in _up(capsys, path)


def test_evolving_prompts_without_a_mutator_are_allowed_with_a_checker_of_ones_own(tmp_path, tiny_models, capsys,
                                                                                 monkeypatch):
    module = f"free_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text("def check(prompts, responses, want_judgment):\n"
                                           "    return [float(len(r) < 9) for r in responses]\n")
    monkeypatch.chdir(tmp_path)
    path = write_topology(tmp_path, tiny_models)
    _verifier(path, tiny_models)
    _edit(path, 'mutator = "agents.worlds.arithmetic:mutate"\n', "")
    _edit(path, 'backend = "verifier"', f'backend = "verifier"\nchecker = "{module}:check"')
    from launch.preflight import preflight
    from launch.topology import load_topology

    assert preflight(load_topology(path), roles=("hub", "creator", "judge", "solver", "trainer")) == []


@pytest.mark.parametrize("body, named", [
    ("def check(prompts, responses, want_judgment):\n    return 1.0\n",
     "{module}:check returned float for 1 responses; a checker returns one (score, judgment or None)"),
    ("def check(prompts, responses, want_judgment):\n    return [(float('nan'), None)]\n",
     "{module}:check returned the score nan; scores are finite numbers"),
    ("def check(prompts, responses, want_judgment):\n    raise KeyError('reference')\n",
     "{module}:check raised KeyError: 'reference'"),
])
def test_the_judges_checker_is_tried_on_a_seed_prompt(tmp_path, tiny_models, capsys, monkeypatch, body, named):
    module = f"checks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    path = write_topology(tmp_path, tiny_models)
    _verifier(path, tiny_models)
    _edit(path, 'backend = "verifier"', f'backend = "verifier"\nchecker = "{module}:check"')
    err = _up(capsys, path)
    assert f"judge {module}:check: on the first seed prompt" in err and named.format(module=module) in err, err


def test_prompt_sources_gz_and_parquet_name_the_bad_row(tmp_path):
    import gzip

    import datasets

    from launch.preflight import PromptFileError, read_prompts

    rows = [{"prompt": "What is 1 + 1?", "answer": "2", "difficulty": 1}, {"prompt": "What is 2 + 2?", "answer": "4"}]
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    for name in ("p.jsonl.gz", "p.parquet"):
        assert [(p.text, p.answer) for p in read_prompts(tmp_path / name, "seed", "seed")] == [
            ("What is 1 + 1?", "2"), ("What is 2 + 2?", "4")]
    datasets.Dataset.from_list([{"prompt": "ok"}, {"prompt": ""}]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(PromptFileError, match=r"bad\.parquet row 1: 'prompt' must be non-empty text"):
        read_prompts(tmp_path / "bad.parquet", "seed", "seed")
