"""An OpenAI-compatible chat-completions server as a generator: the LLM judge's model and eva's evolver,
served by vLLM, SGLang or an API (the `openai` client, the `judges` extra).

    chat = OpenAIChat(ApiSettings(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"))
    chat.complete(["Rewrite this prompt ..."], temperature=0.7, max_tokens=256)    # -> ["..."]
    LLMJudge(chat)                                                                  # the judge, over the API

Each text is one user message; up to `concurrency` requests are in flight at once; the client retries a
failed request `max_retries` times (with backoff: connection errors, 408/429/5xx) and gives up after
`timeout_s` per try. The key is read from the environment variable `api_key_env` (a local server takes
any: "EMPTY" when it is unset). A request that still fails raises ApiError: the judge then fails that
attempt and the hub dispatches the task again; the creator records the round as failed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from agents.backends import Generation
from protocol.messages import Prompt, SamplingParams
from protocol.settings import Strict


class ApiSettings(Strict):
    base_url: str = Field(description="The server's OpenAI API root, e.g. http://localhost:8000/v1 (vLLM, SGLang) "
                                      "or https://api.openai.com/v1.")
    model: str = Field(description="The model name the server knows.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key (unset: 'EMPTY', "
                                                            "which local servers accept).")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Seconds a request may take before it is retried.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a failed request (connection errors, 408, "
                                                        "429, 5xx), with backoff.")


class ApiError(RuntimeError):
    """A request that failed after its retries (the message names the server and the error)."""


class OpenAIChat:
    def __init__(self, settings: ApiSettings) -> None:
        from openai import OpenAI

        self.settings = settings
        self.client = OpenAI(base_url=settings.base_url, api_key=os.environ.get(settings.api_key_env) or "EMPTY",
                             timeout=settings.timeout_s, max_retries=settings.max_retries)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="openai")

    def complete(self, texts: Sequence[str], temperature: float = 0.0, max_tokens: int = 256,
                 seed: int | None = None) -> list[str]:
        """One reply per text, in order."""
        return list(self.pool.map(lambda text: self._one(text, temperature, max_tokens, seed), texts))

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Generation]]:
        """The local generators' interface (what LLMJudge calls): text only, no token ids or log-probs."""
        replies = self.complete([p.text for p in prompts], sampling.temperature, sampling.max_new_tokens, sampling.seed)
        return [[Generation(reply, [], [], "stop")] for reply in replies]

    def _one(self, text: str, temperature: float, max_tokens: int, seed: int | None) -> str:
        from openai import OpenAIError

        extra: dict[str, Any] = {"seed": seed} if seed is not None else {}
        try:
            reply = self.client.chat.completions.create(
                model=self.settings.model, messages=[{"role": "user", "content": text}], temperature=temperature,
                max_tokens=max_tokens, **extra)
        except OpenAIError as e:
            raise ApiError(f"{self.settings.base_url} ({self.settings.model}): {type(e).__name__}: {e}") from e
        return reply.choices[0].message.content or ""

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
