"""POST /v1/estimate: what a /v1/generate spec would cost, before anything is spent."""

from __future__ import annotations

from litestar import post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from service.api.problems import problems
from service.runtime import Runtime
from service.stages.estimate import estimate_job
from service.stages.spec import resolve_spec
from service.wire.estimate import Estimate, EstimateRequest
from service.wire.generate import Counts, Spec

__all__ = ["estimate_spec", "routes"]


@post(
    "/v1/estimate",
    summary="Estimate the calls, tokens and cost of a spec",
    description=(
        "Takes the spec of `/v1/generate` (checked the same way) and renders the prompts the job would "
        "send, without calling a model: calls, input, cached and output tokens and cost in US dollars per "
        "step and in total, each as a low / expected / high range, and whether each step's shared prompt "
        "prefix is long enough for the provider's prompt cache. With `observed`, the `counts` of an "
        "earlier job on the same model, the expected calls and tokens of the tasks it ran follow what "
        "that job really took."
    ),
    tags=["generate"],
    opt={"scope": "generate"},
    status_code=200,
    responses={
        200: ResponseSpec(data_container=Estimate, description="The estimate", generate_examples=False),
        **problems(),
    },
)
async def estimate(data: JSONBody[EstimateRequest], runtime: NamedDependency[Runtime]) -> Estimate:
    return await estimate_spec(data, runtime, observed=data.observed)


async def estimate_spec(data: Spec, runtime: Runtime, *, observed: Counts | None = None) -> Estimate:
    """The route's work, shared with `python -m service estimate`."""
    job = resolve_spec(data)
    name = data.model.provider or runtime.providers.default_name
    # An unconfigured provider can still be estimated; a configured one may count tokens itself.
    provider = runtime.providers.get(name) if runtime.providers.is_configured(name) else None
    model = data.model.name or (
        provider.default_model if provider is not None else runtime.default_model(name)
    )
    price, taken = runtime.prices.quote(name, model, data.pricing)
    return await estimate_job(
        job,
        provider_name=name,
        model=model,
        price=price,
        prices=runtime.prices,
        price_taken=taken,
        provider=provider,
        observed=observed,
    )


routes = [estimate]
