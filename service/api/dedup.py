"""POST /v1/dedup: the greedy ROUGE-L filter over one batch, run off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import post
from litestar.params import JSONBody

from service.api.problems import problems
from service.errors import InvalidInput
from service.stages.dedup import deduplicate
from service.wire.dedup import MAX_DEDUP_TOTAL_CHARS, DedupRequest, DedupResponse, DedupResult

__all__ = ["routes"]


def _check(data: DedupRequest) -> None:
    """What msgspec's constraints cannot say: repeated ids and the total size."""
    seen: dict[str, str] = {}
    total = 0
    for name, items in (("existing", data.existing), ("items", data.items)):
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            if item.id in seen:
                raise InvalidInput(
                    f"duplicate id {item.id!r}: already used by {seen[item.id]}", field=f"{where}.id"
                )
            seen[item.id] = where
            total += len(item.text)
    if total > MAX_DEDUP_TOTAL_CHARS:
        raise InvalidInput(
            f"items and existing hold {total:,} characters; at most {MAX_DEDUP_TOTAL_CHARS:,} per request",
            field="items",
        )


@post(
    "/v1/dedup",
    summary="Drop near-duplicates by ROUGE-L F1 (Self-Instruct/Alpaca greedy filter)",
    tags=["dedup"],
    opt={"scope": "dedup", "job": True},
    status_code=200,
    responses=problems(),
)
async def dedup(data: JSONBody[DedupRequest]) -> DedupResponse:
    """One result per item, in input order; `existing` is history, compared against but not reported."""
    _check(data)
    decisions = await asyncio.to_thread(
        deduplicate,
        [(item.id, item.text) for item in data.items],
        existing=[(item.id, item.text) for item in data.existing],
        threshold=data.threshold,
        tokenizer=data.tokenizer,
    )
    return DedupResponse(
        results=[DedupResult(id=d.id, kept=d.kept, nearest_id=d.nearest_id, score=d.score) for d in decisions]
    )


routes: list[Any] = [dedup]
