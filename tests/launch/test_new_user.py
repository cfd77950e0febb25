"""A new user's path, end to end, as docs/bring-your-own-task.md walks it: `selfplay init`, `up`, `status`,
`attach`, `report`, `export`, and the exported adapter loaded with PEFT from another folder."""

import json
import signal
import subprocess
import time

import pytest
import torch

from tests.launch.test_cli import SELFPLAY

pytestmark = pytest.mark.slow


def _selfplay(*argv, cwd, timeout=120):
    return subprocess.run([SELFPLAY, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_init_up_status_attach_report_export_and_load(tmp_path):
    made = _selfplay("init", "mytask", "--tiny-model", "--rounds", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    task = tmp_path / "mytask"
    assert {p.name for p in task.iterdir()} == {"world.py", "prompts", "topology.toml", "README.md", "model"}
    again = _selfplay("init", "mytask", "--tiny-model", cwd=tmp_path)
    assert again.returncode == 2 and "is not empty" in again.stderr  # never writes over a folder

    up = subprocess.Popen([SELFPLAY, "up", "topology.toml"], cwd=task, stderr=subprocess.PIPE, text=True)
    attached = None
    try:
        deadline = time.monotonic() + 120
        while not (task / "run" / "hub.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        attached = subprocess.Popen([SELFPLAY, "attach", "solver", "--topology", "topology.toml", "--name", "solver-9"],
                                    cwd=task, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = ""
        while "solver-9" not in seen and time.monotonic() < deadline + 60:
            status = _selfplay("status", "--run-dir", "run", cwd=task, timeout=60)
            seen = status.stdout if status.returncode == 0 else ""
            time.sleep(1)
        assert "solver-9" in seen and "policy version" in seen and "queues:" in seen
        _, err = up.communicate(timeout=600)
        assert up.returncode == 0, err[-3000:]
        assert "round 1: trained v1" in err and "v1: held-out test" in err  # the console's progress lines
    finally:
        for proc in (up, attached):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

    ended = _selfplay("status", "--run-dir", "run", "--timeout", "0.5", cwd=task)
    assert ended.returncode == 0 and "published policy versions: 1, newest v1" in ended.stdout
    report = _selfplay("report", "run", cwd=task)
    assert report.returncode == 0, report.stderr
    summary = json.loads((task / "run" / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and "1" in summary["acc_by_version"]
    assert (task / "run" / "report.png").stat().st_size > 10_000
    exported = _selfplay("export", "run", "--out", str(tmp_path / "adapter"), cwd=task)
    assert exported.returncode == 0, exported.stderr

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))  # the base is found from here too
    tokenizer = AutoTokenizer.from_pretrained(str(task / "model"))
    ids = tokenizer("Reverse the letters of the word 'kalo'.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
