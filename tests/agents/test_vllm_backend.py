"""The vllm backend: its adapter handling on any machine; generation itself where vLLM and a GPU are.

The published adapter is written as a peft directory (what vLLM loads); that peft reads it back and
applies exactly the weights the hf backend hot-swaps is checked with real models on the CPU. The
engine test at the bottom needs vLLM (the gpu extra) and CUDA, and is skipped without them.
"""

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from agents.backends import vllm as vllm_backend
from agents.backends.hf import HFGenerator, prompt_ids
from agents.backends.vllm import (
    AdapterSlots,
    VLLMGenerator,
    sampling_args,
    save_adapter,
    solver_gpus,
    to_generation,
    visible_gpus,
)
from launch.cli import main
from protocol.messages import Prompt, SamplingParams
from tests.reliability.run import write_topology

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def published(policy_path, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a trainer publishes: adapter settings and peft state-dict tensors, lora_B non-zero so it matters."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(policy_path),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    config = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}
    return config, {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_a_written_adapter_is_what_peft_loads_and_the_hf_backend_applies(tiny_models, tmp_path):
    config, tensors = published(tiny_models.policy)
    directory = save_adapter(tmp_path / "v1", str(tiny_models.policy), config, tensors)
    saved = json.loads((directory / "adapter_config.json").read_text())
    assert saved["target_modules"] and saved["target_modules"] != "all-linear"  # spelled out for other loaders
    assert "q_proj" in saved["target_modules"] and saved["r"] == 4 and saved["lora_alpha"] == 8

    ids = torch.tensor([[1, 5, 9, 14, 20, 33]])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.policy), str(directory)).eval()
    hf = HFGenerator(str(tiny_models.policy), device="cpu")
    base_logits = hf.model(ids).logits
    hf.load_policy(1, config, tensors)
    with torch.no_grad():
        assert not torch.allclose(hf.model(ids).logits, base_logits, atol=1e-3)  # the adapter changes the policy
        torch.testing.assert_close(loaded(ids).logits, hf.model(ids).logits)


def test_tensors_without_lora_weights_are_refused(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="no LoRA weights"):
        save_adapter(tmp_path / "v1", str(tiny_models.policy), {"r": 4}, {"model.embed.weight": torch.zeros(2)})


def test_adapter_names_and_ids_are_never_reused_and_only_the_newest_stay(tiny_models, tmp_path):
    config, tensors = published(tiny_models.policy)
    slots = AdapterSlots(tmp_path / "adapters", keep=2)
    added = [slots.add(v, str(tiny_models.policy), config, tensors) for v in (1, 2, 2, 3)]  # v2 published twice
    assert [a.lora_id for a in added] == [1, 2, 3, 4]
    assert len({a.name for a in added}) == 4 and added[1].name != added[2].name
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [added[2].name, added[3].name]
    restarted = AdapterSlots(tmp_path / "adapters", keep=2)  # a restarted solver: vLLM's cache is new, but
    assert restarted.add(4, str(tiny_models.policy), config, tensors).lora_id == 5  # ids still move on


def test_a_vllm_completion_becomes_a_generation_with_one_logprob_per_token():
    step = lambda token, logprob: {token: SimpleNamespace(logprob=logprob)}  # noqa: E731 — vLLM's {id: Logprob}
    done = SimpleNamespace(text="12", token_ids=[7, 8, 2], logprobs=[step(7, -0.5), step(8, -1.0), step(2, -0.1)],
                           finish_reason="stop")
    generation = to_generation(done, eos_token_id=2)
    assert (generation.text, generation.token_ids, generation.logprobs, generation.finish_reason) == \
        ("12", [7, 8, 2], [-0.5, -1.0, -0.1], "stop")
    cut = SimpleNamespace(text="1", token_ids=[7, 8], logprobs=[step(7, -0.5), step(8, -1.0)], finish_reason="length")
    assert to_generation(cut, eos_token_id=2).finish_reason == "length"
    with pytest.raises(RuntimeError, match="logprobs=0"):
        to_generation(SimpleNamespace(text="1", token_ids=[7], logprobs=None, finish_reason="length"), 2)


@pytest.mark.parametrize("reason", ["abort", "error", None])
def test_an_aborted_or_failed_vllm_request_is_an_error_not_a_truncated_answer(reason):
    step = {7: SimpleNamespace(logprob=-0.5)}
    with pytest.raises(RuntimeError, match="finish reason"):
        to_generation(SimpleNamespace(text="1", token_ids=[7], logprobs=[step], finish_reason=reason), 2)


def test_greedy_sampling_asks_vllm_once_and_repeats_the_answer():
    args, copies = sampling_args(SamplingParams(n=4, temperature=0.0, top_p=0.9, max_new_tokens=8, seed=1))
    assert args["n"] == 1 and copies == 4 and "top_p" not in args and args["logprobs"] == 0  # vLLM: n > 1 needs sampling
    args, copies = sampling_args(SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=1))
    assert (args["n"], copies, args["top_p"], args["temperature"], args["max_tokens"]) == (4, 1, 0.9, 0.7, 8)


def test_each_vllm_solver_of_a_machine_gets_its_own_gpus_among_the_visible_ones():
    visible = visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 5,6,7"}, device_count=8)  # an existing mapping is kept
    assert visible == ["4", "5", "6", "7"] and visible_gpus({}, device_count=2) == ["0", "1"]
    assert [solver_gpus("auto", i, 1, visible) for i in range(4)] == ["4", "5", "6", "7"]
    assert [solver_gpus("cuda", i, 2, visible) for i in range(2)] == ["4,5", "6,7"]  # tensor_parallel_size 2
    assert solver_gpus("cuda:1", 0, 1, visible) == "5" and solver_gpus("cuda:1", 1, 1, visible) == "6"
    with pytest.raises(ValueError, match=r"needs visible GPUs 4\.\.5, but 4 are visible \(4, 5, 6, 7\)"):
        solver_gpus("auto", 2, 2, visible)


def test_up_gives_each_solver_its_index_and_attach_a_device_of_its_own(tiny_models, tmp_path):
    from launch.supervisor import children_for
    from launch.topology import load_topology

    path = write_topology(tmp_path, tiny_models, solvers=2)
    topo = load_topology(path)
    solvers = [c.argv for c in children_for(str(path), topo) if c.name.startswith("solver-")]
    assert [argv[argv.index("--index") + 1] for argv in solvers] == ["0", "1"]
    assert load_topology(path, solver_device="cuda:1").solver.device == "cuda:1"
    assert main(["attach", "judge", "--topology", str(path), "--device", "cuda:1"]) == 2


class _Engine:
    """vLLM's llm_engine as far as load_policy uses it (no vLLM here): add_lora, refusing adapters it is told to."""

    def __init__(self) -> None:
        self.added, self.refuse = [], False

    def add_lora(self, request) -> bool:
        if self.refuse:
            raise ValueError("LoRA rank 4 is greater than max_lora_rank 1")  # what vLLM's worker raises
        self.added.append(request.lora_name)
        return True


def test_a_bad_adapter_is_refused_at_load_not_inside_the_engine(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_backend, "lora_request", lambda adapter: SimpleNamespace(lora_name=adapter.name))
    gen = VLLMGenerator.__new__(VLLMGenerator)  # the engine itself needs a GPU: its add_lora is stood in for
    gen.model_path, gen.version, gen.adapter, gen.max_lora_rank = str(tiny_models.policy), 0, None, 8
    gen.slots, gen.llm = AdapterSlots(tmp_path / "adapters", keep=2), SimpleNamespace(llm_engine=_Engine())
    config, tensors = published(tiny_models.policy)
    gen.load_policy(1, config, tensors)
    assert gen.llm.llm_engine.added == ["policy-v1-1"] and gen.adapter.version == 1
    gen.llm.llm_engine.refuse = True
    with pytest.raises(ValueError, match="vLLM refused policy v2"):  # the solver keeps v1 and never retries v2
        gen.load_policy(2, config, tensors)
    assert gen.adapter.version == 1 and [a.version for a in gen.slots.resident] == [1]
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["policy-v1-1"]
    with pytest.raises(ValueError, match="LoRA rank 16, above the engine's max_lora_rank 8"):
        gen.load_policy(3, {**config, "r": 16}, tensors)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_backend_and_up_name_the_gpu_extra(tiny_models, tmp_path, capsys):
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[gpu\]'"):
        VLLMGenerator(str(tiny_models.policy), tmp_path / "adapters")
    path = write_topology(tmp_path, tiny_models)
    path.write_text(path.read_text().replace("threads = 1", 'backend = "vllm"\ndevice = "cuda:0"', 1))
    assert main(["up", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs vLLM on this machine" in err and str(path) in err, err
    assert not (tmp_path / "run").exists()  # refused before anything started


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM (the gpu extra) and a GPU")
def test_vllm_generates_with_the_published_adapter_and_raw_policy_logprobs(tmp_path):
    """On a GPU: vLLM's samples in bf16 (its LoRA kernels take fp16/bf16 only), their log-probs against the same
    model in transformers, and a hot-swap. The tolerance is measured here: vLLM's bf16 log-probs may stray from
    fp32 transformers twice as far as transformers' own bf16 ones do, plus 0.01."""
    from trainer.tiny import save_tiny_models

    models = save_tiny_models(tmp_path / "m", hidden_size=256, num_heads=4, num_layers=2, intermediate_size=512)
    gen = VLLMGenerator(str(models.policy), tmp_path / "adapters", max_staleness=1, max_lora_rank=8,
                        engine_args={"gpu_memory_utilization": 0.3, "max_model_len": 256, "dtype": "bfloat16",
                                     "enforce_eager": True})  # no CUDA-graph capture: a quick start
    prompt = Prompt(prompt_id="p", text="What is 2 + 3?")
    sampling = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0)

    def reference(adapter, dtype, generations) -> list[list[float]]:
        model = AutoModelForCausalLM.from_pretrained(models.policy, dtype=dtype).cuda()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        out = []
        for g in generations:
            ids = torch.tensor([prompt_ids(gen.tokenizer, prompt) + g.token_ids], device="cuda")
            with torch.no_grad():
                logps = torch.log_softmax(model(ids).logits[0, -len(g.token_ids) - 1:-1].float(), -1)
            out.append(logps.gather(-1, ids[0, -len(g.token_ids):, None]).squeeze(-1).tolist())
        return out

    def check_logprobs(adapter, generations) -> None:  # raw policy log-probs, as the trainer recomputes them
        exact, bf16 = reference(adapter, torch.float32, generations), reference(adapter, torch.bfloat16, generations)
        spread = max(abs(a - b) for x, y in zip(exact, bf16, strict=True) for a, b in zip(x, y, strict=True))
        for g, want in zip(generations, exact, strict=True):
            assert g.logprobs == pytest.approx(want, abs=2 * spread + 0.01)

    before = gen.generate([prompt], sampling)[0]
    assert len(before) == 4 and gen.version == 0
    check_logprobs(None, before)
    config, tensors = published(models.policy)
    gen.load_policy(1, config, tensors)
    after = gen.generate([prompt], sampling)[0]
    assert gen.version == 1 and gen.adapter.name == "policy-v1-1"
    check_logprobs(gen.adapter.path, after)  # against the adapted model: vLLM serves the new weights
    wrong = {k.replace("q_proj", "nope_proj"): v for k, v in tensors.items()}  # modules the model lacks
    with pytest.raises(Exception):  # noqa: B017 — vLLM's own error, raised to the caller, not in the engine step
        gen.load_policy(2, config, wrong)
    assert gen.version == 1 and len(gen.generate([prompt], sampling)[0]) == 4  # the engine lives on, with v1
    greedy = gen.generate([prompt], SamplingParams(n=3, temperature=0.0, max_new_tokens=8))[0]
    assert len(greedy) == 3 and len({tuple(g.token_ids) for g in greedy}) == 1  # vLLM refuses n > 1 at temperature 0
