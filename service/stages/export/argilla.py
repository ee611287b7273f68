"""Argilla v2: dataset settings and records in the shapes the `argilla` SDK reads.

`settings` is what `rg.Settings.to_json` writes and `rg.Settings.from_json` reads; each record is
what `rg.Record.to_dict` writes and `rg.Record.from_dict` reads. Fields shown as markdown carry
`safe_markdown` text, like Label Studio's. The corrected-answer question is pre-filled through a
suggestion, the way Label Studio's text area is pre-filled through a prediction.

Sample record:
    {"id": "p-1f3a", "fields": {"question": "...", "answer": "...", "evidence": "**Verdict:** passed"},
     "metadata": {"task": "explain", "theme": "regression", "verdict": "passed", "flagged": "false"},
     "suggestions": {"corrected_answer": {"value": "<the answer>", "score": null, "agent": "qasynth"}},
     "responses": {}, "vectors": {}, "status": "pending", "_server_id": null}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.stages.export.base import Export
from service.stages.export.labelstudio import LABELS, config_locale, evidence_markdown
from service.stages.export.markdown import safe_markdown
from service.stages.export.policy import for_review, verdict_of
from service.wire.export import MODEL_VERSION, ExportOptions, Review
from service.wire.generate import Pair

__all__ = ["dataset_settings", "record_for", "to_argilla"]


def _entity(name: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"id": None, "inserted_at": None, "updated_at": None, "name": name, "title": title, **extra}


def _field(name: str, title: str) -> dict[str, Any]:
    return _entity(
        name,
        title,
        settings={"type": "text", "use_markdown": True},
        required=True,
        description=None,
        dataset_id=None,
        type="text",
    )


def _terms(name: str, values: list[str]) -> dict[str, Any]:
    return _entity(
        name,
        name,
        settings={"visible_for_annotators": True, "type": "terms", "values": values or None},
        visible_for_annotators=True,
        dataset_id=None,
    )


def dataset_settings(pairs: Sequence[Pair], locale: str = "en") -> dict[str, Any]:
    t = LABELS["ja" if locale == "ja" else "en"]
    decision = _entity(
        "decision",
        t["decision"],
        settings={
            "type": "label_selection",
            "options": [{"text": t[v], "value": v} for v in ("accept", "reject", "needs-fix")],
            "visible_options": None,
        },
        description=None,
        required=True,
        dataset_id=None,
        type="label_selection",
    )
    corrected = _entity(
        "corrected_answer",
        t["edit"],
        settings={"type": "text", "use_markdown": False},
        description=None,
        required=False,
        dataset_id=None,
        type="text",
    )
    comment = _entity(
        "comment",
        t["comment"],
        settings={"type": "text", "use_markdown": False},
        description=None,
        required=False,
        dataset_id=None,
        type="text",
    )
    return {
        "guidelines": None,
        "questions": [decision, corrected, comment],
        "fields": [
            _field("question", t["question"]),
            _field("answer", t["answer"]),
            _field("evidence", t["evidence"]),
        ],
        "vectors": [],
        "metadata": [
            _terms("task", sorted({p.task for p in pairs})),
            _terms("theme", sorted({p.theme for p in pairs})),
            _terms("verdict", sorted({verdict_of(p) for p in pairs})),
            _terms("flagged", ["false", "true"]),
        ],
        "allow_extra_metadata": False,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "mapping": None,
    }


def record_for(pair: Pair) -> dict[str, Any]:
    return {
        "id": pair.id,
        "fields": {
            "question": safe_markdown(pair.question),
            "answer": safe_markdown(pair.answer),
            "evidence": evidence_markdown(pair),
        },
        "metadata": {
            "task": pair.task,
            "theme": pair.theme,
            "verdict": verdict_of(pair),
            "flagged": "true" if pair.evaluation is not None and pair.evaluation.flagged else "false",
        },
        "suggestions": {"corrected_answer": {"value": pair.answer, "score": None, "agent": MODEL_VERSION}},
        "responses": {},
        "vectors": {},
        "status": "pending",
        "_server_id": None,
    }


def to_argilla(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_review(pairs, options)
    document = {
        "settings": dataset_settings(kept, config_locale(kept, options)),
        "records": [record_for(p) for p in kept],
    }
    return Export(
        format="argilla",
        kind="json",
        payload=document,
        media_type="application/json",
        filename="argilla.json",
        exported=len(kept),
        left_out=left_out,
    )
