"""`create_app`: the one place where settings, providers, the R sandbox and the routes meet."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, Contact, SecurityScheme

from service.api import batches, dedup, estimate, evaluate, exports, generate, health, reports
from service.api.auth import Gate, GateMiddleware, provide_caller
from service.api.body import QasynthRequest
from service.api.openapi import ClosedStructs
from service.api.problems import EXCEPTION_HANDLERS
from service.providers.base import Provider
from service.providers.registry import ProviderRegistry
from service.runtime import Runtime
from service.settings import Settings

__all__ = ["create_app", "openapi_json"]

log = logging.getLogger("qasynth")

VERSION = "0.1.0"
BEARER = "apiKey"


def create_app(
    settings: Settings | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    runner: Any = None,
) -> Litestar:
    """Build the app. `providers` and `runner` replace the ones built from settings (tests, embedding)."""
    settings = settings or Settings.from_env()
    runtime = Runtime(settings=settings, providers=ProviderRegistry(settings, providers), runner=runner)
    gate = Gate(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.runtime = runtime
        gate.start()
        if not gate.enabled:
            log.warning("no API keys configured: every route is open to whoever reaches the port")
        runtime.providers.open_configured()
        try:
            yield
        finally:
            await runtime.aclose()

    def provide_runtime() -> Runtime:
        return runtime

    # Everything but /health (and the OpenAPI document) sits behind the key gate.
    guarded = Router(
        path="/",
        route_handlers=[
            *health.routes,
            *generate.routes,
            *estimate.routes,
            *batches.routes,
            *dedup.routes,
            *evaluate.routes,
            *reports.routes,
            *exports.routes,
        ],
        middleware=[GateMiddleware(gate)],
        security=[{BEARER: []}],
        dependencies={"caller": Provide(provide_caller, sync_to_thread=False)},
    )
    return Litestar(
        route_handlers=[*health.open_routes, guarded],
        dependencies={"runtime": Provide(provide_runtime, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        # The server reads its limits from here (`service.server.server_config`).
        state=State({"settings": settings}),
        request_class=QasynthRequest,
        plugins=[ClosedStructs()],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="qasynth",
            version=VERSION,
            description=(
                "Manufactures question/answer pairs about R for statistics for fine-tuning code LLMs: "
                "spec → questions → ROUGE-L dedup → answers → sandboxed R evaluation → export."
            ),
            contact=Contact(name="qasynth"),
            path="/schema",
            components=Components(
                security_schemes={
                    BEARER: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description=(
                            "An API key as `Authorization: Bearer <key>`. The operator configures only its "
                            "SHA-256 (`python -m service keygen`); with no keys configured, no key is asked."
                        ),
                    )
                }
            ),
        ),
        debug=False,
    )


def openapi_json() -> str:
    """The OpenAPI document generated from the app, as committed in `openapi/openapi.json`."""
    import json

    import msgspec

    # msgspec first: schema examples may hold Struct instances that json cannot encode.
    schema = msgspec.json.decode(msgspec.json.encode(create_app(Settings()).openapi_schema.to_schema()))
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
