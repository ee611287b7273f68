"""Review hand-off: POST /v1/exports, the Label Studio task shape, and POST /v1/imports/label-studio.

    ExportRequest ──► export stage ──► file body (label-studio, argilla, openai, alpaca, sharegpt, hf-*)
    Label Studio JSON export ──► review import ──► ReviewImport (accepted, corrected, rejected, skipped)

Label Studio's own export is read through permissive Structs (`LSExport*`): it carries many fields
qasynth has no use for, and new Label Studio versions add more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

from service.wire.base import Base, Id
from service.wire.evaluate import Evaluation, Verdict
from service.wire.generate import Pair

__all__ = [
    "FORMATS",
    "MAX_EXPORT_PAIRS",
    "MAX_IMPORT_TASKS",
    "MODEL_VERSION",
    "TRAINING_FORMATS",
    "Corrected",
    "Decision",
    "ExportOptions",
    "ExportRequest",
    "ImportCounts",
    "LSExportAnnotation",
    "LSExportResult",
    "LSExportTask",
    "LSPrediction",
    "LSResult",
    "LSTask",
    "LSTaskData",
    "LabelStudioTarget",
    "LeftOut",
    "PushResult",
    "Rejected",
    "Review",
    "ReviewImport",
    "ReviewTasks",
    "SkipReason",
    "Skipped",
    "VerdictFilter",
]

# A pair as generated is about 3.5 KB of JSON, a reviewed Label Studio task about 7.5 KB (the pair,
# its rendered markdown and the annotation): both limits fit the 100 MiB body limit.
MAX_EXPORT_PAIRS = 20_000
MAX_IMPORT_TASKS = 10_000

# Review formats carry every pair; training formats leave out flagged and rejected pairs by default.
ExportFormat = Literal[
    "label-studio", "argilla", "openai", "alpaca", "sharegpt", "hf-jsonl", "hf-parquet", "hf-card"
]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
REVIEW_FORMATS = FORMATS[:2]
TRAINING_FORMATS = FORMATS[2:]

# One constant for every prediction: Label Studio pre-fills the editor only from predictions whose
# model_version equals the project's, which the first import fixes. The generator model goes in data.
MODEL_VERSION = "qasynth"

Decision = Literal["accept", "reject", "needs-fix"]
VerdictFilter = Verdict | Literal["unevaluated"]


class Review(Base):
    """A reviewer's decision on one pair, as returned by the review import and accepted by exports."""

    pair_id: Id
    decision: Decision
    comment: str = ""


class LabelStudioTarget(Base):
    """Where to push Label Studio tasks: the service imports them itself and reports the count."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2_000)]
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    project_id: Annotated[int, msgspec.Meta(ge=1)]


class ExportOptions(Base):
    verdicts: Annotated[list[VerdictFilter], msgspec.Meta(max_length=20)] | None = None
    """Keep only pairs with these verdicts (`unevaluated`: pairs without an evaluation)."""
    flagged_first: bool = True
    include_flagged: bool = False
    include_rejected: bool = False
    system_prompt: Annotated[str, msgspec.Meta(max_length=20_000)] | None = None
    locale: Literal["ja", "en"] | None = None
    push: LabelStudioTarget | None = None


class ExportRequest(Base):
    format: Annotated[ExportFormat, msgspec.Meta(description="Output format")]
    pairs: Annotated[list[Pair], msgspec.Meta(max_length=MAX_EXPORT_PAIRS)]
    reviews: Annotated[list[Review], msgspec.Meta(max_length=MAX_EXPORT_PAIRS)] = []
    options: ExportOptions = msgspec.field(default_factory=ExportOptions)


class LeftOut(Base):
    """Pairs an export did not carry, by reason; sent in the `X-Qasynth-Left-Out` header too."""

    flagged: int = 0
    rejected: int = 0
    filtered: int = 0

    @property
    def total(self) -> int:
        return self.flagged + self.rejected + self.filtered


class PushResult(Base):
    project_id: int
    task_count: int
    prediction_count: int
    exported: int
    left_out: LeftOut


# Label Studio tasks as qasynth writes them (POST /api/projects/{id}/import).


class LSResult(Base):
    from_name: str
    to_name: str
    type: str
    value: dict[str, Any]


class LSPrediction(Base):
    model_version: str
    result: list[LSResult]


class LSTaskData(Base):
    """`pair_id`, not `id`: Label Studio ignores a task's top-level id and overwrites `data.id` in JSON_MIN."""

    pair_id: str
    question: str
    answer_md: str
    evidence_md: str
    task: str
    theme: str
    locale: str
    verdict: str
    flagged: bool
    model: str
    pair: Pair


class LSTask(Base):
    data: LSTaskData
    predictions: list[LSPrediction]


# Label Studio's JSON export, read leniently (unknown fields ignored).


class LSExportResult(msgspec.Struct, kw_only=True):
    from_name: str
    type: str
    value: dict[str, Any]
    to_name: str = ""


class LSExportAnnotation(msgspec.Struct, kw_only=True):
    id: int | None = None
    result: list[LSExportResult] = []
    was_cancelled: bool = False
    ground_truth: bool = False
    completed_by: Any = None


class LSExportTask(msgspec.Struct, kw_only=True):
    data: dict[str, Any]
    id: int | None = None
    annotations: list[LSExportAnnotation] = []


# The body of POST /v1/imports/label-studio.
ReviewTasks = Annotated[list[LSExportTask], msgspec.Meta(max_length=MAX_IMPORT_TASKS)]

SkipReason = Literal["unannotated", "cancelled", "unknown_pair", "duplicate", "undecided", "unfixed"]


class Skipped(Base):
    """A task that produced no pair, and why: nothing in the input is dropped silently."""

    index: int
    task_id: int | None
    pair_id: str | None
    reason: SkipReason
    detail: str
    comment: str = ""


class Corrected(Base):
    """A pair whose answer the reviewer rewrote; `pair.evaluation` is the verdict of the new answer."""

    pair: Pair
    original_answer: str
    original_evaluation: Evaluation | None
    comment: str = ""
    task_id: int | None = None


class Rejected(Base):
    pair: Pair
    comment: str = ""
    task_id: int | None = None


class ImportCounts(Base):
    tasks: int
    accepted: int
    corrected: int
    rejected: int
    skipped: int


class ReviewImport(Base):
    accepted: list[Pair]
    corrected: list[Corrected]
    rejected: list[Rejected]
    skipped: list[Skipped]
    reviews: list[Review]
    counts: ImportCounts
