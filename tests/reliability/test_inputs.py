"""Bad topology files and bad command lines: one line on stderr, naming the problem, exit status 2."""

import pytest

from launch.cli import main
from tests.reliability.run import write_topology


def _one_line_error(capsys, argv) -> str:
    code = None
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("change, named", [
    (("rounds = 4", "rounds = = 4"), "line 4"),  # TOML syntax, with where
    (("rounds = 4", 'rounds = "many"'), "run.rounds: Input should be a valid integer"),
    (("[solver]\ncount = 1", "[solvers]\ncount = 1"), "solver: Field required"),
    (("threads = 1", 'threads = 1\nbackend = "tgi"'), "solver.backend: Input should be 'hf' or 'vllm'"),
    (('backend = "reward_model"\nmodel = ', 'backend = "reward_model"\nmodel = ""\ndevice = '),
     "judge backend 'reward_model' needs a model"),
    (("samples_per_prompt = 3", "sampels_per_prompt = 3"), "creator.settings.sampels_per_prompt: Extra inputs"),
    (("lr = 0.001", "lrr = 0.001"), "trainer.lrr: Extra inputs are not permitted"),
    # settings the live trainer sets itself are refused by name (they were accepted and had no effect)
    (("lr = 0.001", 'lr = 0.001\nscheduler = "cosine"'), "trainer.scheduler: Value error, not a setting of the live trainer"),
    (("lr = 0.001", "lr = 0.001\nwarmup_ratio = 0.1"), "trainer.warmup_ratio: Value error, not a setting of the live trainer"),
    (("lr = 0.001", "lr = 0.001\ntensorboard = true"), "trainer.tensorboard: Value error, not a setting of the live trainer"),
    (("lr = 0.001", "lr = 0.001\nepochs = 3"), "trainer.epochs: Value error, not a setting of the live trainer"),
    (('algo = "dpo"', 'algo = "ppo"'), "trainer.algo: Value error, algo 'ppo' is not a method"),
    (("samples_per_prompt = 3", 'samples_per_prompt = 3\nalgo = "cut"'), "creator.settings: Value error, algo is set by trainer.algo"),
    (("lease_s = 30", "lease_s = -1"), "hub.lease_s: Input should be greater than 0"),
    (('mutator = "agents.worlds.arithmetic:mutate"', 'mutator = "agents.worlds.arithmetic:mutant"'),
     "creator.mutator: "),
    (("samples_per_prompt = 3", "samples_per_prompt = 3\nmax_staleness = 2"), "exceeds hub.max_staleness"),
    (("threads = 1", 'threads = 1\nbackend = "vllm"'), "the vllm backend runs on a GPU"),
    (("threads = 1", 'threads = 1\nengine_args = { max_model_len = 512 }'), "are settings of the vllm backend"),
    (("threads = 1", 'backend = "vllm"\nbatch_size = 8'), "batch_size is a setting of the hf backend"),
    (("threads = 1", 'backend = "vllm"\ndevice = "cuda"\nmax_lora_rank = 4'), "vLLM takes one of 1, 8, 16"),
    (("threads = 1", 'backend = "vllm"\ndevice = "cuda"\nmax_lora_rank = 1'),
     "trainer.lora.r = 4 exceeds solver.max_lora_rank = 1"),
])
def test_a_bad_topology_is_one_line_naming_the_problem(tmp_path, tiny_models, capsys, change, named):
    path = write_topology(tmp_path, tiny_models)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1], 1))
    err = _one_line_error(capsys, ["up", str(path)])
    assert named in err and str(path) in err, err


def test_a_missing_topology_file_is_named(tmp_path, capsys):
    assert "no such file" in _one_line_error(capsys, ["up", str(tmp_path / "nope.toml")])


@pytest.mark.parametrize("argv, named", [
    (["up"], "the following arguments are required: topology"),
    (["demo", "--rounds", "x"], "--rounds: invalid int value: 'x'"),
    (["demo", "--algo", "ppo"], "--algo: invalid choice: 'ppo'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["attach", "wizard", "--topology", "t.toml"], "invalid choice: 'wizard'"),
    (["keys", "init", "k", "--agent", "solver-0"], "NAME:ROLE"),
    (["train", "--algo", "dpo"], "model"),
])
def test_a_bad_command_line_is_one_line_naming_the_problem(capsys, tmp_path, monkeypatch, argv, named):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, argv)
    assert named in err and "selfplay" in err, err
