"""The trainer process against a real hub: rounds become published policy versions."""

import json
import math
import threading
import time

import torch
from peft import get_peft_model_state_dict

from agents.trainer_agent import TrainerAgent
from protocol.messages import JudgedGroup, PolicyFetch, Prompt, Sample, TrainTask, Verdict
from tests.agents.test_hub import Running
from trainer.config import TrainConfig


def groups(n, seed=0, tie=False):
    out = []
    for i in range(n):
        a, b = 10 + i + seed, 20 + i
        prompt = Prompt(prompt_id=f"p{seed}-{i}", text=f"What is {a} + {b}?", answer=str(a + b))
        samples = [Sample(sample_id=f"p{seed}-{i}-{j}", prompt_id=prompt.prompt_id, text=text, policy_version=0)
                   for j, text in enumerate([str(a + b), str(a + b + 10)])]
        scores = [0.5, 0.5] if tie else [1.0, 0.0]
        verdicts = [Verdict(sample_id=s.sample_id, score=sc) for s, sc in zip(samples, scores, strict=True)]
        out.append(JudgedGroup(prompt=prompt, samples=samples, verdicts=verdicts))
    return out


def _live(tmp_path, tiny_models, **hub):
    """A hub, a stop event and a small DPO config: what the crash tests share."""
    r = Running(tmp_path, lease_s=120, heartbeat_interval_s=0.2, liveness=50, **hub)
    config = TrainConfig(algo="dpo", model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                         batch_size=2, lr=1e-2, lora={"r": 4, "alpha": 8}, max_length=64, max_prompt_length=32)
    return r, threading.Event(), config


def wait_done(r, task_id, timeout_s=60):
    record = wait_task(r, task_id, timeout_s)
    assert record["state"] == "done", record
    return record


def test_rounds_train_publish_and_use_the_round_start_reference(tmp_path, tiny_models):
    r = Running(tmp_path, lease_s=120, heartbeat_interval_s=0.2, liveness=50)
    stop = threading.Event()
    try:
        creator, link = r.link("creator-0", "creator"), r.link("trainer-0", "trainer", ["train"])
        config = TrainConfig(algo="dpo", model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                             batch_size=8, lr=1e-2, lora={"r": 4, "alpha": 8}, max_length=64, max_prompt_length=32)
        agent = TrainerAgent(link, config)
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()

        [first] = creator.submit([TrainTask(groups=groups(4), round=1)])
        report = wait_done(r, first)["result"]
        assert (report.policy_version, report.examples) == (1, 4)
        assert r.hub.policy_version == 1 and (r.hub.run_dir / "adapters" / "v000001.safetensors").exists()
        fetcher = r.client("solver-0", "data")
        r.client("solver-0").ready("solver")
        fetcher.send(PolicyFetch(version=1))
        fetched = fetcher.recv()
        published = get_peft_model_state_dict(agent.recipe.model)
        assert set(fetched.tensors) == set(published)
        assert all(torch.equal(fetched.tensors[k], published[k]) for k in published)

        [second] = creator.submit([TrainTask(groups=groups(4, seed=1), round=2)])
        assert wait_done(r, second)["result"].policy_version == 2
        [tied] = creator.submit([TrainTask(groups=groups(3, tie=True), round=3)])
        report = wait_done(r, tied)["result"]
        assert (report.policy_version, report.examples) == (2, 0)  # nothing to learn: no new version

        steps = [json.loads(line) for line in (tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines()]
        assert len(steps) == 2  # one step per round (4 pairs, batch 8)
        # each round starts with policy == reference, so DPO's first loss of every round is ln 2
        assert all(abs(s["loss"] - math.log(2)) < 1e-5 for s in steps)
    finally:
        stop.set()
        r.close()


def test_the_live_trainer_takes_the_methods_online_settings_unless_set():
    from agents.trainer_agent import live_settings

    config = TrainConfig(algo="cut", model="m", data="-", out="o")
    assert (config.cut.threshold, config.cut.alpha) == (1.2, 0.5)  # offline defaults
    live = config.model_copy(update=live_settings(config))
    assert (live.cut.threshold, live.cut.alpha, live.reference) == (1.1, 1.0, "current")  # the online run's
    own = TrainConfig(algo="cut", model="m", data="-", out="o", cut={"threshold": 1.3})
    assert (own.model_copy(update=live_settings(own)).cut.threshold, live.cut.alpha) == (1.3, 1.0)


def test_grpo_rounds_learn_from_every_answer_against_the_starting_model(tmp_path, tiny_models):
    """GRPO live: every answer of a group is a row; the first loss of a round is -mean(A) = 0 (ratio 1, and the
    KL to the starting model is 0 only in round 1: the reference stays the starting model, not the round's)."""
    r = Running(tmp_path, lease_s=120, heartbeat_interval_s=0.2, liveness=50)
    stop = threading.Event()
    try:
        creator, link = r.link("creator-0", "creator"), r.link("trainer-0", "trainer", ["train"])
        config = TrainConfig(algo="grpo", model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                             batch_size=8, lr=1e-2, lora={"r": 4, "alpha": 8}, max_length=64, max_prompt_length=32,
                             grpo={"kl_beta": 0.04})
        agent = TrainerAgent(link, config)
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
        for round_, seed in ((1, 0), (2, 1)):
            tie = groups(1, seed=9 + seed, tie=True)  # equal rewards: no signal, skipped and counted
            [task] = creator.submit([TrainTask(groups=groups(4, seed=seed) + tie, round=round_)])
            report = wait_done(r, task)["result"]
            assert (report.policy_version, report.examples) == (round_, 8)  # 4 groups x 2 answers
            assert report.metrics["groups_skipped"] == 1
        steps = [json.loads(line) for line in (tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines()]
        assert len(steps) == 2 and all(abs(s["loss"] - s["kl"] * 0.04) < 1e-5 for s in steps)
        assert steps[0]["kl"] < 1e-6 < steps[1]["kl"]
    finally:
        stop.set()
        r.close()


def test_a_round_checkpointed_before_a_crash_is_published_not_trained_again(tmp_path, tiny_models, monkeypatch):
    """The trainer dies after its checkpoint, before the hub has the policy: the retried task is not
    trained twice; the restarted trainer resumes from the checkpoint and only publishes and reports."""
    r, stop, config = _live(tmp_path, tiny_models)
    try:
        creator = r.link("creator-0", "creator")
        first = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)

        def crash(assign, report):
            stop.set()  # the agent stops taking work, as a dead one would
            raise SystemExit("killed after the checkpoint")  # not an Exception: no TaskFailed is sent, as in a kill

        monkeypatch.setattr(first, "_publish_and_report", crash)
        thread = threading.Thread(target=first.run, args=(stop,), daemon=True)
        thread.start()
        [task] = creator.submit([TrainTask(groups=groups(4), round=1)])
        thread.join(60)
        first.link.stop()  # and its connection goes with it: the hub requeues the task for the next trainer
        assert r.hub.policy_version == 0  # trained and checkpointed, never published
        steps_before = len((tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines())
        assert steps_before >= 2  # it trained (4 pairs, batches of at most 2)

        stop.clear()
        second = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)
        assert second.trained["task_id"] == task and second.version == 1  # resumed, knows what it trained
        threading.Thread(target=second.run, args=(stop,), daemon=True).start()
        record = wait_done(r, task)
        assert record["attempt"] == 2 and record["result"].policy_version == 1
        assert r.hub.policy_version == 1
        assert len((tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines()) == steps_before  # no retraining
        published = get_peft_model_state_dict(second.recipe.model)
        fetcher = r.client("solver-0", "data")
        r.client("solver-0").ready("solver")
        fetcher.send(PolicyFetch(version=1))
        fetched = fetcher.recv()
        assert all(torch.equal(fetched.tensors[k], published[k]) for k in published)  # the checkpointed weights
    finally:
        stop.set()
        r.close()


def test_a_trainer_that_dies_after_the_hub_took_its_policy_republishes_the_same_bytes(tmp_path, tiny_models,
                                                                                      monkeypatch):
    """The hub saved v1 and acknowledged it; the trainer died before it reported. The restarted trainer publishes
    v1 again from its checkpoint: a version is written once, so this works only because the bytes are the same
    (acknowledged as a duplicate), and the round is reported, not trained again."""
    r, stop, config = _live(tmp_path, tiny_models)
    try:
        creator = r.link("creator-0", "creator")
        first = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)

        def crash(assign, report):
            stop.set()
            raise SystemExit("killed after the publish, before the report")

        monkeypatch.setattr(first.link, "complete", crash)
        thread = threading.Thread(target=first.run, args=(stop,), daemon=True)
        thread.start()
        [task] = creator.submit([TrainTask(groups=groups(4), round=1)])
        thread.join(60)
        first.link.stop()
        assert r.hub.policy_version == 1  # published (and acknowledged) before the crash

        stop.clear()
        second = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)
        threading.Thread(target=second.run, args=(stop,), daemon=True).start()
        record = wait_done(r, task)
        assert record["attempt"] == 2 and record["result"].policy_version == 1 and r.hub.policy_version == 1
        assert sorted(p.name for p in (r.hub.run_dir / "adapters").iterdir()) == ["v000001.safetensors"]
    finally:
        stop.set()
        r.close()


def test_a_policy_that_never_reached_the_hub_goes_before_the_next_round(tmp_path, tiny_models, monkeypatch):
    """Round 1's publish failed until its task went DEAD; the trainer holds v1. Versions follow one another at the
    hub, so before it trains round 2 it publishes v1 (round 2 then becomes v2, not a v2 the hub would refuse)."""
    r, stop, config = _live(tmp_path, tiny_models, max_attempts=1)
    try:
        creator = r.link("creator-0", "creator")
        agent = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)
        real, calls = agent.publish, []

        def publish(version):  # the first try never reaches the hub
            calls.append(version)
            return len(calls) > 1 and real(version)

        monkeypatch.setattr(agent, "publish", publish)
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
        [lost] = creator.submit([TrainTask(groups=groups(4), round=1)])
        deadline = time.monotonic() + 60
        while r.task(lost)["state"] != "dead" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.task(lost)["state"] == "dead" and r.hub.policy_version == 0
        [task] = creator.submit([TrainTask(groups=groups(4, seed=1), round=2)])
        record = wait_done(r, task)
        assert record["result"].policy_version == 2 and calls == [1, 1, 2]
        assert r.hub.policy_version == 2
    finally:
        stop.set()
        r.close()


def test_a_restore_resumes_from_the_kept_version_and_publishes_it_as_the_next(tmp_path, tiny_models):
    """Rounds name the version to keep (v1); its checkpoint outlives keep_checkpoints = 1. A restore of v1 publishes
    v1's adapter as v4, and the next round goes on from v1's optimizer state; a version not kept is a clear DEAD."""
    r, stop, config = _live(tmp_path, tiny_models)
    config = config.model_copy(update={"keep_checkpoints": 1})
    try:
        creator = r.link("creator-0", "creator")
        agent = TrainerAgent(r.link("trainer-0", "trainer", ["train"]), config)
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
        for round_, best in ((1, 0), (2, 1), (3, 1)):
            [task] = creator.submit([TrainTask(groups=groups(4, seed=round_), round=round_, best=best)])
            assert wait_done(r, task)["result"].policy_version == round_
        kept = agent.checkpoints()
        assert sorted(kept) == [1, 3]  # the newest and the pinned one; v0 and v2 were pruned
        at_v1 = torch.load(kept[1] / "trainer_state.pt", weights_only=False)["optimizer"]

        [restore] = creator.submit([TrainTask(groups=[], round=3, best=1, restore=1)])
        report = wait_done(r, restore)["result"]
        assert (report.policy_version, report.examples, report.metrics["restored_from"]) == (4, 0, 1.0)
        fetcher = r.client("solver-0", "data")
        r.client("solver-0").ready("solver")
        tensors = {}
        for version in (1, 3, 4):
            fetcher.send(PolicyFetch(version=version))
            tensors[version] = fetcher.recv().tensors
        assert all(torch.equal(tensors[4][k], tensors[1][k]) for k in tensors[1])  # v1's weights again
        assert any(not torch.equal(tensors[4][k], tensors[3][k]) for k in tensors[1])
        state = agent.recipe.optimizer.state_dict()["state"]
        assert all(torch.equal(state[i]["exp_avg"], at_v1["state"][i]["exp_avg"]) for i in at_v1["state"])
        assert agent.recipe.cursor.step == report.step  # the step count went on: 3 rounds of 2 steps
        assert report.step == 6

        [gone] = creator.submit([TrainTask(groups=[], round=4, best=4, restore=2)])
        record = wait_task(r, gone)
        assert record["state"] == "dead" and "no checkpoint of policy v2 is kept" in record["reason"]
    finally:
        stop.set()
        r.close()


def wait_task(r, task_id, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = r.task(task_id)
        if record and record["state"] in ("done", "dead"):
            return record
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not finished: {r.task(task_id)}")
