"""The providers' batch methods through the official SDKs against the fake's Files/Batch and Message
Batches protocols: status progression, results, partial failures, expiry, validation errors."""

from __future__ import annotations

import pytest

from service.errors import BatchRequestFailed, ProviderRejected
from service.providers.base import Completion, CompletionRequest, Message
from service.providers.limiter import RetryPolicy
from service.providers.openai import OpenAIProvider
from tests.fakes.faults import Fault
from tests.fakes.llm_server import (
    ANTHROPIC_MESSAGE_OVERHEAD,
    OPENAI_MESSAGE_OVERHEAD,
    FakeLLMServer,
    tokens_of,
)
from tests.providers.test_sdk_providers import VENDORS, make


def request(text: str) -> CompletionRequest:
    return CompletionRequest(system="You answer R questions.", messages=(Message(role="user", content=text),))


REQUESTS = [(f"req-{i}", request(f"How do I compute the mean of sample {i}?")) for i in range(3)]


@VENDORS
async def test_a_batch_runs_after_its_polls_and_answers_each_request(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    llm_server.batches.polls = 2
    provider = make(llm_server, vendor)
    submitted = await provider.submit_batch(REQUESTS)
    assert submitted.status == ("validating" if vendor == "openai" else "in_progress")
    assert not submitted.ended and submitted.counts.total == 3
    assert not llm_server.calls  # nothing runs before the batch does
    for _ in range(2):
        polled = await provider.batch_status(submitted.id)
        assert polled.status == "in_progress" and not polled.ended and polled.counts.processing == 3
    if vendor == "openai":
        finalizing = await provider.batch_status(submitted.id)
        assert finalizing.status == "finalizing" and not finalizing.ended and finalizing.counts.succeeded == 3
    ended = await provider.batch_status(submitted.id)
    assert ended.ended and ended.status == ("completed" if vendor == "openai" else "ended")
    assert (ended.counts.succeeded, ended.counts.errored, ended.counts.processing) == (3, 0, 0)
    results = await provider.batch_results(submitted.id)
    assert sorted(results) == ["req-0", "req-1", "req-2"]
    for custom_id, req in REQUESTS:
        got = results[custom_id]
        assert isinstance(got, Completion) and got.text
        # The prompt as each vendor counts it: the texts and the framing of its turns.
        framing = 2 * (OPENAI_MESSAGE_OVERHEAD + 1) + 3 if vendor == "openai" else ANTHROPIC_MESSAGE_OVERHEAD
        assert got.usage.input_tokens == tokens_of(req.system) + tokens_of(req.messages[0].content) + framing
        assert got.usage.output_tokens == tokens_of(got.text)
    # Each line reached the model as the direct call would have, with the body the provider builds.
    assert len(llm_server.calls) == 3 and {c.protocol for c in llm_server.calls} == {vendor}
    await provider.aclose()


@VENDORS
async def test_errored_and_expired_lines(llm_server: FakeLLMServer, vendor: str) -> None:
    provider = make(llm_server, vendor)
    llm_server.fail_next(Fault(kind="status", status=500))
    llm_server.batches.expire_next(after=2)
    submitted = await provider.submit_batch(REQUESTS)
    await provider.batch_status(submitted.id)
    ended = await provider.batch_status(submitted.id)
    assert ended.status == ("expired" if vendor == "openai" else "ended")
    assert (ended.counts.succeeded, ended.counts.errored, ended.counts.expired) == (1, 1, 1)
    results = await provider.batch_results(submitted.id)
    errored, ok, expired = (results[f"req-{i}"] for i in range(3))
    assert isinstance(ok, Completion)
    assert isinstance(errored, BatchRequestFailed) and errored.reason == "batch_errored"
    assert isinstance(expired, BatchRequestFailed) and expired.reason == "batch_expired"
    assert errored.detail.startswith(f"batch {submitted.id}: ")
    await provider.aclose()


async def test_openai_fails_a_batch_whose_input_does_not_validate(llm_server: FakeLLMServer) -> None:
    provider = make(llm_server, "openai")
    assert isinstance(provider, OpenAIProvider)
    submitted = await provider.submit_batch([REQUESTS[0], ("req-0", REQUESTS[1][1])])
    ended = await provider.batch_status(submitted.id)
    assert ended.status == "failed" and ended.ended and ended.counts.total == 0
    results = await provider.batch_results(submitted.id)
    [failed] = results.values()
    assert isinstance(failed, BatchRequestFailed) and failed.reason == "batch_errored"
    assert "duplicate_custom_id" in failed.detail and "failed validation" in failed.detail
    assert not llm_server.calls
    await provider.aclose()


async def test_anthropic_refuses_a_batch_with_a_bad_custom_id(llm_server: FakeLLMServer) -> None:
    provider = make(llm_server, "anthropic", retry=RetryPolicy(max_retries=0))
    with pytest.raises(ProviderRejected, match="custom_id"):
        await provider.submit_batch([("not ok!", REQUESTS[0][1])])
    with pytest.raises(ProviderRejected, match="Duplicate custom_id"):
        await provider.submit_batch([REQUESTS[0], REQUESTS[0]])
    with pytest.raises(ProviderRejected, match="not found"):
        await provider.batch_status("msgbatch_unknown")
    await provider.aclose()
