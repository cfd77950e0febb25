"""The hf backend and the solver: log-probs agree with the trainer's, adapters hot-swap, tasks flow."""

import threading
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from structlog.testing import capture_logs
from transformers import AutoModelForCausalLM

from agents.backends.hf import HFGenerator
from agents.solver import Solver
from protocol.messages import ChatTurn, GenerateTask, PolicyUpdate, Prompt, SamplingParams
from tests.agents.test_hub import Running
from trainer.logps import sequence_logps

PROMPTS = [Prompt(prompt_id="a", text="What is 2 + 3?"),
           Prompt(prompt_id="b", text="", messages=[ChatTurn(role="user", content="What is 40 + 2?")])]


def test_sampling_logprobs_are_the_policys_own(tiny_models):
    """Greedy tokens' log-probs from generate() == teacher-forced log-probs of the same tokens."""
    gen = HFGenerator(str(tiny_models.policy))
    [[first], [second]] = gen.generate(PROMPTS, SamplingParams(n=1, temperature=0.0, max_new_tokens=6))
    for prompt, g in zip(PROMPTS, (first, second), strict=True):
        assert len(g.token_ids) == len(g.logprobs) > 0 and g.finish_reason in {"stop", "length"}
        if prompt.messages:  # the chat template's text holds its special tokens; plain text gets the tokenizer's
            turns = [t.model_dump() for t in prompt.messages]
            text = gen.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            prompt_ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = gen.tokenizer(prompt.text)["input_ids"]
        ids = torch.tensor([prompt_ids + g.token_ids])
        score = torch.tensor([[False] * len(prompt_ids) + [True] * len(g.token_ids)])
        with torch.no_grad():
            forced = sequence_logps(gen.model, ids, torch.ones_like(ids), score)
        torch.testing.assert_close(torch.tensor(g.logprobs), forced.token_logps[0], rtol=1e-4, atol=1e-4)


def test_n_samples_per_prompt_and_seeded(tiny_models):
    gen = HFGenerator(str(tiny_models.policy))
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=5, seed=7)
    a, b = gen.generate(PROMPTS, params), gen.generate(PROMPTS, params)
    assert [len(group) for group in a] == [3, 3]
    assert [[g.token_ids for g in group] for group in a] == [[g.token_ids for g in group] for group in b]


def test_a_published_adapter_is_hot_swapped(tiny_models):
    """Each version is merged into the weights for generation and unmerged before the next: the logits are
    those of the newest adapter alone, not of a sum of versions."""
    gen = HFGenerator(str(tiny_models.policy))
    config = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    ids = torch.tensor([[5, 40, 41, 42]])
    for version, seed in ((3, 0), (4, 1)):
        torch.manual_seed(seed)
        trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                 LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        gen.load_policy(version, config, get_peft_model_state_dict(trained))
        with torch.no_grad():
            torch.testing.assert_close(gen.model(input_ids=ids).logits, trained.eval()(input_ids=ids).logits,
                                       rtol=1e-4, atol=1e-4)
        assert gen.version == version
    layers = [m for m in gen.model.modules() if hasattr(m, "merged")]
    assert layers and all(m.merged for m in layers)  # generation runs on merged weights


def test_a_misfit_adapter_leaves_the_served_one_in_place(tiny_models):
    gen = HFGenerator(str(tiny_models.policy))
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    state = get_peft_model_state_dict(trained)
    gen.load_policy(1, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}, state)
    key = next(iter(state))
    with pytest.raises(ValueError, match="does not fit"):
        gen.load_policy(2, {}, {**state, key: torch.zeros(3, 3)})
    ids = torch.tensor([[5, 40, 41, 42]])
    with torch.no_grad():
        torch.testing.assert_close(gen.model(input_ids=ids).logits, trained.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
    assert gen.version == 1


def test_a_first_adapter_that_does_not_fit_leaves_the_base_model_unwrapped(tiny_models):
    gen = HFGenerator(str(tiny_models.policy))
    ids = torch.tensor([[5, 40, 41, 42]])
    with torch.no_grad():
        base = gen.model(input_ids=ids).logits
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    state = get_peft_model_state_dict(trained)
    with pytest.raises(ValueError, match="does not fit"):  # published with the wrong rank in its config
        gen.load_policy(1, {"r": 8, "lora_alpha": 8, "target_modules": "all-linear"}, state)
    assert not [m for m in gen.model.modules() if hasattr(m, "merged")] and gen.version == 0
    with torch.no_grad():
        torch.testing.assert_close(gen.model(input_ids=ids).logits, base)
    gen.load_policy(2, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}, state)  # the next one fits
    with torch.no_grad():
        torch.testing.assert_close(gen.model(input_ids=ids).logits, trained.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_solver_answers_tasks_and_switches_policy_versions(tmp_path, tiny_models):
    r = Running(tmp_path, lease_s=30, heartbeat_interval_s=0.2, liveness=25)
    stop = threading.Event()
    try:
        creator, solver_link = r.link("creator-0", "creator"), r.link("solver-0", "solver", ["generate"])
        solver = Solver(solver_link, HFGenerator(str(tiny_models.policy)))
        thread = threading.Thread(target=solver.run, args=(stop,), daemon=True)
        thread.start()

        params = SamplingParams(n=2, temperature=0.7, max_new_tokens=4, seed=1)
        [first] = creator.submit([GenerateTask(prompts=PROMPTS, sampling=params)])
        assert _wait_done(r, first)
        samples = r.task(first)["result"].samples
        assert len(samples) == 4 and {s.policy_version for s in samples} == {0}
        assert [s.prompt_id for s in samples] == ["a", "a", "b", "b"]

        trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                 LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        trainer = r.client("trainer-0", "data")
        r.client("trainer-0").ready("trainer", kinds=())
        trainer.send(PolicyUpdate(version=1, parent_version=0, base_model=str(tiny_models.policy),
                                  adapter_config={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}),
                     tensors=get_peft_model_state_dict(trained))
        assert trainer.recv().message.status == "accepted"
        [second] = creator.submit([GenerateTask(prompts=PROMPTS[:1], sampling=params, min_policy_version=1)])
        assert _wait_done(r, second)
        assert {s.policy_version for s in r.task(second)["result"].samples} == {1}
        assert solver.generator.version == 1
    finally:
        stop.set()
        r.close()


def test_a_following_solver_is_pushed_new_policies_and_fetches_what_it_missed(tmp_path, tiny_models):
    r = Running(tmp_path, heartbeat_interval_s=0.2, liveness=25)
    try:
        r.client("trainer-0").ready("trainer", kinds=())
        trainer = r.client("trainer-0", "data")
        lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
        trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                 LoraConfig(**lora, init_lora_weights=False))

        def publish(version):
            trainer.send(PolicyUpdate(version=version, parent_version=version - 1, base_model=str(tiny_models.policy),
                                      adapter_config=lora), tensors=get_peft_model_state_dict(trained))
            assert trainer.recv().message.status == "accepted"

        solver = Solver(r.link("solver-0", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)))
        solver.sync_policy()  # follows from now on; nothing is published yet
        publish(1)
        with capture_logs() as logs:
            deadline = time.monotonic() + 5
            while solver.generator.version < 1 and time.monotonic() < deadline:  # as its serve loop does
                solver.sync_policy()
                time.sleep(0.02)
        assert solver.generator.version == 1
        assert [e["fetched"] for e in logs if e["event"] == "policy loaded"] == [False]  # pushed, unasked

        publish(2)
        late = Solver(r.link("solver-1", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)))
        late.sync_policy(at_least=2)  # not following when 2 was published: the newest comes with following
        assert late.generator.version == 2

        r.hub.followers.clear()  # as if the push were lost: the solver asks for what was announced
        publish(3)
        with capture_logs() as logs:
            solver.sync_policy(at_least=3)
        assert solver.generator.version == 3
        assert [e["fetched"] for e in logs if e["event"] == "policy loaded"] == [True]
    finally:
        r.close()


def _wait_done(r, task_id, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = r.task(task_id)
        if record is not None and record["state"] == "done":
            return True
        time.sleep(0.05)
    return False


def test_weight_sync_runs_over_tcp_with_curve_keys(tmp_path, tiny_models):
    """The deployment users run: tcp endpoints and keys. The trainer's publish and the solver's fetch open the data
    channel with the link's own credentials (they opened it without keys: 'tcp endpoints need CURVE keys')."""
    from agents.agent import AgentLink, LinkConfig
    from agents.trainer_agent import TrainerAgent
    from protocol import keys
    from trainer.adapters import adapter_parameters, read_adapter
    from trainer.config import TrainConfig

    key_dir = tmp_path / "keys"
    keys.init_keys(key_dir, [("trainer-0", "trainer"), ("solver-0", "solver")])
    r = Running(tmp_path, control="tcp://127.0.0.1:*", data="tcp://127.0.0.1:*", keys_dir=str(key_dir),
                heartbeat_interval_s=0.2, liveness=25)

    def link(name, role, kinds):
        agent = AgentLink(LinkConfig(name=name, role=role, task_kinds=kinds, control=r.hub.endpoints["control"],
                                     data=r.hub.endpoints["data"], keys_dir=str(key_dir)), r.ctx)
        r.links.append(agent)
        agent.start(timeout_s=10)
        return agent

    config = TrainConfig(algo="dpo", model=str(tiny_models.policy), data="-", out=str(tmp_path / "trainer"),
                         lora={"r": 4, "alpha": 8}, max_length=64, max_prompt_length=32)
    trainer = TrainerAgent(link("trainer-0", "trainer", ["train"]), config)
    try:
        assert trainer.publish(1)
        solver = Solver(link("solver-0", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)))
        solver.sync_policy(at_least=1)
        assert solver.generator.version == 1
        published = read_adapter(adapter_parameters(trainer.recipe.model))
        assert all(torch.equal(solver.generator._adapter[k], t) for k, t in published.items())
    finally:
        trainer.recipe.cleanup()
        r.close()


def test_a_policy_that_fits_no_model_is_skipped_and_the_solver_keeps_serving(tmp_path, tiny_models):
    """The hub cannot try an adapter on a model it does not have, so a first version whose (well-formed) tensors fit
    no model here reaches the solvers. Each used to exit on loading it, and again on every restart; now it keeps the
    policy it has, a task that needs the new one fails naming why, and tasks its policy may answer are served."""
    r = Running(tmp_path, heartbeat_interval_s=0.2, liveness=25, max_attempts=2, max_staleness=1)  # v0's answers count
    stop = threading.Event()
    try:
        creator = r.link("creator-0", "creator")
        solver = Solver(r.link("solver-0", "solver", ["generate"]), HFGenerator(str(tiny_models.policy)))
        thread = threading.Thread(target=solver.run, args=(stop,), daemon=True)
        thread.start()
        lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
        state = get_peft_model_state_dict(get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models.policy),
                                                         LoraConfig(**lora)))
        misfit = {k: torch.randn(4, 999) if "lora_A" in k else t for k, t in state.items()}  # inputs 999 wide
        r.client("trainer-0").ready("trainer", kinds=())
        trainer = r.client("trainer-0", "data")
        trainer.send(PolicyUpdate(version=1, parent_version=0, base_model=str(tiny_models.policy), adapter_config=lora),
                     tensors=misfit)
        assert trainer.recv().message.status == "accepted"
        params = SamplingParams(n=1, max_new_tokens=3, seed=1)
        [needs_v1] = creator.submit([GenerateTask(prompts=PROMPTS[:1], sampling=params, min_policy_version=1)])
        [any_version] = creator.submit([GenerateTask(prompts=PROMPTS[:1], sampling=params)])
        assert _wait_done(r, any_version)
        deadline = time.monotonic() + 30
        while r.task(needs_v1)["state"] != "dead" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.task(needs_v1)["state"] == "dead" and "policy v1 does not load" in r.task(needs_v1)["reason"]
        assert thread.is_alive() and solver.generator.version == 0 and 1 in solver.unloadable
    finally:
        stop.set()
        r.close()
