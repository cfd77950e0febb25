"""`selfplay demo`: a shortened run (real processes, sockets, SQLite, a tiny SFT'd model) whose summary
and report agree with the ledger; configs/demo.toml is what the demo runs; bad world hooks are named."""

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from agents.database import open_database
from agents.worlds.arithmetic import parse
from launch.demo import ALGOS, DEMO_METHOD, QUICK, Plan, prepare_model, to_toml, topology, write_data
from launch.topology import TopologyError, load_topology
from protocol.settings import read_config_file
from tests.launch.test_cli import SELFPLAY

ROOT = Path(__file__).resolve().parents[2]


def test_configs_demo_toml_is_what_the_demo_runs():
    root = Path("runs/demo")
    data = {k: root / "data" / f"{k}.jsonl" for k in ("seeds", "eval", "validation", "sft", "replay")}
    shipped = (ROOT / "configs" / "demo.toml").read_text()
    body = "\n".join(line for line in shipped.splitlines() if not line.startswith("#")).strip()
    assert body == to_toml(topology(Plan(), DEMO_METHOD, root / DEMO_METHOD, root / "model", data)).strip()
    load_topology(ROOT / "configs" / "demo.toml")  # and it is a valid topology


def test_configs_gpu_toml_is_a_valid_vllm_topology():
    topo = load_topology(ROOT / "configs" / "gpu.toml")
    assert topo.solver.backend == "vllm" and topo.solver.max_lora_rank >= topo.trainer.lora.r


@pytest.mark.parametrize("section, key, value, problem", [
    ("judge", "checker", "agents.worlds.arithmetic:Nope", "judge.checker: cannot load"),
    ("creator", "mutator", "no_such_module:mutate", "creator.mutator: cannot load"),
    ("creator", "mutator", "just-a-name", "is not module:name"),
])
def test_a_bad_world_hook_is_one_error_naming_the_field(tmp_path, section, key, value, problem):
    text = (ROOT / "configs" / "demo.toml").read_text()
    old = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
    path = tmp_path / "t.toml"
    path.write_text(text.replace(old, f'{key} = "{value}"'))
    with pytest.raises(TopologyError, match=problem):
        load_topology(path)


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "seed", "ledger"), [  # pairs, demonstrations, judgments, rewards; the last with
    ("dpo", 0, "sqlite"), ("gsil", 0, "sqlite"), ("cut", 0, "sqlite"),  # its own seed, on a PostgreSQL server's ledger
    ("grpo", 1, "postgresql")])
def test_quick_demo_writes_a_summary_and_report_that_agree_with_the_ledger(request, tmp_path, algo, seed, ledger):
    url = request.getfixturevalue("pg_server").new_database() if ledger == "postgresql" else None
    out = subprocess.run([SELFPLAY, "demo", "--quick", "--algo", algo, "--run-dir", str(tmp_path),
                          *(["--seed", str(seed)] if seed else []), *(["--ledger", url] if url else [])],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    suffix = f"-seed{seed}" if seed else ""  # another seed's data, model and run sit beside seed 0's
    run = tmp_path / f"{algo}{suffix}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["plan"]["seed"] == seed
    topology = read_config_file(run / "topology.toml")
    assert topology["trainer"]["seed"] == topology["creator"]["settings"]["seed"] == seed
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"acc_before", "acc_after", "acc_stderr", "minutes", "rounds"} <= set(summary)
    assert "held-out accuracy" in out.stdout and str(run) in out.stdout

    assert (run / "ledger.sqlite").exists() == (url is None)
    db = open_database(url or run / "ledger.sqlite", read_only=True)
    rows = db.execute("SELECT s.policy_version, v.score FROM samples s JOIN prompts p USING (prompt_id) "
                      "JOIN verdicts v USING (sample_id) WHERE p.source = 'eval'").fetchall()
    versions = sorted({v for v, _ in rows})
    held_out = len([line for line in (tmp_path / f"data{suffix}" / "eval.jsonl").read_text().splitlines() if line])
    for version, key in ((versions[0], "acc_before"), (versions[-1], "acc_after")):
        scores = [s for v, s in rows if v == version]
        assert len(scores) == held_out  # every held-out prompt answered once per evaluated version
        assert summary[key] == pytest.approx(sum(s >= 1.0 for s in scores) / len(scores))
    published = db.execute("SELECT COUNT(*) FROM policies").fetchone()[0]
    assert summary["rounds"] == published - len(summary["rollbacks"]) == QUICK.rounds  # a rollback trains nothing
    assert versions == list(range(published + 1))  # evaluated before the loop and after each version
    done = json.loads((run / "creator-done.json").read_text())  # promotion is on in the demo
    assert done["best_version"] in done["validation"] or str(done["best_version"]) in done["validation"]
    assert summary["evolved_by_mutation"] == dict(db.execute(
        "SELECT mutation, COUNT(*) FROM prompts WHERE source = 'evolved' GROUP BY mutation").fetchall())
    assert bool(summary["evolved_by_mutation"]) == (algo != "gsil")  # GSIL learns from static demonstrations
    for text, difficulty in db.execute("SELECT text, difficulty FROM prompts WHERE source = 'evolved'"):
        assert difficulty == parse(text).difficulty  # an evolved prompt carries the world's difficulty
    eval_texts = {t for (t,) in db.execute("SELECT text FROM prompts WHERE source = 'eval'")}
    trained = [g["prompt"]["text"] for (blob,) in db.execute("SELECT payload FROM tasks WHERE kind = 'train'")
               for g in msgpack.unpackb(blob)["groups"]]
    assert trained and not set(trained) & eval_texts  # the held-out prompts were never trained on
    assert not eval_texts & {t for (t,) in db.execute("SELECT text FROM prompts WHERE source != 'eval'")}
    db.close()

    again = subprocess.run([SELFPLAY, "report", str(run)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    rewritten = json.loads((run / "summary.json").read_text())
    assert rewritten["minutes"] == summary["minutes"]  # `selfplay report` keeps what only the demo knew
    assert {k: rewritten[k] for k in ("acc_before", "acc_after", "rounds")} == \
        {k: summary[k] for k in ("acc_before", "acc_after", "rounds")}  # and reads the same ledger alike

    model = tmp_path / f"model{suffix}"
    stamp = (model / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(replace(QUICK, seed=seed), model, tmp_path / f"data{suffix}" / "sft.jsonl") == model  # cached
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_cached_model_is_rebuilt_when_its_sft_data_changes(tmp_path):
    data = write_data(QUICK, tmp_path / "data")
    said: list[str] = []
    model = prepare_model(QUICK, tmp_path / "model", data["warmup"], say=said.append)
    stamp = (model / "model.safetensors").stat().st_mtime_ns
    prepare_model(QUICK, model, data["warmup"], say=said.append)
    assert "reusing" in said[-1] and (model / "model.safetensors").stat().st_mtime_ns == stamp
    rows = data["warmup"].read_text().splitlines()
    data["warmup"].write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same settings, other data
    prepare_model(QUICK, model, data["warmup"], say=said.append)
    assert "building" in said[-1] and (model / "model.safetensors").stat().st_mtime_ns != stamp


def test_each_method_trains_at_the_rate_the_methods_table_selected(tmp_path):
    """The demo's rate of every method it did not tune is the one the committed methods table chose on validation."""
    rows = json.loads((ROOT / "docs" / "methods" / "results.json").read_text())["rows"]
    arm = {"dpo": "dpo+nll", "gsil": "gsil-logistic"}
    plan, data = Plan(), {name: tmp_path / name for name in ("seeds", "eval", "validation", "replay")}
    assert set(ALGOS) == {"rloo", "grpo", *dict(plan.method_lr)}  # a new method needs its rate
    for algo in ALGOS:
        lr = topology(plan, algo, tmp_path / algo, tmp_path / "model", data)["trainer"]["lr"]
        if algo in ("rloo", "grpo"):
            assert lr == plan.lr  # tuned in the demo itself
        else:
            assert lr == rows[arm.get(algo, algo)]["lr"], algo


def test_guard_seeds_join_the_seed_prompts_without_changing_the_start(tmp_path):
    plan = replace(QUICK, seeds=64, seed_levels=(3, 4, 4), guard_seeds=32, guard_levels=(2,))
    guarded, plain = write_data(plan, tmp_path / "guarded"), write_data(replace(plan, guard_seeds=0), tmp_path / "plain")
    assert guarded["warmup"].read_bytes() == plain["warmup"].read_bytes()  # the same SFT data, so the same start
    rows = [json.loads(line) for line in guarded["seeds"].read_text().splitlines()]
    plain_ids = {json.loads(line)["id"] for line in plain["seeds"].read_text().splitlines()}
    guards = [r for r in rows if r["id"] not in plain_ids]
    assert len(rows) == 96 and len({r["id"] for r in rows}) == 96 and len(guards) == 32
    assert {r["difficulty"] for r in guards} == {2} and all(r["demonstration"] for r in guards)
    assert any(r["id"] in plain_ids for r in rows[:48]) and guards != rows[-32:]  # mixed in, not appended
    held = {json.loads(line)["prompt"] for name in ("eval", "validation")
            for line in guarded[name].read_text().splitlines()}
    assert not held & {r["prompt"] for r in rows}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_topology(path):
    topo = load_topology(path)
    assert topo.trainer_config().algo


def test_replay_trains_on_the_first_sft_rows_and_weight_0_turns_it_off(tmp_path):
    """With `replay_weight` (on by default), the trainer's replay term reads the first `replay_rows` SFT rows (the
    SFT data, so the start, unchanged); at weight 0 the topology has no replay at all."""
    plan = replace(QUICK, replay_weight=0.5, replay_rows=16, replay_batch=4)
    data = write_data(plan, tmp_path / "data")
    assert data["warmup"].read_bytes() == write_data(QUICK, tmp_path / "plain")["warmup"].read_bytes()
    trainer = topology(plan, "rloo", tmp_path / "run", tmp_path / "model", data)["trainer"]
    assert trainer["replay"] == {"data": str(data["replay"]), "weight": 0.5, "batch_size": 4}
    assert data["replay"].read_text().splitlines() == data["warmup"].read_text().splitlines()[:16]
    assert Plan().replay_weight > 0
    off = replace(QUICK, replay_weight=0.0)
    assert "replay" not in topology(off, "rloo", tmp_path / "run", tmp_path / "model", data)["trainer"]
