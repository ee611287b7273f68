"""Schemathesis hooks for tests/api/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Some rules of a request hold between fields and cannot be written in JSON Schema; the routes'
descriptions and the README state them and the service answers a 400 naming the field:
ids unique across `items` and `existing`; a spec gives exactly one of `per_cell` and `cells`, its
cells, few-shot examples and check policies name tasks and themes of its grid, a task or theme
that is not built in has a description, a replacement template has its `=== user ===` line, and a
budget in dollars has a price for its model (the configured fake model has none, so such a spec
carries `pricing`). A body generated as
schema-valid is brought within these rules here, so that "valid data is accepted" tests the service
rather than the generator; bodies generated as invalid are left as they are. /v1/generate also gets
tiny counts and the configured fake provider, so the run stays quick; so do /v1/estimate and the batch
routes, which take the same spec (the estimate's `observed` counts may name any cells: those of
tasks the spec does not have are left out).
"""

from __future__ import annotations

from typing import Any

import msgspec
import schemathesis

from service.api.body import _DECODER
from service.wire.dedup import DedupRequest
from service.wire.estimate import EstimateRequest
from service.wire.generate import Spec

BUILTIN_TASKS = ("explain", "fix", "generate")
BUILTIN_THEMES = ("mean-variance", "hypothesis-tests", "regression", "distributions", "summaries")


def _valid(body: Any, type_: Any) -> bool:
    """Whether the service's own types accept `body` as the service would decode it."""
    try:
        msgspec.convert(_DECODER.decode(msgspec.json.encode(body)), type_, strict=True)
    except (msgspec.ValidationError, TypeError, OverflowError):
        return False
    return True


def _unique_ids(*lists: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for items in lists:
        for n, item in enumerate(items):
            while item["id"] in seen:
                item["id"] = f"{item['id'][:190]}-{n}"
                n += 1000
            seen.add(item["id"])


def _grid(items: list[dict[str, Any]] | None, builtins: tuple[str, ...], what: str) -> list[str]:
    if items is None:
        return list(builtins)
    _unique_ids(items)
    for item in items:
        if item["id"] not in builtins and not item.get("description"):
            item["description"] = f"a {what} of the test's own"
    return [item["id"] for item in items]


def _coherent_spec(spec: dict[str, Any]) -> None:
    tasks = _grid(spec.get("tasks"), BUILTIN_TASKS, "task")
    themes = _grid(spec.get("themes"), BUILTIN_THEMES, "theme")
    # A handful of pairs at most: the point is the service's answers, not the fake's throughput.
    if spec.get("tasks") is None:
        spec["tasks"], tasks = [{"id": tasks[0]}], tasks[:1]
    spec["tasks"], tasks = spec["tasks"][:2], tasks[:2]
    if spec.get("themes") is None:
        spec["themes"], themes = [{"id": themes[0]}], themes[:1]
    spec["themes"], themes = spec["themes"][:2], themes[:2]
    if spec.get("cells") is not None:
        spec.pop("per_cell", None)
        cells, seen = [], set()
        for cell in spec["cells"]:
            key = (tasks[len(cells) % len(tasks)], themes[len(cells) // len(tasks) % len(themes)])
            if key in seen:
                break
            seen.add(key)
            cells.append({"task": key[0], "theme": key[1], "count": min(cell["count"], 1)})
        spec["cells"] = cells
    else:
        spec["per_cell"] = min(spec.get("per_cell") or 0, 1)
    for example in spec.get("few_shot", []):
        example["task"] = tasks[0]
    evaluation = spec.get("evaluation") or {}
    if evaluation.get("policy"):
        names = ["*", *tasks]
        evaluation["policy"] = {
            names[n % len(names)]: checks for n, checks in enumerate(evaluation["policy"].values())
        }
    _unique_ids(spec.get("dedup", {}).get("existing", []))
    spec.pop("prompts", None)
    model = spec.setdefault("model", {})
    if model.get("provider") == "local":  # not configured in the test app: a 400 by design
        model["provider"] = "openai"
    model.pop("name", None)
    if (spec.get("budget") or {}).get("usd") is not None and spec.get("pricing") is None:
        spec["pricing"] = {"input": 1.0, "output": 2.0}


# The routes whose body is a spec (for /v1/estimate, with an earlier job's counts besides).
SPEC_PATHS = {
    "/v1/generate": Spec,
    "/v1/estimate": EstimateRequest,
    "/v1/batches": Spec,
    "/v1/batches/{handle}": Spec,
}


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    path = context.operation.path if context.operation is not None else ""
    if path == "/v1/dedup" and _valid(body, DedupRequest):
        _unique_ids(body.get("existing", []), body["items"])
    elif path in SPEC_PATHS and _valid(body, SPEC_PATHS[path]):
        _coherent_spec(body)
    return body
