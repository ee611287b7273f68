"""Label Studio's JSON export back to pairs, with each reviewer's decision applied.

Every task of the input ends in exactly one list:
    accepted   decision accept, answer unchanged
    corrected  answer edited (accept or needs-fix); the new answer is re-evaluated
    rejected   decision reject, with the reviewer's comment
    skipped    unannotated, cancelled, unknown_pair, duplicate, undecided, or unfixed (needs-fix, no edit)

Pure apart from the injected `evaluate(task, answer)`, which the API wires to the R sandbox.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from service.errors import InvalidInput
from service.stages.evaluate import Evaluate
from service.stages.export.labelstudio import ANSWER, COMMENT, DECISION, DECISION_VALUES, LABELS
from service.wire.export import (
    MAX_IMPORT_TASKS,
    Corrected,
    Decision,
    ImportCounts,
    LSExportAnnotation,
    LSExportTask,
    Rejected,
    Review,
    ReviewImport,
    Skipped,
)
from service.wire.generate import Pair

__all__ = ["import_review", "parse_export"]


_PATH = re.compile(r" - at `\$(.*)`$")
_MAX_ANSWER = 100_000
# Label Studio stores a choice's alias when it has one; the label text is accepted too (hand-made configs).
_DECISIONS: dict[str, Decision] = {v: v for v in DECISION_VALUES}  # type: ignore[misc]
for _labels in LABELS.values():
    for _value in DECISION_VALUES:
        _DECISIONS[_labels[_value].casefold()] = _value  # type: ignore[assignment]
_DECISIONS["needs_fix"] = "needs-fix"


def _field(path: str) -> str:
    return path.lstrip(".") or "body"


def parse_export(body: bytes) -> list[LSExportTask]:
    """Decode Label Studio's JSON export; a malformed one is `InvalidInput` naming task index and field."""
    try:
        tasks = msgspec.json.decode(body, type=list[LSExportTask])
    except msgspec.ValidationError as exc:
        message = str(exc)
        m = _PATH.search(message)
        field = _field(m.group(1)) if m else "body"
        raise InvalidInput(f"not a Label Studio JSON export: {_PATH.sub('', message)}", field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"body is not JSON: {exc}", field="body") from None
    except RecursionError:  # msgspec's answer to deep nesting, which `data` (any JSON) allows
        raise InvalidInput("the body nests JSON arrays or objects too deeply", field="body") from None
    if len(tasks) > MAX_IMPORT_TASKS:
        raise InvalidInput(f"at most {MAX_IMPORT_TASKS} tasks per import, got {len(tasks)}", field="body")
    return tasks


def _strings(value: dict[str, Any], key: str, field: str) -> list[str]:
    items = value.get(key)
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise InvalidInput(f"expected a list of strings in `{key}`", field=f"{field}.value.{key}")
    return items


class _Reading(msgspec.Struct):
    decision: Decision | None
    answer: str | None
    comment: str


def _read(annotation: LSExportAnnotation, where: str) -> _Reading:
    decision: Decision | None = None
    answer: str | None = None
    comment: list[str] = []
    for k, item in enumerate(annotation.result):
        field = f"{where}.result[{k}]"
        if item.from_name == DECISION:
            choices = _strings(item.value, "choices", field)
            if choices:
                found = _DECISIONS.get(choices[0].casefold())
                if found is None:
                    raise InvalidInput(
                        f"unknown decision {choices[0]!r}; one of {', '.join(DECISION_VALUES)}",
                        field=f"{field}.value.choices[0]",
                    )
                decision = found
        elif item.from_name == ANSWER:
            answer = "\n".join(_strings(item.value, "text", field))
        elif item.from_name == COMMENT:
            comment.extend(_strings(item.value, "text", field))
    return _Reading(decision=decision, answer=answer, comment="\n".join(comment).strip())


def _normal(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def _pair(task: LSExportTask, index: int) -> tuple[Pair | None, str]:
    pair_id = task.data.get("pair_id")
    raw = task.data.get("pair")
    if not isinstance(pair_id, str) or raw is None:
        return None, "the task carries no qasynth pair"
    try:
        pair = msgspec.convert(raw, type=Pair)
    except msgspec.ValidationError as exc:
        m = _PATH.search(str(exc))
        raise InvalidInput(
            f"data.pair is not a pair: {_PATH.sub('', str(exc))}",
            field=f"[{index}].data.pair{m.group(1) if m else ''}",
        ) from None
    if pair.id != pair_id:
        return None, f"data.pair_id {pair_id!r} does not match data.pair.id {pair.id!r}"
    return pair, ""


async def import_review(
    tasks: Sequence[LSExportTask], *, evaluate: Evaluate | None, concurrency: int = 4
) -> ReviewImport:
    """Apply the decisions; corrected answers are re-evaluated through `evaluate` (None: left unevaluated)."""
    accepted: list[Pair] = []
    rejected: list[Rejected] = []
    skipped: list[Skipped] = []
    reviews: list[Review] = []
    to_fix: list[tuple[Pair, str, str, int | None]] = []
    decided: dict[str, int] = {}

    for i, task in enumerate(tasks):
        pair, why = _pair(task, i)

        def skip(reason: Any, detail: str, comment: str = "", *, at: LSExportTask = task, i: int = i) -> None:
            pid = at.data.get("pair_id")
            skipped.append(
                Skipped(
                    index=i,
                    task_id=at.id,
                    pair_id=pid if isinstance(pid, str) else None,
                    reason=reason,
                    detail=detail,
                    comment=comment,
                )
            )

        if pair is None:
            skip("unknown_pair", why)
            continue
        if not task.annotations:
            skip("unannotated", "no annotation")
            continue
        live = [(j, a) for j, a in enumerate(task.annotations) if not a.was_cancelled]
        if not live:
            skip(
                "cancelled",
                f"all {len(task.annotations)} annotations were cancelled (skipped in Label Studio)",
            )
            continue
        j, annotation = next(((j, a) for j, a in reversed(live) if a.ground_truth), live[-1])
        reading = _read(annotation, f"[{i}].annotations[{j}]")
        if reading.decision is None:
            skip("undecided", "the annotation picks no decision", reading.comment)
            continue
        if pair.id in decided:
            skip("duplicate", f"pair already decided in task index {decided[pair.id]}", reading.comment)
            continue
        decided[pair.id] = i
        reviews.append(Review(pair_id=pair.id, decision=reading.decision, comment=reading.comment))
        edited = reading.answer is not None and _normal(reading.answer) != _normal(pair.answer)
        if reading.decision == "reject":
            rejected.append(Rejected(pair=pair, comment=reading.comment, task_id=task.id))
        elif edited:
            assert reading.answer is not None
            if len(reading.answer) > _MAX_ANSWER:
                raise InvalidInput(
                    f"corrected answer longer than {_MAX_ANSWER} characters",
                    field=f"[{i}].annotations[{j}].result",
                )
            to_fix.append((pair, reading.answer, reading.comment, task.id))
        elif reading.decision == "accept":
            accepted.append(pair)
        else:
            skip("unfixed", "needs-fix without an edited answer", reading.comment)

    gate = asyncio.Semaphore(max(1, concurrency))

    async def fix(pair: Pair, answer: str, comment: str, task_id: int | None) -> Corrected:
        evaluation = None
        if evaluate is not None:
            async with gate:
                evaluation = await evaluate(pair.task, answer)
        return Corrected(
            pair=msgspec.structs.replace(pair, answer=answer, evaluation=evaluation),
            original_answer=pair.answer,
            original_evaluation=pair.evaluation,
            comment=comment,
            task_id=task_id,
        )

    corrected = list(await asyncio.gather(*(fix(*item) for item in to_fix)))
    counts = ImportCounts(
        tasks=len(tasks),
        accepted=len(accepted),
        corrected=len(corrected),
        rejected=len(rejected),
        skipped=len(skipped),
    )
    return ReviewImport(
        accepted=accepted,
        corrected=corrected,
        rejected=rejected,
        skipped=skipped,
        reviews=reviews,
        counts=counts,
    )
