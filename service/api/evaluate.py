"""POST /v1/evaluate: run the R code of answers (or plain R) in the sandbox, with verdicts and evidence."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from service.api.auth import Caller
from service.api.disconnect import until_disconnect
from service.api.openapi import at_least_one_of, documented
from service.api.problems import problems
from service.runtime import Runtime
from service.stages.evaluate import check_request, evaluate_request
from service.wire.evaluate import EvaluateRequest, EvaluateResponse

__all__ = ["routes"]


@post(
    "/v1/evaluate",
    summary="Run R answers in the sandbox",
    description=(
        "`pairs` (as /v1/generate returns them: each answer's R code blocks are joined and run) and/or "
        "`snippets` of plain R. Every item gets a verdict — passed, parse_error, runtime_error, timeout, memory_limit, "
        "output_limit, killed or no_code — with its evidence: R's message, the failing call, the line "
        "(in the code and in the answer), warnings and the start of the printed output. "
        "503 when the sandbox cannot run, or (with Retry-After) when too many snippets are waiting. "
        "A client that disconnects has its snippets cancelled."
    ),
    tags=["evaluate"],
    opt={"scope": "evaluate", "job": True},
    operation_class=documented(body_rule=at_least_one_of("pairs", "snippets")),
    status_code=200,
    responses={
        200: ResponseSpec(
            data_container=EvaluateResponse,
            description="The pairs with their evaluation, and the snippets' results",
            generate_examples=False,
        ),
        **problems({503: "The R sandbox cannot run, or is too busy (Retry-After)"}),
    },
)
async def evaluate(
    data: JSONBody[EvaluateRequest],
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
) -> EvaluateResponse:
    check_request(data)  # a bad request is a 400 before the sandbox is started
    runner = caller.runner(await runtime.runner())
    return await until_disconnect(request, evaluate_request(runner, data))


routes = [evaluate]
