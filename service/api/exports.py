"""Routes for the review hand-off: /v1/exports and /v1/imports/label-studio.

Exports answer with the file body itself (JSON, JSONL, Parquet or markdown), or NDJSON streamed a
record a line when the client sends `Accept: application/x-ndjson`. How many pairs were exported
and left out travels in `X-Qasynth-Exported` and `X-Qasynth-Left-Out` headers.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from service.api.auth import Caller
from service.api.openapi import BINARY, TEXT, documented, only_with
from service.api.problems import problems
from service.errors import InvalidInput
from service.runtime import Runtime
from service.stages.evaluate import answer_evaluator
from service.stages.export import (
    check_target,
    export,
    import_review,
    label_config,
    push_to_label_studio,
)
from service.wire.export import (
    FORMATS,
    MAX_EXPORT_PAIRS,
    MAX_IMPORT_TASKS,
    ExportRequest,
    LeftOut,
    PushResult,
    ReviewImport,
    ReviewTasks,
)

__all__ = ["routes"]

NDJSON = "application/x-ndjson"


def _left_out(left_out: LeftOut) -> str:
    return f"flagged={left_out.flagged}, rejected={left_out.rejected}, filtered={left_out.filtered}"


@post(
    "/v1/exports",
    summary="Export pairs for review (Label Studio, Argilla) or training (OpenAI, Alpaca, ShareGPT, HF)",
    description=(
        f"Formats: {', '.join(FORMATS)}. At most {MAX_EXPORT_PAIRS} pairs. Review formats carry every "
        "pair, flagged first; training formats leave out flagged and rejected pairs unless "
        "`options.include_flagged` / `options.include_rejected`. With `options.push` (label-studio "
        "only) the service imports the tasks into that project and answers with the counts."
    ),
    tags=["export"],
    opt={"scope": "export", "job": True},
    status_code=200,
    operation_class=documented(
        body_rule=only_with("format", "label-studio", option="push"),
        ok_media={
            "application/jsonl": TEXT,
            NDJSON: TEXT,
            "application/vnd.apache.parquet": BINARY,
            "text/markdown": TEXT,
        },
    ),
    responses=problems({502: "Label Studio refused the push or could not be reached"}),
)
async def create_export(
    request: Request[Any, Any, Any], data: JSONBody[ExportRequest], runtime: NamedDependency[Runtime]
) -> Response[Any]:
    if data.options.push is not None and data.format != "label-studio":
        raise InvalidInput("push works only with the label-studio format", field="options.push")
    allowed = runtime.settings.label_studio_urls
    if data.options.push is not None:
        check_target(data.options.push, allowed)  # before the export is built
    result = await anyio.to_thread.run_sync(
        partial(export, data.format, data.pairs, data.reviews, data.options)
    )
    if data.options.push is not None:
        pushed: PushResult = await push_to_label_studio(result, data.options.push, allowed_origins=allowed)
        return Response(pushed)
    headers = {
        "X-Qasynth-Exported": str(result.exported),
        "X-Qasynth-Left-Out": _left_out(result.left_out),
        "Content-Disposition": f'attachment; filename="{result.filename}"',
    }
    streamable = result.kind == "jsonl" or (result.kind == "json" and isinstance(result.payload, list))
    if streamable and NDJSON in request.headers.get("accept", ""):
        return Stream(result.lines(), media_type=NDJSON, headers=headers)
    body = await anyio.to_thread.run_sync(result.body)
    return Response(body, media_type=result.media_type, headers=headers)


@get(
    "/v1/exports/label-studio/config",
    summary="The Label Studio labeling config matching label-studio exports",
    tags=["export"],
    opt={"scope": "export"},
    media_type=MediaType.XML,
    sync_to_thread=False,
    responses=problems({400: "Unknown locale"}, body=False),
)
def labelstudio_config(locale: FromQuery[Literal["ja", "en"]] = "en") -> str:
    return label_config(locale)


@post(
    "/v1/imports/label-studio",
    summary="Apply reviewers' decisions from a Label Studio JSON export",
    description=(
        "The body is Label Studio's export as downloaded "
        "(`GET /api/projects/{id}/export?exportType=JSON&download_all_tasks=true`), at most "
        f"{MAX_IMPORT_TASKS} tasks. Every task ends in accepted, corrected (re-evaluated in the R "
        "sandbox unless `evaluate=false`), rejected, or skipped with the reason."
    ),
    tags=["export"],
    opt={"scope": "export", "job": True},
    status_code=200,
    responses=problems({503: "Corrected answers need re-evaluating and the R sandbox cannot run"}),
)
async def import_labelstudio(
    data: JSONBody[ReviewTasks],
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
    evaluate: Annotated[bool, QueryParameter(description="Re-evaluate corrected answers in R")] = True,
) -> ReviewImport:
    evaluate_fn = answer_evaluator(caller.runner(await runtime.runner())) if evaluate else None
    return await import_review(data, evaluate=evaluate_fn)


routes = [create_export, labelstudio_config, import_labelstudio]
