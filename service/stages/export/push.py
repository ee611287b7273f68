"""Pushes Label Studio tasks into a project through its REST API (`POST /api/projects/{id}/import`).

The target comes from the request, so it is the one place a caller could make the service send a
request anywhere: only origins the operator allowed are reached, redirects are never followed, and
what the remote answered comes back only as its status and a short, escaped message.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import msgspec

from service.errors import Forbidden, LabelStudioFailed
from service.stages.export.base import Export
from service.wire.export import LabelStudioTarget, PushResult

__all__ = ["LabelStudioFailed", "check_target", "push_to_label_studio"]

# How much of Label Studio's own error message a refused push reports.
MESSAGE_CHARS = 200
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _auth(token: str) -> str:
    # Legacy API tokens are 40 hex characters; personal access tokens are JWTs (three dot-separated parts).
    return f"Bearer {token}" if token.count(".") == 2 else f"Token {token}"


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def check_target(target: LabelStudioTarget, allowed_origins: Sequence[str]) -> httpx.URL:
    """The target's URL if its origin is one the operator allowed; else `Forbidden` naming the field."""
    field = "options.push.url"
    if not allowed_origins:
        raise Forbidden(
            "pushing to Label Studio is off: the operator has allowed no Label Studio URL "
            "(QASYNTH_LABEL_STUDIO_URLS); export the tasks and import them yourself",
            field=field,
        )
    try:
        url = httpx.URL(target.url)
    except httpx.InvalidURL:
        raise Forbidden("options.push.url is not a URL", field=field) from None
    if url.userinfo or url.query or url.fragment:
        raise Forbidden("options.push.url may not carry credentials, a query or a fragment", field=field)
    allowed = {_origin(httpx.URL(origin)) for origin in allowed_origins}
    if _origin(url) not in allowed:
        raise Forbidden(
            "options.push.url is not on a Label Studio the operator allows (QASYNTH_LABEL_STUDIO_URLS)",
            field=field,
        )
    return url


def _message(response: httpx.Response) -> str:
    """Label Studio's own error text (`detail`, or its validation errors) cut short and JSON-escaped;
    any other body is not repeated at all."""
    try:
        body = response.json()
    except ValueError:
        return "a body that is not JSON"
    if isinstance(body, dict):
        text = body.get("detail") or body.get("validation_errors") or body.get("message")
        if text:
            shown = text if isinstance(text, str) else msgspec.json.encode(text).decode()
            if len(shown) > MESSAGE_CHARS:
                shown = shown[:MESSAGE_CHARS] + "…"
            return msgspec.json.encode(shown).decode()
    return "a JSON body without a message"


async def push_to_label_studio(
    export: Export,
    target: LabelStudioTarget,
    *,
    allowed_origins: Sequence[str],
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 120.0,
) -> PushResult:
    """Import the tasks and report the counts Label Studio returned."""
    base = check_target(target, allowed_origins)
    url = base.copy_with(path=f"{base.path.rstrip('/')}/api/projects/{target.project_id}/import")
    headers = {"Authorization": _auth(target.token), "Content-Type": "application/json"}
    own = client is None
    http = client or httpx.AsyncClient(timeout=timeout_s)
    try:
        response = await http.post(url, content=export.body(), headers=headers, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise LabelStudioFailed(
            f"could not reach Label Studio at {base.scheme}://{base.netloc.decode()}: {type(exc).__name__}"
        ) from exc
    finally:
        if own:
            await http.aclose()
    if response.is_redirect:
        raise LabelStudioFailed(
            f"Label Studio answered {response.status_code}, a redirect, to the import; redirects are not "
            "followed: give the URL it is served at"
        )
    if response.status_code >= 300:
        raise LabelStudioFailed(
            f"Label Studio answered {response.status_code} to the import: {_message(response)}"
        )
    try:
        body = response.json()
        task_count = int(body["task_count"])
        prediction_count = int(body.get("prediction_count", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LabelStudioFailed("Label Studio's answer to the import has no task_count") from exc
    return PushResult(
        project_id=target.project_id,
        task_count=task_count,
        prediction_count=prediction_count,
        exported=export.exported,
        left_out=export.left_out,
    )
