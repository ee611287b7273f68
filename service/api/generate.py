"""POST /v1/generate: a spec in, pairs out — as one JSON body or as an NDJSON event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from service.api.auth import Caller
from service.api.disconnect import until_disconnect
from service.api.openapi import TEXT, documented
from service.api.problems import problems
from service.errors import ProviderRejected, ProviderUnavailable
from service.runtime import Runtime
from service.stages.evaluate import Sandbox, answer_evaluator
from service.stages.pipeline import collect, run_job
from service.stages.spec import resolve_spec
from service.wire.generate import Event, GenerateResponse, Spec

__all__ = ["raise_if_provider_failed_everything", "routes"]

NDJSON = "application/x-ndjson"


async def _ndjson(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    encoder = msgspec.json.Encoder()
    async for event in events:
        yield encoder.encode(event) + b"\n"


def raise_if_provider_failed_everything(response: GenerateResponse, provider: str) -> None:
    """A job whose every item failed at the provider is the provider's failure: 502, not an empty 200."""
    reasons = {item.reason for item in response.failed}
    if response.pairs or not reasons or not reasons <= {"provider_rejected", "provider_unavailable"}:
        return
    first = response.failed[0].detail
    cls = ProviderRejected if "provider_rejected" in reasons else ProviderUnavailable
    raise cls(f"every model call failed; first error: {first}", provider=provider)


@post(
    "/v1/generate",
    summary="Generate question/answer pairs from a spec",
    description=(
        "Questions per task × theme cell, ROUGE-L dedup, answers, sandboxed R evaluation. "
        f"Send `Accept: {NDJSON}` to receive progress events, one JSON object per line, ending with `done`."
    ),
    tags=["generate"],
    opt={"scope": "generate", "job": True},
    operation_class=documented(ok_media={NDJSON: TEXT}),
    status_code=200,
    responses={
        200: ResponseSpec(
            data_container=GenerateResponse,
            description="All pairs, dropped and failed items",
            generate_examples=False,
        ),
        **problems({502: "The provider failed every call", 503: "Evaluation asked for, sandbox unavailable"}),
    },
)
async def generate(
    data: JSONBody[Spec], request: Request, runtime: NamedDependency[Runtime], caller: NamedDependency[Caller]
) -> Response[GenerateResponse]:
    job = resolve_spec(data)
    provider = runtime.providers.get(data.model.provider)
    evaluate: Sandbox | None = None
    if data.evaluation.enabled:
        evaluate = answer_evaluator(caller.runner(await runtime.runner()))

    model = data.model.name or provider.default_model
    price, taken = runtime.prices.quote(provider.name, model, data.pricing)
    events = run_job(
        job,
        provider,
        evaluate=evaluate,
        retries=runtime.settings.content_retries,
        price=price,
        price_taken=taken,
    )
    if NDJSON in request.headers.get("accept", ""):
        return Stream(_ndjson(events), media_type=NDJSON)
    response = await until_disconnect(request, collect(events))
    raise_if_provider_failed_everything(response, provider.name)
    return Response(response)


routes = [generate]
