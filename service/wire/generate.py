"""POST /v1/generate: the spec, the pairs, and the NDJSON progress events."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base, Id, Usage
from service.wire.dedup import DedupItem, Threshold, TokenizerName
from service.wire.evaluate import Evaluation, EvaluationSettings

__all__ = [
    "MAX_CELL_COUNT",
    "MAX_TOTAL_COUNT",
    "AnswerGenerated",
    "Cell",
    "CellCount",
    "CellStarted",
    "Counts",
    "DedupSettings",
    "Done",
    "Dropped",
    "Evaluated",
    "Event",
    "Failed",
    "FewShot",
    "GenerateResponse",
    "ItemDropped",
    "ItemFailed",
    "ModelSettings",
    "Pair",
    "PairReady",
    "Provenance",
    "ProviderName",
    "QuestionGenerated",
    "Spec",
    "StepProvenance",
    "Task",
    "Templates",
    "Theme",
]

MAX_CELL_COUNT = 200
MAX_TOTAL_COUNT = 5_000

ProviderName = Literal["openai", "anthropic", "local"]
Text = Annotated[str, msgspec.Meta(max_length=50_000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]


class Task(Base):
    """A kind of exercise. `explain`, `fix` and `generate` have built-in description and instructions."""

    id: Id
    description: ShortText | None = None
    instructions: Text | None = None


class Theme(Base):
    id: Id
    description: ShortText | None = None


class Cell(Base):
    task: Id
    theme: Id
    count: Annotated[int, msgspec.Meta(ge=0, le=MAX_CELL_COUNT)]


class FewShot(Base):
    task: Id
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
    answer: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]


class ModelSettings(Base):
    """Which model writes the questions and answers. `provider` defaults to the service's default."""

    provider: ProviderName | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 0.8
    answer_temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=16, le=32_000)] = 1024
    seed: int | None = None
    questions_per_call: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5


class DedupSettings(Base):
    threshold: Threshold = 0.7
    tokenizer: TokenizerName = "auto"
    questions: bool = True
    answers: bool = True
    existing: Annotated[list[DedupItem], msgspec.Meta(max_length=100_000)] = []


class Templates(Base):
    """Per-request overrides of the prompt templates in `prompts/` (the full template text)."""

    question: Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)] | None = None
    answer: Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)] | None = None


class Spec(Base):
    """What to generate: a task × theme grid with a count per cell, and how."""

    language: Literal["r"] = "r"
    locale: Literal["ja", "en"] = "en"
    tasks: Annotated[list[Task], msgspec.Meta(min_length=1, max_length=50)] | None = None
    themes: Annotated[list[Theme], msgspec.Meta(min_length=1, max_length=200)] | None = None
    per_cell: Annotated[int, msgspec.Meta(ge=0, le=MAX_CELL_COUNT)] | None = None
    cells: Annotated[list[Cell], msgspec.Meta(max_length=10_000)] | None = None
    conventions: Text = ""
    answer_rules: Text = ""
    few_shot: Annotated[list[FewShot], msgspec.Meta(max_length=50)] = []
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    dedup: DedupSettings = msgspec.field(default_factory=DedupSettings)
    evaluation: EvaluationSettings = msgspec.field(default_factory=EvaluationSettings)
    prompts: Templates = msgspec.field(default_factory=Templates)


class StepProvenance(Base):
    """Where one step's text came from, enough to reproduce or audit it."""

    provider: str
    model: str
    template_id: str
    template_sha256: str
    usage: Usage
    latency_ms: float
    attempts: int = 1
    # Questions come several to a call; usage and latency are the whole call's, shared by this many.
    batch_size: int = 1


class Provenance(Base):
    spec_sha256: str
    question: StepProvenance
    answer: StepProvenance


class Pair(Base):
    """A generated question/answer pair; `id` is a hash of its content, so it is stable across runs."""

    id: Id
    task: Id
    theme: Id
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)]
    answer: Annotated[str, msgspec.Meta(max_length=100_000)]
    locale: Literal["ja", "en"] = "en"
    evaluation: Evaluation | None = None
    provenance: Provenance | None = None


class ItemDropped(Base):
    """An item left out on purpose: a near-duplicate, or an answer whose R code failed under `drop`."""

    stage: Literal["question", "answer", "evaluation"]
    task: Id
    theme: Id
    id: str
    text: str
    reason: str
    nearest_id: str | None = None
    score: float | None = None
    question: str | None = None


class ItemFailed(Base):
    """An item the pipeline could not produce, with the reason; the rest of the job goes on."""

    stage: Literal["question", "answer", "evaluation"]
    task: Id
    theme: Id
    reason: str
    detail: str
    question: str | None = None
    attempts: int = 0


class CellCount(Base):
    task: Id
    theme: Id
    requested: int
    returned: int = 0
    dropped: int = 0
    failed: int = 0


class Counts(Base):
    requested: int = 0
    questions_generated: int = 0
    questions_dropped: int = 0
    answers_generated: int = 0
    answers_dropped: int = 0
    evaluation_dropped: int = 0
    flagged: int = 0
    failed: int = 0
    returned: int = 0
    cells: list[CellCount] = []


class GenerateResponse(Base):
    pairs: list[Pair]
    dropped: list[ItemDropped]
    failed: list[ItemFailed]
    counts: Counts
    usage: Usage
    elapsed_s: float
    spec_sha256: str


# NDJSON events (Accept: application/x-ndjson): one JSON object a line, tagged by "event".


class CellStarted(Base, tag="cell_started", tag_field="event"):
    task: Id
    theme: Id
    count: int


class QuestionGenerated(Base, tag="question_generated", tag_field="event"):
    task: Id
    theme: Id
    id: str
    question: str


class AnswerGenerated(Base, tag="answer_generated", tag_field="event"):
    task: Id
    theme: Id
    id: str


class Evaluated(Base, tag="evaluated", tag_field="event"):
    id: str
    verdict: str
    flagged: bool


class PairReady(Base, tag="pair", tag_field="event"):
    """A finished pair (evaluated when evaluation is on): the client may keep it now."""

    pair: Pair


class Dropped(Base, tag="dropped", tag_field="event"):
    item: ItemDropped


class Failed(Base, tag="failed", tag_field="event"):
    item: ItemFailed


class Done(Base, tag="done", tag_field="event"):
    counts: Counts
    usage: Usage
    elapsed_s: float
    spec_sha256: str


Event = CellStarted | QuestionGenerated | AnswerGenerated | Evaluated | PairReady | Dropped | Failed | Done
