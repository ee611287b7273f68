"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from service.api.problems import problems
from service.errors import SandboxUnavailable
from service.providers.limiter import LaneState
from service.runtime import Runtime
from service.stages.estimate import cache_notes
from service.stages.spec import resolve_spec
from service.wire.estimate import CacheNote
from service.wire.generate import Spec

__all__ = ["open_routes", "routes"]


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    """`ready` is true when R runs in the configured sandbox and the default provider is configured.

    `lanes` shows each provider and model used so far: its concurrency limit, calls in flight and
    queued, and its circuit breaker (`open` while calls wait for a probe). An open breaker does not
    make the service unready: every replica shares the provider, so routing elsewhere would not help.

    `prompt_cache` says, for the default provider and model and the built-in prompts of each locale,
    whether each task's step has a shared prefix long enough to be cached (a spec's own conventions,
    answer rules and few-shot examples lengthen it: `/v1/estimate` says for a given spec).
    """

    ready: bool
    sandbox: dict[str, str]
    providers: dict[str, dict[str, str]]
    default_provider: str
    lanes: list[LaneState] = []
    prompt_cache: dict[str, list[CacheNote]] = {}


@get("/health", summary="Liveness: the process answers", tags=["health"], sync_to_thread=False)
def health_check() -> Health:
    return Health(status="ok")


@get(
    "/ready",
    summary="Readiness: R, the sandbox and the configured providers",
    description="Needs an API key when keys are configured: it tells how the service is set up.",
    tags=["health"],
    responses={
        503: ResponseSpec(Ready, description="Not ready: the body says which part", generate_examples=False),
        **problems(body=False),
    },
)
async def ready(runtime: NamedDependency[Runtime]) -> Response[Ready]:
    try:
        runner = await runtime.runner()
        sandbox = {"status": "ok", **runner.describe()}
        sandbox_ok = True
    except SandboxUnavailable as exc:
        sandbox = {"status": "unavailable", "mode": runtime.settings.sandbox, "reason": exc.detail}
        sandbox_ok = False
    providers = runtime.providers.describe()
    default = runtime.providers.default_name
    ok = sandbox_ok and providers[default]["configured"] == "true"
    body = Ready(
        ready=ok,
        sandbox=sandbox,
        providers=providers,
        default_provider=default,
        lanes=runtime.providers.lanes(),
        prompt_cache=await _prompt_cache(runtime, default),
    )
    return Response(body, status_code=200 if ok else 503)


async def _prompt_cache(runtime: Runtime, provider: str) -> dict[str, list[CacheNote]]:
    """Computed once per provider: the built-in prompts do not change while the service runs."""
    key = f"prompt_cache:{provider}"
    if key not in runtime.memo:
        model = runtime.default_model(provider)
        if runtime.providers.is_configured(provider):
            model = runtime.providers.get(provider).default_model
        price = runtime.prices.lookup(provider, model)

        def notes() -> dict[str, list[CacheNote]]:
            jobs = {locale: resolve_spec(Spec(locale=locale, per_cell=1)) for locale in ("en", "ja")}
            return {locale: cache_notes(job, provider, model, price) for locale, job in jobs.items()}

        runtime.memo[key] = await asyncio.to_thread(notes)
    return runtime.memo[key]  # type: ignore[no-any-return]


# /health needs no key (load balancers, the container's health check); /ready tells the configuration.
open_routes = [health_check]
routes = [ready]
