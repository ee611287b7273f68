"""/v1/batches: a spec run through the provider's batch API, in rounds, at half the price.

`POST /v1/batches` takes the spec and submits the first round; `GET /v1/batches/{handle}` says
how the round's provider batch is doing; `POST /v1/batches/{handle}` with the same spec reads an
ended round, submits the next and returns a new handle, and at the end returns what
/v1/generate would. The spec comes back with every step forward because the service keeps
nothing: the rounds are found by running the job again on the results so far
(`stages/batches.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter

from service.api.auth import Caller
from service.api.disconnect import until_disconnect
from service.api.generate import raise_if_provider_failed_everything
from service.api.problems import problems
from service.errors import InvalidInput, ProviderError
from service.providers.base import Batching, Completion, Provider
from service.runtime import Runtime
from service.stages.batches import Handle, open_handle, replay, sign_handle
from service.stages.evaluate import Sandbox, answer_evaluator
from service.stages.spec import Job, resolve_spec
from service.wire.batches import BatchJob, ProviderBatch
from service.wire.generate import Spec

__all__ = ["routes"]

HANDLE = Parameter(
    description="The handle the last reply gave (opaque, signed; it names the provider batches so far)",
    min_length=1,
    max_length=4000,
    pattern=r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$",
)


# What the routes that run the job may answer besides their own reply.
JOB_PROBLEMS = problems(
    {502: "The provider refused or failed the batch", 503: "Evaluation asked for, sandbox unavailable"}
)


class _BatchProvider(Provider, Batching, Protocol):
    """A provider with a batch API, for the type checker."""


def _provider(runtime: Runtime, name: str | None) -> _BatchProvider:
    provider = runtime.providers.get(name)
    if not isinstance(provider, Batching):
        raise InvalidInput(
            f"the {provider.name} provider has no batch API; batch jobs run on openai or anthropic",
            field="model.provider",
        )
    return cast(_BatchProvider, provider)


def _current(opened: Handle, handle: str, batch: ProviderBatch) -> BatchJob:
    """The job as its handle and the current round's provider batch describe it."""
    return BatchJob(
        state="ready" if batch.ended else "running",
        provider=opened.provider,
        spec_sha256=opened.spec_sha256,
        round=len(opened.batches),
        requests=opened.requests,
        handle=handle,
        batch=batch,
    )


async def _sandbox(spec: Spec, runtime: Runtime, caller: Caller) -> Sandbox | None:
    if not spec.evaluation.enabled:
        return None
    return answer_evaluator(caller.runner(await runtime.runner()))


async def _go_on(
    job: Job,
    provider: _BatchProvider,
    results: dict[str, Completion | ProviderError],
    batches: list[str],
    *,
    request: Request[Any, Any, Any],
    runtime: Runtime,
    caller: Caller,
) -> BatchJob:
    """Run the job on the results so far: submit the next round, or return the job's response."""
    evaluate = await _sandbox(job.spec, runtime, caller)
    spec = job.spec
    last_round = len(batches) >= runtime.settings.batch_max_rounds
    price, taken = runtime.prices.quote(
        provider.name, spec.model.name or provider.default_model, spec.pricing
    )
    response, pending = await until_disconnect(
        request,
        replay(
            job,
            provider,
            results,
            evaluate=evaluate,
            retries=runtime.settings.content_retries,
            last_round=last_round,
            price=price,
            price_taken=taken,
        ),
    )
    if not pending:
        raise_if_provider_failed_everything(response, provider.name)
        return BatchJob(
            state="done",
            provider=provider.name,
            spec_sha256=job.spec_sha256,
            round=len(batches),
            result=response,
        )
    batch = await provider.submit_batch(sorted(pending.items()))
    handle = Handle(
        provider=provider.name,
        spec_sha256=job.spec_sha256,
        caller=caller.name,
        batches=[*batches, batch.id],
        requests=len(pending),
    )
    return BatchJob(
        state="ready" if batch.ended else "running",
        provider=provider.name,
        spec_sha256=job.spec_sha256,
        round=len(handle.batches),
        requests=len(pending),
        handle=sign_handle(handle, secret=runtime.batch_secret),
        batch=batch,
    )


@post(
    "/v1/batches",
    summary="Submit a spec as a batch job",
    description=(
        "The same spec as /v1/generate, run through the provider's batch API (OpenAI Batch, Anthropic "
        "Message Batches) at about half the price, within the provider's 24-hour window. Submits the "
        "first round of model calls and returns a signed handle: poll `GET /v1/batches/{handle}`, and "
        "once the round is `ready` POST the spec to `/v1/batches/{handle}` to go on."
    ),
    tags=["batches"],
    opt={"scope": "generate", "job": True},
    status_code=202,
    responses={
        202: ResponseSpec(
            data_container=BatchJob, description="The first round, submitted", generate_examples=False
        ),
        **JOB_PROBLEMS,
    },
)
async def submit(
    data: JSONBody[Spec], request: Request, runtime: NamedDependency[Runtime], caller: NamedDependency[Caller]
) -> BatchJob:
    job = resolve_spec(data)
    provider = _provider(runtime, data.model.provider)
    return await _go_on(job, provider, {}, [], request=request, runtime=runtime, caller=caller)


@get(
    "/v1/batches/{handle:str}",
    summary="How a batch job's current round is doing",
    description=(
        "Reads the provider batch of the current round: `running` with the provider's counts, or "
        "`ready` when it has ended (then POST the spec to this path). Never goes on by itself."
    ),
    tags=["batches"],
    opt={"scope": "generate"},
    responses={
        200: ResponseSpec(data_container=BatchJob, description="The round's state", generate_examples=False),
        **problems({502: "The provider could not be asked"}, body=False),
        400: problems({400: "A malformed handle"})[400],
    },
)
async def status(
    handle: str = HANDLE,
    *,
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
) -> BatchJob:
    opened = open_handle(handle, secret=runtime.batch_secret, caller=caller.name)
    provider = _provider(runtime, opened.provider)
    return _current(opened, handle, await provider.batch_status(opened.batches[-1]))


@post(
    "/v1/batches/{handle:str}",
    summary="Go on with a batch job",
    description=(
        "Send the spec the job was submitted with (checked against the handle's hash). While the "
        "round's provider batch runs, the reply is as for GET. Once it has ended, its results are "
        "read, dedup, the sandbox and the checks run, and the next round (answers, repairs, top-ups) "
        "is submitted under a new handle; when no call is left, `done` with `result` exactly as "
        "POST /v1/generate returns it."
    ),
    tags=["batches"],
    opt={"scope": "generate", "job": True},
    status_code=200,
    responses={
        200: ResponseSpec(
            data_container=BatchJob, description="The next round, or the result", generate_examples=False
        ),
        **JOB_PROBLEMS,
    },
)
async def go_on(
    data: JSONBody[Spec],
    request: Request,
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
    handle: str = HANDLE,
) -> BatchJob:
    job = resolve_spec(data)
    opened = open_handle(handle, secret=runtime.batch_secret, caller=caller.name, spec_sha256=job.spec_sha256)
    provider = _provider(runtime, opened.provider)
    batch = await provider.batch_status(opened.batches[-1])
    if not batch.ended:
        return _current(opened, handle, batch)
    results: dict[str, Completion | ProviderError] = {}
    for part in await asyncio.gather(*(provider.batch_results(b) for b in opened.batches)):
        results.update(part)
    return await _go_on(
        job, provider, results, list(opened.batches), request=request, runtime=runtime, caller=caller
    )


routes = [submit, status, go_on]
