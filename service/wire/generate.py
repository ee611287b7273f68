"""POST /v1/generate: the spec, the pairs, and the NDJSON progress events."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base, Id, Usage
from service.wire.dedup import DedupItem, Threshold, TokenizerName
from service.wire.evaluate import CheckName, Evaluation, EvaluationSettings, Quality, Verdict
from service.wire.pricing import ModelPrice

__all__ = [
    "MAX_CELL_COUNT",
    "MAX_TOTAL_COUNT",
    "AnswerGenerated",
    "Budget",
    "BudgetReached",
    "BugProvenance",
    "Cell",
    "CellCount",
    "CellStarted",
    "CheckCount",
    "Checked",
    "Counts",
    "DedupSettings",
    "Done",
    "DropReason",
    "DropStage",
    "Dropped",
    "Evaluated",
    "Event",
    "FailReason",
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
    "RepairAttempt",
    "Spec",
    "StepProvenance",
    "Task",
    "TaskKind",
    "Templates",
    "Theme",
]

MAX_CELL_COUNT = 200
MAX_TOTAL_COUNT = 5_000

ProviderName = Literal["openai", "anthropic", "local"]
TaskKind = Literal["explain", "fix", "generate"]
"""Which built-in task's steps and checks a task follows."""

DropReason = Literal[
    "near_duplicate",
    "copies_example",
    "question_checks_failed",
    "snippet_failed",
    "bug_not_effective",
    "flagged",
    "malformed_reply",
    "truncated",
]
"""Why an item was left out and replaced by another (the cell asks again):
`near_duplicate` (ROUGE-L above the threshold against a kept item or the history), `copies_example`
(a question at or above the threshold against a few-shot question), `question_checks_failed` (a
blocking question check failed), `snippet_failed` (the code written for an explain/fix question did
not run), `bug_not_effective` (no bug put into a fix question's code made it fail or print something
else), `flagged` (a blocking answer check still failed after repair, under `on_failure: drop`),
`malformed_reply` / `truncated` (the model's reply was unusable or cut off, after content retries)."""

FailReason = Literal[
    "provider_rejected",
    "provider_unavailable",
    "sandbox_unavailable",
    "malformed_reply",
    "truncated",
    "budget_exhausted",
    "cell_budget_exhausted",
    "batch_errored",
    "batch_expired",
    "batch_canceled",
    "batch_rounds_exhausted",
]
"""Why a requested item is missing: the provider refused the request (bad key, unknown model) or kept
failing after retries, its line of a provider batch errored, expired or was cancelled (or the batch job
reached its round limit), the R sandbox could not run, a reply could not be used, a job-wide budget ran out,
or the cell spent its call budget (`budget.calls_per_cell`) before it held its count."""

DropStage = Literal["snippet", "bug", "question", "answer", "evaluation"]
Text = Annotated[str, msgspec.Meta(max_length=50_000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]


class Task(Base):
    """A kind of exercise. `explain`, `fix` and `generate` have built-in description and instructions.

    `kind` says which built-in task's steps and checks it follows (a built-in id is its own kind);
    a task without one gets the checks every task gets, and questions asked for straight away.
    """

    id: Id
    description: ShortText | None = None
    instructions: Text | None = None
    kind: TaskKind | None = None


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


TemplateText = Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)]


class Templates(Base):
    """Per-request overrides of the prompt templates in `prompts/` (the full template text).

    `question` asks for questions straight away (generate); `snippet`, `bug` and `code_question` are
    the steps of explain and fix questions (code first, a bug put into it, the question written
    around it); `answer` answers; `repair` rewrites a flagged answer from the evidence.
    """

    question: TemplateText | None = None
    answer: TemplateText | None = None
    snippet: TemplateText | None = None
    bug: TemplateText | None = None
    code_question: TemplateText | None = None
    repair: TemplateText | None = None


class Budget(Base):
    """Limits on what a job may spend. `calls_per_cell`: model calls one cell may make, top-up and
    repairs included (null: three times the calls its count needs). `usd` and `tokens`: the most
    the whole job may spend in dollars (at the job's price) and in tokens (prompt and output). Before
    each call the job holds what the call could cost at most (its prompt, none of it cached, and
    `max_tokens` of output); a call that would pass the limit is not made, and the job ends: its
    finished pairs are returned, the rest fail as `budget_exhausted`."""

    calls_per_cell: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    usd: Annotated[float, msgspec.Meta(gt=0.0, le=1_000_000.0)] | None = None
    tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000_000)] | None = None


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
    budget: Budget = msgspec.field(default_factory=Budget)
    # The price of the job's model, in place of the service's table (US dollars per million tokens).
    pricing: ModelPrice | None = None


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
    # What `usage` cost in US dollars at the job's price; null when the model has no price.
    cost_usd: float | None = None
    # `batch`: made through the provider's batch API (POST /v1/batches), which both vendors bill at
    # half the price of a direct (`api`) call; latency is then unknown (0).
    via: Literal["api", "batch"] = "api"


class BugProvenance(Base):
    """How a fix question's bug was made: by the model or by a mutation of the working code, and what
    it does: `error` (R stops) or `output` (the code runs and prints something else); null when
    evaluation is off and nothing ran. `step` is the model's bug call (also when its bug did not bite
    and a mutation was used); `tried` says why each earlier attempt was not used."""

    source: Literal["model", "mutation"]
    symptom: Literal["error", "output"] | None = None
    mutation: str | None = None
    step: StepProvenance | None = None
    tried: list[str] = []


class RepairAttempt(Base):
    """One further answer call for a flagged answer, and what the checks said of its reply."""

    step: StepProvenance
    verdict: Verdict | None = None
    flagged: bool = False
    failed_checks: list[CheckName] = []
    # The reply kept the code it was shown and the same checks failed, so no further attempt was made.
    unchanged: bool = False


class Provenance(Base):
    """Every step behind a pair. `answer` is the first answer; `repairs` the calls after it (the pair
    holds the last reply). `calls`: model calls spent on this pair; `top_up`: it replaced a lost item.
    `cost_usd`: its steps' cost (a shared question call's divided by its `batch_size`)."""

    spec_sha256: str
    question: StepProvenance
    answer: StepProvenance
    snippet: StepProvenance | None = None
    # Calls of the snippet that the service rewrote before running it, each as "line N: what: new line".
    mended: list[str] = []
    bug: BugProvenance | None = None
    repairs: list[RepairAttempt] = []
    calls: int = 0
    top_up: bool = False
    cost_usd: float | None = None


class Pair(Base):
    """A generated question/answer pair; `id` is a hash of its content, so it is stable across runs."""

    id: Id
    task: Id
    theme: Id
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=50_000)]
    answer: Annotated[str, msgspec.Meta(max_length=100_000)]
    locale: Literal["ja", "en"] = "en"
    evaluation: Evaluation | None = None
    quality: Quality | None = None
    provenance: Provenance | None = None


class ItemDropped(Base):
    """An item left out on purpose and replaced by another; `reason` says why, `detail` shows the evidence.
    A near-duplicate carries the kept item it resembles (`nearest_id`, `score`)."""

    stage: DropStage
    task: Id
    theme: Id
    id: str
    text: str
    reason: DropReason
    detail: str = ""
    nearest_id: str | None = None
    score: float | None = None
    question: str | None = None
    failed_checks: list[CheckName] = []


class ItemFailed(Base):
    """A requested item the pipeline could not produce, with the reason; the rest of the job goes on.
    `attempts`: model calls made for it (for `cell_budget_exhausted`, the calls the cell spent)."""

    stage: Literal["question", "answer", "evaluation", "cell"]
    task: Id
    theme: Id
    reason: FailReason
    detail: str
    question: str | None = None
    attempts: int = 0


class CheckCount(Base):
    """How often one check passed and failed; `pass_rate` is null when it never ran."""

    passed: int = 0
    failed: int = 0
    pass_rate: float | None = None


class CellCount(Base):
    """One cell's accounting (`requested = returned + failed`; `dropped` items were replaced) and quality:
    model `calls` spent against its `budget`, `top_up_calls` spent replacing dropped items, answers
    `repaired`, each check's counts over the questions and final answers it judged, and `diversity`
    (the mean over returned questions of each one's highest ROUGE-L against the others; lower is more varied).
    `cost_usd`: what every call of the cell cost, dropped items' included; `cost_per_returned_pair_usd`:
    that over the pairs returned (null when none was, or the model has no price)."""

    task: Id
    theme: Id
    requested: int
    returned: int = 0
    dropped: int = 0
    failed: int = 0
    flagged: int = 0
    calls: int = 0
    budget: int = 0
    top_up_calls: int = 0
    repaired: int = 0
    repair_calls: int = 0
    checks: dict[CheckName, CheckCount] = {}
    diversity: float | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float | None = None
    cost_per_returned_pair_usd: float | None = None


class Counts(Base):
    """The job's accounting, summed over its cells. `cost_usd`: every call's cost; `price_taken`: the
    date of the price table used (`request` for the spec's own `pricing`)."""

    requested: int = 0
    questions_generated: int = 0
    questions_dropped: int = 0
    answers_generated: int = 0
    answers_dropped: int = 0
    evaluation_dropped: int = 0
    flagged: int = 0
    failed: int = 0
    returned: int = 0
    calls: int = 0
    top_up_calls: int = 0
    repaired: int = 0
    repair_calls: int = 0
    checks: dict[CheckName, CheckCount] = {}
    cells: list[CellCount] = []
    cost_usd: float | None = None
    cost_per_returned_pair_usd: float | None = None
    price_taken: str | None = None
    budget_exhausted: bool = False


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


class Checked(Base, tag="checked", tag_field="event"):
    """A question (`subject: question`) or an answer was checked; `attempt` 0 is the first answer,
    1… its repairs. `failed` names the checks that failed; `flagged` when one of them blocks."""

    id: str
    subject: Literal["question", "answer"]
    flagged: bool
    attempt: int = 0
    failed: list[CheckName] = []


class PairReady(Base, tag="pair", tag_field="event"):
    """A finished pair (evaluated when evaluation is on): the client may keep it now."""

    pair: Pair


class Dropped(Base, tag="dropped", tag_field="event"):
    item: ItemDropped


class Failed(Base, tag="failed", tag_field="event"):
    item: ItemFailed


class BudgetReached(Base, tag="budget_exhausted", tag_field="event"):
    """The job's budget (`limit`: `usd` or `tokens`) cannot pay for the next call: no further call
    is made, items in flight end, and every item not finished fails `budget_exhausted`. `spent_usd`
    (null without a price) and `spent_tokens`: what the job had spent when it stopped."""

    limit: Literal["usd", "tokens"]
    detail: str
    spent_usd: float | None
    spent_tokens: int


class Done(Base, tag="done", tag_field="event"):
    counts: Counts
    usage: Usage
    elapsed_s: float
    spec_sha256: str


Event = (
    CellStarted
    | QuestionGenerated
    | AnswerGenerated
    | Evaluated
    | Checked
    | PairReady
    | Dropped
    | Failed
    | BudgetReached
    | Done
)
