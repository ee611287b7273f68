"""POST /v1/reports: the validation report over pairs, as JSON or as a self-contained HTML page."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, QueryParameter

from service.api.auth import Caller
from service.api.disconnect import until_disconnect
from service.api.openapi import TEXT, documented
from service.api.problems import problems
from service.runtime import Runtime
from service.stages.evaluate import build_report, needs_runner
from service.wire.reports import Report, ReportRequest

__all__ = ["routes"]

HTML = "text/html"


@post(
    "/v1/reports",
    summary="Validation report over pairs",
    description=(
        "Sums up the evaluations of the given pairs (running the R code of pairs that have none, "
        "as `evaluate` says) by verdict and by task × theme, flagged pairs first with their evidence. "
        f"Send `Accept: {HTML}` or `?format=html` for one self-contained HTML page (no script, no "
        "external resource) instead of JSON."
    ),
    tags=["reports"],
    opt={"scope": "reports", "job": True},
    operation_class=documented(ok_media={"text/html": TEXT}),
    status_code=200,
    responses={
        200: ResponseSpec(
            data_container=Report,
            description="The report (JSON, or HTML on request)",
            generate_examples=False,
        ),
        **problems({503: "Pairs need running and the R sandbox cannot run, or is too busy (Retry-After)"}),
    },
)
async def report(
    data: JSONBody[ReportRequest],
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
    format: Annotated[
        str | None, QueryParameter(pattern="^(json|html)$", description="json (default) or html")
    ] = None,
) -> Response[Any]:
    runner = caller.runner(await runtime.runner()) if needs_runner(data.pairs, data.evaluate) else None
    body, html = await until_disconnect(
        request, build_report(data.pairs, runner=runner, evaluate=data.evaluate, title=data.title)
    )
    wants_html = format == "html" or (format is None and HTML in request.headers.get("accept", ""))
    if wants_html:
        return Response(html, media_type=HTML)  # Litestar adds `charset=utf-8`
    return Response(body)


routes = [report]
