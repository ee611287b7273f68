"""The OpenAI and Anthropic providers through their real SDKs against the fake servers' vendor faults."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from service.errors import ProviderRejected, ProviderUnavailable
from service.providers.anthropic import AnthropicProvider
from service.providers.base import CompletionRequest, Message
from service.providers.limiter import Adaptive, BreakerPolicy, RetryPolicy
from service.providers.openai import OpenAIProvider
from service.providers.registry import ProviderRegistry
from tests.conftest import settings_for
from tests.fakes.faults import ConcurrencyLimit, Fault
from tests.fakes.llm_server import FakeLLMServer, tokens_of

QUICK = RetryPolicy(max_retries=3, max_throttled_retries=10, backoff_s=0.02)
REQUEST = CompletionRequest(
    system="You answer R questions.", messages=(Message(role="user", content="mean?"),)
)


def make(server: FakeLLMServer, vendor: str, **kw: object) -> OpenAIProvider | AnthropicProvider:
    options: dict[str, object] = {"concurrency": Adaptive(initial=4, max=8), "retry": QUICK, **kw}
    if vendor == "openai":
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.openai_base_url, max_retries=5)
        return OpenAIProvider(client, default_model="fake-gpt", **options)  # type: ignore[arg-type]
    aclient = anthropic.AsyncAnthropic(api_key="sk-ant", base_url=server.anthropic_base_url, max_retries=5)
    return AnthropicProvider(aclient, default_model="fake-claude", **options)  # type: ignore[arg-type]


VENDORS = pytest.mark.parametrize("vendor", ["openai", "anthropic"])


@VENDORS
async def test_the_sdks_own_retries_are_off_so_the_lane_sees_every_429(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    llm_server.fail_next(Fault(kind="status", status=429, retry_after_s=0.2))
    provider = make(llm_server, vendor)
    completion = await provider.complete(REQUEST)
    await provider.aclose()
    assert completion.text and not completion.truncated
    # The client was built with max_retries=5; the provider turned that off and retried itself.
    assert [c.status for c in llm_server.calls] == [429, 200]
    [lane] = provider.lanes()
    assert (lane.calls, lane.throttled, lane.failed) == (2, 1, 0)
    assert lane.limit == 3  # floor(0.9 × 4)
    assert "429 from the" in (lane.last_error or "")
    # The retry waited for the Retry-After (0.2 s; Anthropic's header rounds up to a whole second).
    gap = llm_server.calls[1].at - llm_server.calls[0].at
    assert gap >= (0.19 if vendor == "openai" else 0.99)


async def test_retry_after_ms_is_preferred_to_retry_after(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(
        Fault(kind="status", status=429, headers={"retry-after": "5", "retry-after-ms": "150"})
    )
    provider = make(llm_server, "openai")
    await provider.complete(REQUEST)
    await provider.aclose()
    gap = llm_server.calls[1].at - llm_server.calls[0].at
    assert 0.14 <= gap < 1.0


@VENDORS
@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_are_retried_with_backoff(
    llm_server: FakeLLMServer, vendor: str, status: int
) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=status) for _ in range(3)])
    provider = make(llm_server, vendor)
    completion = await provider.complete(REQUEST)
    await provider.aclose()
    assert completion.text
    assert [c.status for c in llm_server.calls] == [status, status, status, 200]
    [lane] = provider.lanes()
    assert lane.failed == 3 and lane.breaker == "closed" and lane.consecutive_failures == 0


@VENDORS
@pytest.mark.parametrize("kind", ["reset", "bad_json"])
async def test_dropped_connections_and_unreadable_bodies_are_retried(
    llm_server: FakeLLMServer, vendor: str, kind: str
) -> None:
    llm_server.fail_next(Fault(kind=kind))  # type: ignore[arg-type]
    provider = make(llm_server, vendor)
    completion = await provider.complete(REQUEST)
    await provider.aclose()
    assert completion.text and len(llm_server.calls) == 2
    [lane] = provider.lanes()
    assert lane.failed == 1
    expected = "connection to the" if kind == "reset" else "unreadable body"
    assert expected in (lane.last_error or "")


@VENDORS
async def test_the_error_detail_is_the_vendors_message_and_request_id(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=500) for _ in range(10)])
    provider = make(llm_server, vendor, retry=RetryPolicy(max_retries=1, backoff_s=0.01))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.complete(REQUEST)
    await provider.aclose()
    detail = caught.value.detail
    message = "The server had an error" if vendor == "openai" else "Internal server error"
    assert detail.startswith(f"500 from the {vendor} API: {message}")
    assert "(request req_" in detail and detail.endswith("(after 2 attempts)")


async def test_a_gateways_html_502_is_reported_short_and_escaped(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=502) for _ in range(10)])
    provider = make(llm_server, "openai", retry=RetryPolicy(max_retries=0))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.complete(REQUEST)
    await provider.aclose()
    detail = caught.value.detail
    assert detail.startswith('502 from the openai API: "<html> <head><title>502 Bad Gateway')
    assert len(detail) < 220 and "\r" not in detail


@VENDORS
async def test_a_revoked_key_fails_at_once_and_later_calls_never_reach_the_api(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=401) for _ in range(10)])
    provider = make(llm_server, vendor, breaker=BreakerPolicy(cooldown_s=30))
    with pytest.raises(ProviderRejected, match="401 from the") as caught:
        await provider.complete(REQUEST)
    assert ("Incorrect API key" if vendor == "openai" else "invalid x-api-key") in caught.value.detail
    results = await asyncio.gather(*(provider.complete(REQUEST) for _ in range(20)), return_exceptions=True)
    await provider.aclose()
    assert all(isinstance(r, ProviderRejected) for r in results)
    assert len(llm_server.calls) == 1
    [lane] = provider.lanes()
    assert lane.breaker == "open" and lane.probe_in_s is not None and lane.probe_in_s > 25


@VENDORS
async def test_an_exhausted_quota_is_a_rejection_not_a_rate_limit(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    code = "insufficient_quota" if vendor == "openai" else "enforced_spend_limit_reached"
    llm_server.fail_next(Fault(kind="status", status=429, code=code))
    provider = make(llm_server, vendor)
    with pytest.raises(ProviderRejected, match="429"):
        await provider.complete(REQUEST)
    await provider.aclose()
    assert len(llm_server.calls) == 1


@VENDORS
async def test_a_bad_request_is_not_retried_and_leaves_the_breaker_closed(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    llm_server.fail_next(Fault(kind="status", status=400, body="max_tokens: too large"))
    provider = make(llm_server, vendor)
    with pytest.raises(ProviderRejected, match="max_tokens: too large"):
        await provider.complete(REQUEST)
    assert (await provider.complete(REQUEST)).text
    await provider.aclose()
    assert [c.status for c in llm_server.calls] == [400, 200]
    assert provider.lanes()[0].breaker == "closed"


@VENDORS
async def test_a_reply_cut_at_max_tokens_says_so_and_is_really_cut(vendor: str) -> None:
    long_text = "word " * 400  # 400 tokens of o200k_base, the fake's tokenizer

    with FakeLLMServer(reply=lambda system, user: long_text) as server:
        provider = make(server, vendor)
        cut = await provider.complete(CompletionRequest(system="s", messages=REQUEST.messages, max_tokens=64))
        whole = await provider.complete(
            CompletionRequest(system="s", messages=REQUEST.messages, max_tokens=600)
        )
        await provider.aclose()
    assert cut.truncated and cut.finish_reason == ("length" if vendor == "openai" else "max_tokens")
    assert long_text.startswith(cut.text) and tokens_of(cut.text) == cut.usage.output_tokens == 64
    assert not whole.truncated and whole.text == long_text
    assert whole.finish_reason == ("stop" if vendor == "openai" else "end_turn")
    assert whole.usage.output_tokens == tokens_of(long_text)


@VENDORS
async def test_a_stop_sequence_ends_the_reply_before_it(vendor: str) -> None:
    text = "### Q1\nHow do I get a mean?\n\n### Q2\nAnd a variance?\n### Q3\nA median?"
    with FakeLLMServer(reply=lambda system, user: text) as server:
        provider = make(server, vendor)
        stopped = await provider.complete(
            CompletionRequest(system="s", messages=REQUEST.messages, stop=("### Q3", "never there"))
        )
        await provider.aclose()
    sent = server.calls[0].body["stop" if vendor == "openai" else "stop_sequences"]
    assert sent == ["### Q3", "never there"]
    assert stopped.text == text[: text.index("### Q3")] and not stopped.truncated
    assert stopped.finish_reason == ("stop" if vendor == "openai" else "stop_sequence")
    assert stopped.usage.output_tokens == tokens_of(stopped.text)


async def test_the_limit_adapts_down_to_what_the_server_allows_and_every_call_succeeds() -> None:
    with FakeLLMServer(latency_s=0.05) as server:
        rule = server.faults.add(ConcurrencyLimit(3, service_s=0.05))
        provider = make(server, "openai", concurrency=Adaptive(initial=8, max=16))
        results = await asyncio.gather(*(provider.complete(REQUEST) for _ in range(60)))
        await provider.aclose()
    assert len(results) == 60 and all(r.text for r in results)
    [lane] = provider.lanes()
    assert 2 <= lane.limit <= 4 and lane.in_flight == 0 and lane.queued == 0
    refused = sum(c.status == 429 for c in server.calls)
    assert refused == rule.refused == lane.throttled  # type: ignore[attr-defined]
    # 8 sent at once against a limit of 3: 5 refused, then 4, 3, 2, 1 as the limit comes down to 3,
    # and a few steps back up answered by a 429. How many of the 8 are in flight together when the
    # first 429s return depends on the machine's load, hence the margin; a lane that did not adapt
    # would be refused on most of the 60 calls.
    assert 10 <= refused <= 24


async def test_a_fixed_concurrency_never_exceeds_its_limit(llm_server: FakeLLMServer) -> None:
    llm_server.latency_s = 0.05
    rule = llm_server.faults.add(ConcurrencyLimit(100, service_s=0.05))
    provider = make(llm_server, "openai", concurrency=2)
    await asyncio.gather(*(provider.complete(REQUEST) for _ in range(10)))
    await provider.aclose()
    assert rule.peak == 2  # type: ignore[attr-defined]
    [lane] = provider.lanes()
    assert (lane.adaptive, lane.limit, lane.max_limit) == (False, 2, 2)


async def test_lanes_are_per_model(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(
        Fault(kind="status", status=429, retry_after_s=0.05, match=lambda c: c.body["model"] == "a")
    )
    provider = make(llm_server, "openai")
    await provider.complete(CompletionRequest(system="s", messages=REQUEST.messages, model="a"))
    await provider.complete(CompletionRequest(system="s", messages=REQUEST.messages, model="b"))
    await provider.aclose()
    lanes = {lane.model: lane for lane in provider.lanes()}
    assert lanes["a"].throttled == 1 and lanes["a"].limit == 3
    assert lanes["b"].throttled == 0 and lanes["b"].limit == 4


async def test_providers_built_from_settings_use_the_lane_settings(llm_server: FakeLLMServer) -> None:
    settings = settings_for(llm_server, concurrency=5, concurrency_max=9, max_retries=0)
    registry = ProviderRegistry(settings)
    for name in ("openai", "anthropic"):
        provider = registry.get(name)
        assert provider.describe()["concurrency"] == "adaptive 1–9, from 5"
    llm_server.fail_next(Fault(kind="status", status=503))
    with pytest.raises(ProviderUnavailable, match="503"):
        await registry.get("openai").complete(REQUEST)
    [lane] = registry.lanes()
    assert (lane.provider, lane.model, lane.limit, lane.max_limit) == ("openai", "fake-gpt", 4, 9)
    await registry.aclose()


async def test_the_fakes_errors_parse_as_each_vendors_own(llm_server: FakeLLMServer) -> None:
    """The SDKs themselves read the fake's error bodies and headers as they read the real APIs'."""
    llm_server.fail_next(
        Fault(kind="status", status=429, retry_after_s=1.5),
        Fault(kind="status", status=429, retry_after_s=1.5),
        Fault(kind="status", status=529),
    )
    oclient = openai.AsyncOpenAI(api_key="sk-test", base_url=llm_server.openai_base_url, max_retries=0)
    with pytest.raises(openai.RateLimitError) as o:
        await oclient.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
    await oclient.close()
    assert (o.value.code, o.value.type, o.value.param) == ("rate_limit_exceeded", "requests", None)
    assert "Rate limit reached for gpt-x" in o.value.message and o.value.request_id.startswith("req_")
    headers = o.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1500")
    assert (
        headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"] == "1.5s"
    )
    aclient = anthropic.AsyncAnthropic(
        api_key="sk-ant", base_url=llm_server.anthropic_base_url, max_retries=0
    )
    with pytest.raises(anthropic.RateLimitError) as a:
        await aclient.messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert a.value.type == "rate_limit_error" and a.value.request_id.startswith("req_")  # type: ignore[union-attr]
    headers = a.value.response.headers
    assert headers["retry-after"] == "2" and headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await aclient.messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    await aclient.close()
    assert overloaded.value.status_code == 529 and overloaded.value.type == "overloaded_error"
    assert overloaded.value.body["error"]["message"] == "Overloaded"  # type: ignore[index]
