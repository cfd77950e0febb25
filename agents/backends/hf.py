"""Generation with transformers: batched sampling with KV cache, per-token log-probs, LoRA hot-swap.

    gen = HFGenerator("./tiny/policy")
    outputs = gen.generate([prompt], SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=32))
    gen.load_policy(update.version, update.adapter_config, tensors)   # a trainer's PolicyUpdate: new LoRA weights

A published adapter is merged into the base weights for generation (on a CPU the unmerged LoRA layers
cost about a third of the time), and unmerged before the next one is written; a base model kept in 16-bit
floats runs the adapter unmerged instead, since merging and unmerging again and again would round its weights.

Log-probs are those of the *policy* (raw logits, temperature 1) at each sampled token, not of the
temperature/top-p-processed sampling distribution: off-policy corrections and staleness checks
compare them with the trainer's log-probs of the same tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.backends import Generation
from protocol.messages import Prompt, SamplingParams
from trainer.adapters import adapter_parameters, lora_config, write_adapter


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """A prompt's token ids: chat messages through the chat template (whose text already holds the special
    tokens, so none are added), plain text with the tokenizer's special tokens. Both backends use this."""
    if prompt.messages:
        turns = [t.model_dump() for t in prompt.messages]
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt.text, add_special_tokens=True)["input_ids"]


class HFGenerator:
    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 16) -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else "cpu" if device == "auto" else device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path).to(self.device).eval()
        self.batch_size, self.version = batch_size, 0
        self._adapter: dict[str, torch.nn.Parameter] | None = None  # LoRA parameters by peft key, once loaded
        self._merge = self.model.dtype == torch.float32  # merge adapters into the weights (see the module's doc)

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: SamplingParams) -> list[list[Generation]]:
        """n generations per prompt, in prompt order."""
        out: list[list[Generation]] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[start:start + self.batch_size], sampling)
        return out

    def _batch(self, prompts: list[Prompt], sampling: SamplingParams) -> list[list[Generation]]:
        tok = self.tokenizer
        encoded = [prompt_ids(tok, p) for p in prompts]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            batch = tok.pad({"input_ids": encoded}, return_tensors="pt").to(self.device)
        finally:
            tok.padding_side = side
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs: dict[str, Any] = {"do_sample": sampling.temperature > 0, "max_new_tokens": sampling.max_new_tokens,
                                  "num_return_sequences": sampling.n, "pad_token_id": tok.pad_token_id,
                                  "eos_token_id": tok.eos_token_id, "return_dict_in_generate": True,
                                  "output_logits": True}
        if sampling.temperature > 0:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        result = self.model.generate(**batch, **kwargs)
        new = result.sequences[:, batch["input_ids"].shape[1]:]  # (B*n, L)
        logits = torch.stack(result.logits, dim=1).float()  # (B*n, L, V) raw policy logits
        logps = torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1)
        generations = []
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            length = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
            finish = "stop" if tok.eos_token_id in ids[:length] else "length"
            generations.append(Generation(tok.decode(ids[:length], skip_special_tokens=True), ids[:length],
                                          logps[row, :length].tolist(), finish))
        return [generations[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]

    def load_policy(self, version: int, adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Swap in a published LoRA adapter (peft state-dict keys, as the trainer sends them)."""
        from peft import get_peft_model

        if self._adapter is None:  # the first version: wrap the model in LoRA, once
            wrapped = get_peft_model(self.model, lora_config(adapter_config)).eval()
            try:
                parameters = adapter_parameters(wrapped)
                write_adapter(parameters, tensors)
            except Exception:  # the base model as it was: the next version wraps it afresh, with its own config
                self.model = wrapped.unload()
                raise
            self.model, self._adapter = wrapped, parameters
            if self._merge:
                self.model.merge_adapter()
            self.version = version
            return
        if self._merge:
            self.model.unmerge_adapter()  # back to the base weights before the next adapter is written
        try:
            write_adapter(self._adapter, tensors)  # a misfit raises before any copy: the old adapter stays
        finally:
            if self._merge:
                self.model.merge_adapter()
        self.version = version

