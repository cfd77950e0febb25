"""The installed `selfplay` command, run as a user runs it."""

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import keys

SELFPLAY = shutil.which("selfplay") or str(Path(sys.executable).with_name("selfplay"))


def run(*args):
    return subprocess.run([SELFPLAY, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ["keys", "up", "attach", "status", "stop", "export", "report", "train", "demo"]:
        assert command in out.stdout


@pytest.mark.parametrize("command", ["keys", "keys init", "up", "train", "demo", "export"])
def test_each_command_has_help(command):
    out = run(*command.split(), "--help")
    assert out.returncode == 0 and "usage: selfplay" in out.stdout


def test_a_command_that_needs_no_model_starts_without_torch():
    """`selfplay status`, `keys`, `stop`, ... describe their options without importing torch (train's does), so they
    answer in a fraction of a second; the options of train still parse after a global option."""
    code = ("import sys\nfrom launch.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    for argv, torch_loaded in ((["status", "--help"], False), (["--log-level", "debug", "keys", "list", "--help"], False),
                               (["--log-level", "debug", "train", "--help"], True), (["--log", "debug", "train", "-h"], True)):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert out.stdout.splitlines()[-1] == str(torch_loaded), (argv, out.stderr[-2000:])
        assert "usage: selfplay" in out.stdout
    assert "--max-steps" in out.stdout  # train's own options
    for first in ("-h", "--hel"):  # help first (argparse reads --hel as --help): every command's
        assert "train offline on a dataset file (sft" in run(first, "status").stdout


def test_keys_init_writes_private_secrets(tmp_path):
    out = run("keys", "init", str(tmp_path / "k"), "--agent", "solver-0:solver", "--agent", "judge-0:judge")
    assert out.returncode == 0, out.stderr
    root = tmp_path / "k"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for secret in [root / "hub.key_secret", root / "agents" / "solver-0.key_secret"]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    listed = run("keys", "list", str(root)).stdout.split("\n")
    assert [line.split("\t")[:2] for line in listed if line] == [["judge-0", "judge"], ["solver-0", "solver"]]
    hub_public = (root / "hub.key").read_text()
    assert "secret-key" not in hub_public and "secret-key" not in (root / "allowed" / "solver-0.key").read_text()

    again = run("keys", "init", str(root), "--agent", "solver-0:solver", "--agent", "trainer-0:trainer")
    assert again.returncode == 0
    assert (root / "hub.key").read_text() == hub_public  # existing keys kept
    assert {k.name for k in keys.AllowList(root).agents()} == {"judge-0", "solver-0", "trainer-0"}

    assert run("keys", "revoke", str(root), "judge-0").returncode == 0
    assert run("keys", "revoke", str(root), "judge-0").returncode == 1
    assert {k.name for k in keys.AllowList(root).agents()} == {"solver-0", "trainer-0"}


@pytest.mark.parametrize("spec, problem", [("solver0", "NAME:ROLE"), ("s:wizard", "role must be one of"),
                                           ("bad name:solver", "NAME:ROLE")])
def test_bad_agent_spec_is_one_line_naming_the_problem(tmp_path, spec, problem):
    out = run("keys", "init", str(tmp_path / "k"), "--agent", spec)
    assert out.returncode == 2
    assert problem in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_report_of_a_directory_without_a_ledger_is_one_line(tmp_path):
    out = run("report", str(tmp_path))
    assert out.returncode == 2 and "no ledger here" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_allow_list_skips_a_corrupt_entry(tmp_path):
    keys.init_keys(tmp_path, [("a", "solver")])
    (tmp_path / "allowed" / "broken.key").write_text("metadata\n    role = \"wizard\"\n")
    assert [k.name for k in keys.AllowList(tmp_path).agents()] == ["a"]


def _train_files(tmp_path, tiny_models, kind="preference"):
    from tests.trainer.datasets import write

    return write(tmp_path / "data.jsonl", kind, n=4), str(tiny_models.policy)


def test_train_runs_and_writes_an_adapter(tmp_path, tiny_models):
    data, model = _train_files(tmp_path, tiny_models)
    out = run("train", "--algo", "dpo", "--data", str(data), "--model", model, "--out", str(tmp_path / "o"),
              "--max-steps", "2", "--batch-size", "2", "--set", "dpo.beta=0.05", "--set", "tensorboard=false")
    assert out.returncode == 0, out.stderr
    assert "trained dpo" in out.stdout
    assert (tmp_path / "o" / "adapter" / "adapter_config.json").exists()
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((tmp_path / "o" / "checkpoints" / "step-000002" / "state.json").read_text())["config"]
    assert config["dpo"]["beta"] == 0.05


def test_train_config_typo_names_the_field(tmp_path, tiny_models):
    data, model = _train_files(tmp_path, tiny_models)
    out = run("train", "--algo", "dpo", "--data", str(data), "--model", model, "--out", str(tmp_path / "o"),
              "--set", "dpo.bta=0.1")
    assert out.returncode == 2
    assert "dpo.bta: Extra inputs are not permitted" in out.stderr
    assert "Traceback" not in out.stderr


def test_train_bad_row_names_the_row_and_the_missing_field(tmp_path, tiny_models):
    data, model = _train_files(tmp_path, tiny_models, kind="prompt_completion")
    out = run("train", "--algo", "dpo", "--data", str(data), "--model", model, "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "row 0: missing 'chosen', 'rejected'" in out.stderr and "Traceback" not in out.stderr


def _train(data, model, out, *more):
    return run("train", "--algo", "dpo", "--data", str(data), "--model", model, "--out", str(out), "--batch-size", "2",
               "--set", "tensorboard=false", *more)


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_refuses_an_out_holding_a_run_and_overwrite_replaces_it(tmp_path, tiny_models):
    data, model = _train_files(tmp_path, tiny_models)
    out = tmp_path / "o"
    assert _train(data, model, out, "--max-steps", "2").returncode == 0
    again = _train(data, model, out, "--max-steps", "3")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    assert _steps(out) == [1, 2]  # untouched
    replaced = _train(data, model, out, "--max-steps", "3", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert _steps(out) == [1, 2, 3]  # the new run's metrics only
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]


def test_overwrite_removes_only_a_run_and_never_its_own_inputs(tmp_path, tiny_models):
    import shutil

    data, model = _train_files(tmp_path, tiny_models)
    mine = tmp_path / "mine"
    shutil.copytree(model, mine / "model")  # a folder of the user's that happens to hold model/: not a run
    refused = _train(data, model, mine, "--max-steps", "2", "--overwrite")
    assert refused.returncode == 2 and "no selfplay run" in refused.stderr
    assert (mine / "model" / "config.json").exists()
    out = tmp_path / "o"
    assert _train(data, model, out, "--max-steps", "2").returncode == 0
    on_itself = _train(data, str(out / "adapter"), out, "--max-steps", "2", "--overwrite")  # training on its output
    assert on_itself.returncode == 2 and f"would remove model {out / 'adapter'}" in on_itself.stderr
    assert (out / "adapter" / "adapter_config.json").exists() and _steps(out) == [1, 2]


def test_a_moved_run_resumes_and_settings_its_checkpoint_lacks_are_not_compared(tmp_path, tiny_models):
    import shutil

    data, model = _train_files(tmp_path, tiny_models)
    assert _train(data, model, tmp_path / "o", "--max-steps", "2").returncode == 0
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "o", moved)
    state = moved / "checkpoints" / "step-000002" / "state.json"
    saved = json.loads(state.read_text())
    del saved["config"]["replay"]  # as a checkpoint of a selfplay version before replay was a setting
    state.write_text(json.dumps(saved))
    resumed = _train(data, model, moved, "--max-steps", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(moved) == [1, 2, 3]


def test_train_resume_must_keep_the_runs_settings_and_logs_each_step_once(tmp_path, tiny_models):
    data, model = _train_files(tmp_path, tiny_models)
    out = tmp_path / "o"
    assert _train(data, model, out, "--max-steps", "2").returncode == 0
    other = _train(data, model, out, "--max-steps", "4", "--resume", "--set", "dpo.beta=0.5", "--lr", "0.001")
    assert other.returncode == 2 and "dpo.beta 0.1 -> 0.5" in other.stderr and "lr 0.0001 -> 0.001" in other.stderr
    with (out / "metrics.jsonl").open("a") as f:  # steps an interrupted run logged after its last checkpoint
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    longer = _train(data, model, out, "--max-steps", "4", "--resume")  # how long it trains may change
    assert longer.returncode == 0, longer.stderr
    assert _steps(out) == [1, 2, 3, 4]


def test_train_names_bad_data_before_it_loads_the_model(tmp_path, tiny_models):
    data, _ = _train_files(tmp_path, tiny_models, kind="prompt_completion")
    out = _train(data, str(tmp_path / "no-such-model"), tmp_path / "o")
    assert out.returncode == 2 and "row 0: missing 'chosen', 'rejected'" in out.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, tiny_models):
    import signal
    import time

    data, model = _train_files(tmp_path, tiny_models)
    out = tmp_path / "o"
    argv = [SELFPLAY, "train", "--algo", "dpo", "--data", str(data), "--model", model, "--out", str(out),
            "--batch-size", "2", "--set", "tensorboard=false", "--set", "save_every=1000000", "--max-steps", "100000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((out / "metrics.jsonl").exists() and len(_steps(out)) >= 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("selfplay train: interrupted at step ") and "--resume" in last and "Traceback" not in err
    step = int(last.split("interrupted at step ")[1].split(";")[0])
    assert (out / "checkpoints" / f"step-{step:06d}").is_dir() and _steps(out)[-1] == step
    resumed = _train(data, model, out, "--set", "save_every=1000000", "--max-steps", str(step + 2), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(out) == list(range(1, step + 3)) and (out / "adapter" / "adapter_config.json").exists()


def test_init_needs_a_model_and_writes_it_into_the_topology(tmp_path, monkeypatch):
    neither = run("init", str(tmp_path / "a"))
    assert neither.returncode == 2 and "--model" in neither.stderr and "--tiny-model" in neither.stderr
    made = run("init", str(tmp_path / "b"), "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--rounds", "5")
    assert made.returncode == 0, made.stderr
    assert "cd " in made.stdout and not (tmp_path / "b" / "model").exists()
    from launch.topology import load_topology

    monkeypatch.chdir(tmp_path / "b")  # paths are relative to the task folder, and world.py is found there
    try:
        topo = load_topology("topology.toml")
    finally:
        sys.modules.pop("world", None)
    assert topo.solver.model == topo.trainer.model == "Qwen/Qwen2.5-0.5B-Instruct" and topo.run.rounds == 5
    assert topo.judge.checker == "world:check" and topo.creator.mutator == "world:mutate"
