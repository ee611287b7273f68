"""Every error leaves as RFC 9457 problem details; no traceback ever reaches a client.

Litestar's own validation errors (msgspec decoding the body) already name the
offending path (`dedup.threshold`, `tasks[0]`); they are reshaped here into
`errors: [{field, message}]` with the first field repeated in `field`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from service.errors import InvalidInput, ProviderError, QasynthError

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_400",
    "PROBLEM_MEDIA_TYPE",
    "FieldError",
    "Problem",
    "problem_response",
    "problems",
]

log = logging.getLogger("qasynth")
PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://qasynth.dev/problems/"


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, with `field`/`errors` naming what was wrong in the request."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = None
    errors: list[FieldError] | None = None
    provider: str | None = None


def problem_response(description: str) -> ResponseSpec:
    """For a route's `responses=`: documents a problem-details body (no random examples, so the schema is stable)."""
    return ResponseSpec(
        Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


PROBLEM_400 = problem_response("Invalid request; `field` names the culprit")

# What every route behind the API key gate may answer besides its own statuses.
_DESCRIPTIONS = {
    400: "Invalid request; `field` names the culprit",
    401: "No API key, or a malformed `Authorization` header; `WWW-Authenticate: Bearer` says how to send one",
    403: "Unknown API key, a key not allowed this route, or a target the operator did not allow",
    413: "The body is larger than the service's limit",
    429: "The key's quota (requests per minute, jobs in flight) is used up; `Retry-After` says when to retry",
}


def problems(own: dict[int, str] | None = None, *, body: bool = True) -> dict[int, ResponseSpec]:
    """`responses=` entries for a guarded route: 401, 403 and 429, with 400 and 413 when it takes a
    `body`, and the route's `own` statuses."""
    texts = {k: v for k, v in _DESCRIPTIONS.items() if body or k not in (400, 413)}
    texts.update(own or {})
    return {code: problem_response(texts[code]) for code in sorted(texts)}


def _response(problem: Problem, headers: dict[str, str] | None = None) -> Response[Problem]:
    return Response(problem, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_errors(extra: Any) -> list[FieldError]:
    errors = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                key = str(item.get("key") or "") or "body"
                errors.append(FieldError(field=key, message=str(item.get("message", ""))))
    return errors


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    errors = _field_errors(exc.extra)
    first = errors[0] if errors else None
    detail = f"{first.field}: {first.message}" if first else str(exc.detail)
    return _response(
        Problem(
            type=TYPE_BASE + "invalid-request",
            title="Invalid request",
            status=400,
            detail=detail,
            instance=request.url.path,
            field=first.field if first else "body",
            errors=errors or [FieldError(field="body", message=str(exc.detail))],
        )
    )


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    title = type(exc).__name__.replace("Exception", "") or "Error"
    detail = str(exc.detail)
    if exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        detail = f"the body is larger than the service's limit of {limit:,} bytes; split the request"
    return _response(
        Problem(
            type=TYPE_BASE + title.lower(),
            title=title,
            status=exc.status_code,
            detail=detail,
            instance=request.url.path,
            # A 400 that is not a field validation error is a body that could not be decoded at all.
            field="body" if exc.status_code == 400 else None,
        ),
        # `Allow` on a 405, as RFC 9110 asks.
        headers=dict(exc.headers) if exc.headers else None,
    )


def _qasynth(request: Request[Any, Any, Any], exc: QasynthError) -> Response[Problem]:
    slug = (
        "invalid-request"
        if isinstance(exc, InvalidInput)
        else re.sub(r"(?<!^)(?=[A-Z])", "-", type(exc).__name__).lower()
    )
    return _response(
        Problem(
            type=TYPE_BASE + slug,
            title=exc.title,
            status=exc.status_code,
            detail=exc.detail,
            instance=request.url.path,
            field=exc.field,
            errors=[FieldError(field=exc.field, message=exc.detail)] if exc.field else None,
            provider=exc.provider if isinstance(exc, ProviderError) else None,
        ),
        headers=exc.headers or None,
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _response(
        Problem(
            type=TYPE_BASE + "internal",
            title="Internal error",
            status=HTTP_500_INTERNAL_SERVER_ERROR,
            detail="The service hit an unexpected error; it is logged on the server.",
            instance=request.url.path,
        )
    )


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    ValidationException: _validation,
    HTTPException: _http,
    QasynthError: _qasynth,
    Exception: _unexpected,
}
