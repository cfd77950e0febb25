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
    for command in ["keys", "up", "attach", "status", "stop", "report", "train", "demo"]:
        assert command in out.stdout


@pytest.mark.parametrize("command", ["keys", "keys init", "up", "train", "demo"])
def test_each_command_has_help(command):
    out = run(*command.split(), "--help")
    assert out.returncode == 0 and "usage: selfplay" in out.stdout


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
