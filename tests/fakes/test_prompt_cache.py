"""The fake servers cache prompts by the vendors' documented rules, counted by a real tokenizer.

Through the real SDKs and the service's providers: what they report is what the service records.
"""

from __future__ import annotations

import anthropic
import openai

from service.providers.anthropic import AnthropicProvider
from service.providers.base import CompletionRequest, Message
from service.providers.openai import OpenAIProvider
from tests.fakes.llm_server import FakeLLMServer, anthropic_prompt, openai_prompt, tokens_of

SENTENCE = "The sample variance divides the sum of squared deviations by n minus one. "


def text_of(tokens: int) -> str:
    """A system prompt of exactly `tokens` o200k tokens."""
    text = SENTENCE * (tokens // tokens_of(SENTENCE) + 1)
    while tokens_of(text) > tokens:
        text = text[:-1]
    while tokens_of(text) < tokens:
        text += " x"
    assert tokens_of(text) == tokens
    return text


def request(system: str, user: str = "How do I compute a variance?") -> CompletionRequest:
    return CompletionRequest(system=system, messages=(Message(role="user", content=user),), max_tokens=200)


def openai_provider(server: FakeLLMServer) -> OpenAIProvider:
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.openai_base_url, max_retries=0)
    return OpenAIProvider(client, default_model="gpt-4o-mini", concurrency=4)


def anthropic_provider(server: FakeLLMServer, model: str) -> AnthropicProvider:
    client = anthropic.AsyncAnthropic(api_key="sk-ant", base_url=server.anthropic_base_url, max_retries=0)
    return AnthropicProvider(client, default_model=model, concurrency=4)


def openai_length(system: str, user: str) -> int:
    return len(openai_prompt([{"role": "system", "content": system}, {"role": "user", "content": user}]))


async def test_openai_caches_nothing_below_1024_prompt_tokens(llm_server: FakeLLMServer) -> None:
    provider = openai_provider(llm_server)
    system = text_of(900)
    first = await provider.complete(request(system))
    second = await provider.complete(request(system))
    await provider.aclose()
    length = openai_length(system, "How do I compute a variance?")
    # 900 + 3 framing + 1 role, the user turn likewise, 3 priming: under 1,024.
    assert length == 900 + 4 + 4 + tokens_of("How do I compute a variance?") + 3 < 1024
    assert first.usage.input_tokens == second.usage.input_tokens == length
    assert first.usage.cached_tokens == second.usage.cached_tokens == 0
    assert second.usage.cache_write_tokens == 0


async def test_openai_caches_the_shared_prefix_in_128_token_steps(llm_server: FakeLLMServer) -> None:
    provider = openai_provider(llm_server)
    system = text_of(1500)
    first = await provider.complete(request(system, "How do I compute a variance?"))
    same = await provider.complete(request(system, "How do I compute a variance?"))
    other = await provider.complete(request(system, "And a trimmed mean of a vector?"))
    await provider.aclose()
    length = openai_length(system, "How do I compute a variance?")
    assert first.usage.input_tokens == length and first.usage.cached_tokens == 0
    # The same prompt again: its longest 128-step prefix from 1,024 on.
    assert same.usage.cached_tokens == 1024 + (length - 1024) // 128 * 128
    # Another user turn shares the system message and its framing (1,500 + 4 + 3 + 1 tokens).
    shared = 1500 + 4 + 3 + 1
    assert other.usage.cached_tokens == 1024 + (shared - 1024) // 128 * 128 == 1408
    assert other.usage.cache_write_tokens == 0


async def test_anthropic_writes_then_reads_the_system_prompt_above_the_minimum(
    llm_server: FakeLLMServer,
) -> None:
    provider = anthropic_provider(llm_server, "claude-sonnet-4-5")
    system = text_of(1100)
    first = await provider.complete(request(system))
    second = await provider.complete(request(system, "Another question, a longer one this time?"))
    await provider.aclose()
    body = llm_server.calls[0].body
    tokens, breakpoints = anthropic_prompt(body)
    assert breakpoints == [1100]
    # input_tokens on the wire excludes both; the service's usage holds the whole prompt.
    assert first.usage.input_tokens == len(tokens)
    assert (first.usage.cache_write_tokens, first.usage.cached_tokens) == (1100, 0)
    assert (second.usage.cache_write_tokens, second.usage.cached_tokens) == (0, 1100)


async def test_anthropic_caches_nothing_below_the_models_minimum(llm_server: FakeLLMServer) -> None:
    # 1,500 tokens: enough for Sonnet (1,024), not for Haiku 3.5 (2,048).
    system = text_of(1500)
    haiku = anthropic_provider(llm_server, "claude-3-5-haiku-20241022")
    sonnet = anthropic_provider(llm_server, "claude-sonnet-4-20250514")
    short = [await haiku.complete(request(system)) for _ in range(2)]
    long = [await sonnet.complete(request(system)) for _ in range(2)]
    await haiku.aclose()
    await sonnet.aclose()
    assert [(u.usage.cache_write_tokens, u.usage.cached_tokens) for u in short] == [(0, 0), (0, 0)]
    assert [(u.usage.cache_write_tokens, u.usage.cached_tokens) for u in long] == [(1500, 0), (0, 1500)]
    # Cache entries are per model: Sonnet's first call wrote although Haiku had sent the same prompt.


async def test_anthropic_count_tokens_counts_the_whole_prompt(llm_server: FakeLLMServer) -> None:
    client = anthropic.AsyncAnthropic(api_key="sk-ant", base_url=llm_server.anthropic_base_url)
    system = text_of(300)
    counted = await client.messages.count_tokens(
        model="claude-sonnet-4-5",
        system=system,
        messages=[{"role": "user", "content": "How do I compute a variance?"}],
    )
    await client.close()
    assert counted.input_tokens == 300 + 3 + tokens_of("How do I compute a variance?")
