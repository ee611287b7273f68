"""Pushes Label Studio tasks into a project through its REST API (`POST /api/projects/{id}/import`)."""

from __future__ import annotations

import httpx

from service.errors import LabelStudioFailed
from service.stages.export.base import Export
from service.wire.export import LabelStudioTarget, PushResult

__all__ = ["LabelStudioFailed", "push_to_label_studio"]


def _auth(token: str) -> str:
    # Legacy API tokens are 40 hex characters; personal access tokens are JWTs (three dot-separated parts).
    return f"Bearer {token}" if token.count(".") == 2 else f"Token {token}"


async def push_to_label_studio(
    export: Export,
    target: LabelStudioTarget,
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 120.0,
) -> PushResult:
    """Import the tasks and report the counts Label Studio returned."""
    url = f"{target.url.rstrip('/')}/api/projects/{target.project_id}/import"
    headers = {"Authorization": _auth(target.token), "Content-Type": "application/json"}
    own = client is None
    http = client or httpx.AsyncClient(timeout=timeout_s)
    try:
        response = await http.post(url, content=export.body(), headers=headers)
    except httpx.HTTPError as exc:
        raise LabelStudioFailed(f"could not reach Label Studio at {target.url}: {exc!r}") from exc
    finally:
        if own:
            await http.aclose()
    if response.status_code >= 300:
        raise LabelStudioFailed(
            f"Label Studio answered {response.status_code} to the import: {response.text[:500]}"
        )
    try:
        body = response.json()
        task_count = int(body["task_count"])
        prediction_count = int(body.get("prediction_count", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise LabelStudioFailed(f"unexpected import answer from Label Studio: {response.text[:500]}") from exc
    return PushResult(
        project_id=target.project_id,
        task_count=task_count,
        prediction_count=prediction_count,
        exported=export.exported,
        left_out=export.left_out,
    )
