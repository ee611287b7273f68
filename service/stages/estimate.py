"""What a job would cost, before anything is spent.

The estimate renders the requests the job would send with the same code the pipeline uses
(`prompts.py`: the real templates, conventions, answer rules and few-shot examples), with the
spec's own examples standing in for what the calls will carry (the question, its code, the
answer, the avoid-list growing as a cell's questions arrive), and counts their tokens
(`tokens.py`). Output lengths are modelled on the same examples, capped at `max_tokens`.

Calls follow the pipeline's shape per cell (generate: one question call for
`questions_per_call` items and one answer each; explain: snippet, question, answer; fix: snippet,
bug, question, answer), under three scenarios (`SCENARIOS`): every reply usable and kept; the
rates of drops (replaced by top-up), content retries and repairs seen on typical jobs; and many
of them. No scenario passes a cell's call budget. Prompt caching follows the providers' rules:
the prefix shared by every call of a task's step (the system prompt) is cached once it reaches the
model's minimum, written by the first call and read by the others.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass, replace

from evaluator import extract_code
from service.pricing import PriceTable, cost_of, round_usd
from service.providers.base import CompletionRequest, Provider
from service.stages.ledger import BUDGET_FACTOR, calls_needed
from service.stages.prompts import (
    AVOID_MAX_ITEMS,
    PLACEHOLDER,
    Template,
    answer_request,
    bug_request,
    code_question_request,
    describe_run,
    load_templates,
    question_output,
    question_request,
    repair_request,
    snippet_request,
)
from service.stages.quality import prose
from service.stages.repair import evidence_text
from service.stages.spec import Job, ResolvedTask, ResolvedTheme, locale_defaults
from service.stages.tokens import Counting, count, encoding_for, framing_tokens, shared_prefix_tokens
from service.wire.base import Usage
from service.wire.estimate import CacheNote, CostSpan, Estimate, EstimateStep, Span, StepName
from service.wire.evaluate import Evaluation, Quality
from service.wire.generate import Cell, CellCount, Counts
from service.wire.pricing import ModelPrice

__all__ = ["SCENARIOS", "Calibration", "cache_notes", "estimate_job"]


@dataclass(frozen=True)
class Scenario:
    """`question_drop`: share of started items dropped before their answer (checks, dedup, a failed
    snippet or bug); `answer_drop`: after it (a duplicate answer, `on_failure: drop`); both are
    replaced. `retry`: content retries a call. `repair`: repair calls an answer gets, as a share of
    `repair_attempts`. `output`: reply length against the examples'."""

    question_drop: float
    answer_drop: float
    retry: float
    repair: float
    output: float


SCENARIOS = {
    "low": Scenario(question_drop=0.0, answer_drop=0.0, retry=0.0, repair=0.0, output=0.6),
    "expected": Scenario(question_drop=0.10, answer_drop=0.03, retry=0.03, repair=0.15, output=1.0),
    "high": Scenario(question_drop=0.40, answer_drop=0.15, retry=0.25, repair=1.0, output=1.8),
}
NAMES = ("low", "expected", "high")
# The scenario an earlier job's counts give a task (`Calibration`); it stands for `expected`.
OBSERVED = "observed"


@dataclass(frozen=True)
class Calibration:
    """One task as an earlier job of the same model ran it. `calls`: its calls other than repairs
    against the low scenario's (every reply usable and kept); `repairs`: repair calls per requested
    item; `input`, `output`: its tokens against what the estimate models for those same calls."""

    items: int
    calls: float
    repairs: float
    input: float = 1.0
    output: float = 1.0


STEP_ORDER: tuple[StepName, ...] = ("snippet", "bug", "question", "code_question", "answer", "repair")
# What running an example's code prints, and what a failing one says: the stand-ins for real runs.
_RUN = Evaluation(verdict="passed", flagged=False, stdout="[1] 42.17\n[1] 3.86\n")
_ERROR = Evaluation(
    verdict="error",
    flagged=True,
    message="Error in print(x_maen) : object 'x_maen' not found",
    line=4,
    failing_call="print(x_maen)",
)
# An example shorter than this ("...") does not stand for the length of a real question or answer.
MIN_STAND_IN_CHARS = 40
_KEYS = ("calls", "input", "output", "cached", "write")
# Headings around each question of a question reply ("### Q1\n").
_QUESTION_HEADING_TOKENS = 5


@dataclass
class _StepCalls:
    """One (cell, step): calls per scenario, and what one call sends and receives."""

    step: StepName
    calls: dict[str, float]
    input_per_call: dict[str, float]  # the mean prompt tokens of a call (the avoid-list grows)
    output_per_call: float
    prefix: int  # the tokens every call of the task's step shares
    cache_group: tuple[str, StepName]  # calls sharing one cached prefix (repair shares answer's)


class _Counter:
    """Token counts of texts, memoised: the system prompts repeat for every cell."""

    def __init__(self, provider: str, encoding: str) -> None:
        self.provider, self.encoding = provider, encoding
        self._memo: dict[str, int] = {}

    def text(self, text: str) -> int:
        if text not in self._memo:
            self._memo[text] = count(text, self.encoding)
        return self._memo[text]

    def request(self, request: CompletionRequest) -> int:
        framing = framing_tokens(len(request.messages), self.provider)
        return framing + self.text(request.system) + sum(self.text(m.content) for m in request.messages)

    def prefix(self, request: CompletionRequest) -> int:
        return shared_prefix_tokens(request, self.provider, self.encoding)


def _examples(job: Job, task: ResolvedTask) -> tuple[str, str, str]:
    """A question, an answer and the code of a question like the task's: its own example where it
    has one, else (also for a part too short to stand for a real one) the built-in example of its kind."""
    defaults = locale_defaults(job.spec.locale).few_shot
    kind = [e for e in defaults if e.task == (task.kind or "generate")] or defaults
    question, answer = kind[0].question, kind[0].answer
    code = _code_of(task, question, answer)
    mine = [e for e in job.few_shot if e.task == task.id]
    if mine:
        own = mine[0]
        if len(own.question) >= MIN_STAND_IN_CHARS:
            question = own.question
        if len(own.answer) >= MIN_STAND_IN_CHARS:
            answer = own.answer
        code = _code_of(task, own.question, own.answer) or code
    return question, answer, code


def _code_of(task: ResolvedTask, question: str, answer: str) -> str:
    return extract_code(answer if task.kind == "fix" else question).code or extract_code(answer).code


def _budget(job: Job, task: ResolvedTask, count_: int) -> int:
    given = job.spec.budget.calls_per_cell
    if given is not None:
        return given
    return BUDGET_FACTOR * calls_needed(task.kind, count_, job.spec.model.questions_per_call)


def _cell_calls(
    job: Job, task: ResolvedTask, n: int, calibration: Calibration | None = None
) -> dict[StepName, dict[str, float]]:
    """Calls per step of one cell of `n` items, per scenario (and as observed, when the task has a
    calibration), within the cell's budget."""
    qpc = job.spec.model.questions_per_call
    attempts = job.spec.evaluation.repair_attempts
    budget = _budget(job, task, n)
    out: dict[StepName, dict[str, float]] = defaultdict(dict)
    for name in NAMES:
        s = SCENARIOS[name]
        started = n / (1 - s.question_drop - s.answer_drop)
        answered = started * (1 - s.question_drop)
        r = 1 + s.retry
        steps: dict[StepName, float] = {}
        if task.kind in ("explain", "fix"):
            steps["snippet"] = started * r
            if task.kind == "fix":
                steps["bug"] = started * r
            steps["code_question"] = started * r
        else:
            steps["question"] = math.ceil(started / qpc) * r if n else 0.0
        steps["answer"] = answered * r
        steps["repair"] = answered * s.repair * attempts
        _within(out, name, steps, budget)
    if calibration is not None:
        steps = {step: calls["low"] * calibration.calls for step, calls in out.items() if step != "repair"}
        steps["repair"] = n * calibration.repairs
        _within(out, OBSERVED, steps, budget)
    return out


def _within(
    out: dict[StepName, dict[str, float]], name: str, steps: dict[StepName, float], budget: int
) -> None:
    total = sum(steps.values())
    scale = min(1.0, budget / total) if total else 1.0
    for step, calls in steps.items():
        out[step][name] = calls * scale


def _mean_avoid_tokens(base: int, one: int, per_item: int, calls: float, per_call: int) -> float:
    """Mean prompt tokens over a cell's calls whose avoid-list grows by `per_call` a call (at most
    `AVOID_MAX_ITEMS`): `base` with none, `one` with one item, `per_item` for each further."""
    n = max(1, math.ceil(calls))
    # From call `growing` on, the list is full: those calls all cost the same.
    growing = min(n, math.ceil(AVOID_MAX_ITEMS / per_call))
    total = 0
    for j in range(growing):
        size = j * per_call
        total += base if size == 0 else one + (size - 1) * per_item
    total += (n - growing) * (one + (AVOID_MAX_ITEMS - 1) * per_item)
    return total / n


def _theme_uses(template: Template) -> tuple[int, int]:
    """How often a template's turns name the theme's id and its description."""
    names = [m for _, text in template.turns for m in PLACEHOLDER.findall(text)]
    return names.count("theme_id"), names.count("theme_description")


def _plan(
    job: Job,
    provider: str,
    counter: _Counter,
    templates: dict[str, Template],
    calibrations: dict[str, Calibration] | None = None,
    cells: tuple[Cell, ...] | None = None,
) -> list[_StepCalls]:
    """Every (cell, step) of the job (or of `cells`, in its tasks and themes) with its calls and tokens.

    Each task's requests are rendered and counted with the theme of its first cell; a cell of another
    theme differs only where the user turns name the theme, so its count is that one's plus the
    difference of the themes' own counts (a grid of thousands of cells takes a second, not minutes)."""
    plans: list[_StepCalls] = []
    max_tokens = job.spec.model.max_tokens
    qpc = job.spec.model.questions_per_call
    rendered: dict[str, tuple[ResolvedTheme, dict[StepName, list[int]], dict[StepName, int]]] = {}
    calibrations = calibrations or {}
    for cell in job.cells if cells is None else cells:
        if cell.count == 0:
            continue
        task, theme = job.tasks[cell.task], job.themes[cell.theme]
        question, answer, code = _examples(job, task)
        if task.id not in rendered:
            requests = _requests(job, templates, task, theme, question, answer, code)
            counts = {step: [counter.request(r) for r in rs] for step, rs in requests.items()}
            prefixes = {step: counter.prefix(rs[0]) for step, rs in requests.items()}
            rendered[task.id] = (theme, counts, prefixes)
        first, counts, prefixes = rendered[task.id]
        calls = _cell_calls(job, task, cell.count, calibrations.get(task.id))
        for step, per_scenario in calls.items():
            uses_id, uses_description = _theme_uses(templates[step])
            shift = uses_id * (counter.text(theme.id) - counter.text(first.id)) + uses_description * (
                counter.text(theme.description) - counter.text(first.description)
            )
            variants = [n + shift for n in counts[step]]
            if len(variants) == 3:  # the avoid-list grows
                base, one, two = variants
                per_call = qpc if step == "question" else 1
                inputs = {
                    name: _mean_avoid_tokens(base, one, two - one, calls_, per_call)
                    for name, calls_ in per_scenario.items()
                }
            else:
                inputs = dict.fromkeys(per_scenario, float(variants[0]))
            if step == "question":
                # A cell asks each call for what it still misses: all of a small cell's items at once.
                per_reply = cell.count / math.ceil(cell.count / qpc)
                output = per_reply * (counter.text(question) + _QUESTION_HEADING_TOKENS)
            elif step in ("snippet", "bug"):
                output = counter.text(f"```r\n{code.strip()}\n```")
            elif step == "code_question":
                output = counter.text(question)
            else:
                output = counter.text(answer)
            group: StepName = "answer" if step == "repair" else step
            plans.append(
                _StepCalls(
                    step=step,
                    calls=per_scenario,
                    input_per_call=inputs,
                    output_per_call=min(float(output), float(max_tokens)),
                    prefix=prefixes[step],
                    cache_group=(task.id, group),
                )
            )
    return plans


def _requests(
    job: Job,
    templates: dict[str, Template],
    task: ResolvedTask,
    theme: ResolvedTheme,
    question: str,
    answer: str,
    code: str,
) -> dict[StepName, list[CompletionRequest]]:
    """The requests one cell's steps send, with the examples standing in for what calls carry;
    steps whose avoid-list grows come with none, one and two items in it."""
    avoid = [[], [question], [question, question]]
    out: dict[StepName, list[CompletionRequest]] = {}
    code_first = task.kind in ("explain", "fix")
    if code_first:
        # Scripts avoid the kept questions' prose, without their code, as the pipeline sends them.
        text = prose(question)
        kept = [[], [text], [text, text]] if text else [[], [], []]
        out["snippet"] = [snippet_request(job, templates["snippet"], task, theme, avoid=a) for a in kept]
        run = _ERROR if task.kind == "fix" else _RUN
        if task.kind == "fix":
            out["bug"] = [
                bug_request(job, templates["bug"], task, theme, code=code, output=_RUN.stdout),
            ]
        out["code_question"] = [
            code_question_request(
                job, templates["code_question"], task, theme, code=code, run_result=describe_run(job, run)
            )
        ]
        shown = question_output(job, run)
    else:
        count_ = job.spec.model.questions_per_call
        out["question"] = [
            question_request(job, templates["question"], task, theme, count=count_, avoid=a) for a in avoid
        ]
        shown = ""
    out["answer"] = [
        answer_request(job, templates["answer"], task, theme, question=question, question_output=shown)
    ]
    evidence = evidence_text(job, _ERROR, Quality(flagged=True))
    out["repair"] = [
        repair_request(
            job,
            templates["repair"],
            task,
            theme,
            question=question,
            question_output=shown,
            answer=answer,
            evidence=evidence,
        )
    ]
    return out


def _cache_minimum(provider: str, price: ModelPrice | None) -> int:
    if provider == "local":
        return 0
    return price.cache_min_tokens if price is not None else 1024


def _cached_per_call(provider: str, prefix: int, minimum: int) -> tuple[int, int]:
    """(tokens read by a later call, tokens written by the first) of a prefix, by the provider's rules."""
    if provider == "local" or prefix < minimum:
        return 0, 0
    if provider == "openai":
        return 1024 + (prefix - 1024) // 128 * 128, 0
    return prefix, prefix


def _note(task: str, step: StepName, provider: str, model: str, prefix: int, minimum: int) -> CacheNote:
    ok = provider != "local" and prefix >= minimum
    if provider == "local":
        detail = "the embedded model costs nothing; llama.cpp reuses its slot's prefix on its own"
    elif ok:
        detail = f"{prefix} tokens shared by every call: cached by {provider} ({model}: {minimum} and more)"
    else:
        detail = (
            f"{prefix} tokens shared by every call, under {provider}'s minimum of {minimum} for {model}: "
            f"not cached. {minimum - prefix} more tokens of conventions, answer rules or few-shot "
            "examples of this task would make it cacheable"
        )
    return CacheNote(
        task=task, step=step, prefix_tokens=prefix, minimum_tokens=minimum, cacheable=ok, detail=detail
    )


def _span(values: dict[str, float]) -> Span:
    return Span(**{k: round(v) for k, v in values.items()})


def cache_notes(job: Job, provider: str, model: str, price: ModelPrice | None) -> list[CacheNote]:
    """Whether each task's steps have a prefix long enough to be cached (for /ready and estimates)."""
    counter = _Counter(provider, encoding_for(provider, model))
    templates = load_templates(job)
    plans = _plan(job, provider, counter, templates)  # type: ignore[arg-type]
    return _notes(plans, provider, model, _cache_minimum(provider, price))


def _notes(plans: list[_StepCalls], provider: str, model: str, minimum: int) -> list[CacheNote]:
    seen: dict[tuple[str, StepName], CacheNote] = {}
    for p in plans:
        if p.cache_group not in seen:
            task, step = p.cache_group
            seen[p.cache_group] = _note(task, step, provider, model, p.prefix, minimum)
    return list(seen.values())


async def _calibration(
    provider: Provider | None, requests: list[CompletionRequest], ours: list[int]
) -> float | None:
    """The provider's own count against ours over a few requests; None when it cannot count."""
    if not isinstance(provider, Counting) or not requests:
        return None
    try:
        theirs = await asyncio.wait_for(
            asyncio.gather(*(provider.count_tokens(r) for r in requests)), timeout=15.0
        )
    except Exception:  # unreachable, refused, slow: the estimate says it fell back
        return None
    if any(t is None for t in theirs):
        return None
    return sum(t for t in theirs if t is not None) / max(1, sum(ours))


async def estimate_job(
    job: Job,
    *,
    provider_name: str,
    model: str,
    price: ModelPrice | None,
    prices: PriceTable,
    price_taken: str | None,
    provider: Provider | None = None,
    observed: Counts | None = None,
) -> Estimate:
    """The estimate of `job` on `provider_name`'s `model`; `provider`, when given and able to count
    tokens (Anthropic's count_tokens, llama.cpp's tokenizer), calibrates the counts, and `observed`
    (an earlier job's counts) the calls and reply lengths of the tasks it ran."""
    templates = load_templates(job)
    encoding = encoding_for(provider_name, model)
    counter = _Counter(provider_name, encoding)
    tokenizer = encoding
    ratio = 1.0
    if provider_name != "openai":
        samples = _samples(job, templates)
        measured = await _calibration(provider, samples, [counter.request(r) for r in samples])
        if measured is not None:
            ratio = measured
            tokenizer = f"{encoding}, calibrated by the {provider_name} tokenizer (×{ratio:.3f})"
        else:
            tokenizer = f"{encoding} (an approximation: the {provider_name} tokenizer was not reachable)"
    calibrations: dict[str, Calibration] = {}
    calibration: dict[str, str] = {}
    if observed is not None:
        calibrations, calibration = await asyncio.to_thread(
            _calibrate, job, observed, provider_name, counter, templates, ratio
        )
    plans = await asyncio.to_thread(
        _plan,
        job,
        provider_name,
        counter,
        templates,  # type: ignore[arg-type]
        calibrations,
    )
    minimum = _cache_minimum(provider_name, price)
    by_step: dict[StepName, dict[str, dict[str, float]]] = {}
    started: set[tuple[str, StepName]] = set()
    max_tokens = job.spec.model.max_tokens
    for p in plans:
        read, write = _cached_per_call(provider_name, round(p.prefix * ratio), minimum)
        # The first call of a task's step finds nothing cached (and writes, where writes are billed).
        first = p.cache_group not in started
        started.add(p.cache_group)
        acc = by_step.setdefault(p.step, {k: dict.fromkeys(NAMES, 0.0) for k in _KEYS})
        values = {
            name: _tokens(p, name, SCENARIOS[name].output, 1.0, ratio, max_tokens, read, write, first)
            for name in NAMES
        }
        cal = calibrations.get(p.cache_group[0])
        if cal is not None and OBSERVED in p.calls:
            # What the task really took stands for `expected`; the range grows to hold it.
            seen = _tokens(p, OBSERVED, cal.output, cal.input, ratio, max_tokens, read, write, first)
            values["expected"] = seen
            values["low"] = {k: min(v, seen[k]) for k, v in values["low"].items()}
            values["high"] = {k: max(v, seen[k]) for k, v in values["high"].items()}
        for name in NAMES:
            for key in _KEYS:
                acc[key][name] += values[name][key]
    steps = []
    totals = {k: dict.fromkeys(NAMES, 0.0) for k in _KEYS}
    for step in STEP_ORDER:
        if step not in by_step:
            continue
        acc = by_step[step]
        for key in _KEYS:
            for name in NAMES:
                totals[key][name] += acc[key][name]
        steps.append(_step(step, acc, price, prices))
    cost = _cost(totals, price, prices)
    requested = job.requested
    return Estimate(
        provider=provider_name,
        model=model,
        requested=requested,
        tokenizer=tokenizer,
        steps=steps,
        **_spans(totals),
        cost_usd=cost,
        cost_per_pair_usd=(
            CostSpan(**{n: round_usd(getattr(cost, n) / requested) for n in NAMES})
            if cost is not None and requested
            else None
        ),
        price=price,
        price_taken=price_taken if price is not None else None,
        cache=_notes(plans, provider_name, model, minimum),
        assumptions=_assumptions(job),
        calibration=calibration,
    )


def _tokens(
    p: _StepCalls,
    name: str,
    output: float,
    input_: float,
    ratio: float,
    max_tokens: int,
    read: int,
    write: int,
    first: bool,
) -> dict[str, float]:
    """One (cell, step) under one scenario: replies `output` times the modelled length, prompts
    `input_` times the rendered ones."""
    calls = p.calls[name]
    reply = min(max_tokens, p.output_per_call * output * ratio)
    return {
        "calls": calls,
        "input": calls * p.input_per_call[name] * ratio * input_,
        "output": calls * reply,
        "cached": max(0.0, calls - first) * read,
        "write": write if first else 0.0,
    }


def _calibrate(
    job: Job,
    observed: Counts,
    provider: str,
    counter: _Counter,
    templates: dict[str, Template],
    ratio: float,
) -> tuple[dict[str, Calibration], dict[str, str]]:
    """Per task of `job` that the earlier job ran: how its calls and tokens compare with what this
    estimate models for the same cells (so the same job, estimated with its own counts, comes out
    as it ran). A cell of a theme this spec does not have is modelled with the spec's first theme."""
    max_tokens = job.spec.model.max_tokens
    first_theme = next(iter(job.themes))
    by_task: dict[str, list[CellCount]] = defaultdict(list)
    for c in observed.cells:
        if c.task in job.tasks and c.requested > 0 and c.calls > 0:
            by_task[c.task].append(c)
    calibrations: dict[str, Calibration] = {}
    notes: dict[str, str] = {}
    for task_id, cells in by_task.items():
        task = job.tasks[task_id]
        shape = tuple(
            Cell(task=task_id, theme=c.theme if c.theme in job.themes else first_theme, count=c.requested)
            for c in cells
        )
        low = sum(
            calls["low"]
            for cell in shape
            for step, calls in _cell_calls(job, task, cell.count).items()
            if step != "repair"
        )
        made = sum(c.calls for c in cells)
        repairs = min(made, sum(max(0, c.repair_calls) for c in cells))
        items = sum(c.requested for c in cells)
        cal = Calibration(items=items, calls=(made - repairs) / low if low else 1.0, repairs=repairs / items)
        plans = _plan(job, provider, counter, templates, {task_id: cal}, shape)  # type: ignore[arg-type]
        modelled_in = sum(p.calls[OBSERVED] * p.input_per_call[OBSERVED] for p in plans) * ratio
        modelled_out = sum(p.calls[OBSERVED] * min(max_tokens, p.output_per_call * ratio) for p in plans)
        used_in = sum(c.usage.input_tokens for c in cells)
        used_out = sum(c.usage.output_tokens for c in cells)
        cal = replace(
            cal,
            input=used_in / modelled_in if used_in > 0 and modelled_in > 0 else 1.0,
            output=used_out / modelled_out if used_out > 0 and modelled_out > 0 else 1.0,
        )
        calibrations[task_id] = cal
        notes[task_id] = (
            f"{items} items in {len(cells)} earlier cells: {made} calls ({repairs} repairs), "
            f"{cal.calls:.2f}× the calls of the low scenario; prompts {cal.input:.2f}× and replies "
            f"{cal.output:.2f}× this estimate's own"
        )
    return calibrations, notes


def _samples(job: Job, templates: dict[str, Template]) -> list[CompletionRequest]:
    """A few of the job's requests, for the provider's own tokenizer to count."""
    out = []
    theme = job.themes[job.cells[0].theme] if job.cells else next(iter(job.themes.values()))
    for task in job.tasks.values():
        question, answer, code = _examples(job, task)
        requests = _requests(job, templates, task, theme, question, answer, code)
        out += [requests["answer"][0], requests.get("question", requests.get("snippet", [None]))[0]]
    return [r for r in out if r is not None][:12]


def _usage(acc: dict[str, dict[str, float]], name: str) -> Usage:
    return Usage(
        input_tokens=round(acc["input"][name]),
        output_tokens=round(acc["output"][name]),
        cached_tokens=round(acc["cached"][name]),
        cache_write_tokens=round(acc["write"][name]),
    )


def _cost(acc: dict[str, dict[str, float]], price: ModelPrice | None, prices: PriceTable) -> CostSpan | None:
    if price is None:
        return None
    values = {name: cost_of(_usage(acc, name), price) or 0.0 for name in NAMES}
    return CostSpan(**values)


def _step(
    step: StepName, acc: dict[str, dict[str, float]], price: ModelPrice | None, prices: PriceTable
) -> EstimateStep:
    return EstimateStep(step=step, **_spans(acc), cost_usd=_cost(acc, price, prices))


def _spans(acc: dict[str, dict[str, float]]) -> dict[str, Span]:
    """The five counts of a step or of the whole job, as the wire names them."""
    return {
        "calls": _span(acc["calls"]),
        "input_tokens": _span(acc["input"]),
        "cached_tokens": _span(acc["cached"]),
        "cache_write_tokens": _span(acc["write"]),
        "output_tokens": _span(acc["output"]),
    }


def _assumptions(job: Job) -> dict[str, str]:
    out = {}
    for name in NAMES:
        s = SCENARIOS[name]
        out[name] = (
            f"{s.question_drop:.0%} of items dropped before their answer and {s.answer_drop:.0%} after it "
            f"(replaced), {s.retry:.0%} content retries, {s.repair:.0%} of the "
            f"{job.spec.evaluation.repair_attempts} repair attempts per answer, replies {s.output:.1f}× "
            "the examples' length; within each cell's call budget"
        )
    out["outputs"] = (
        "reply lengths are modelled on the spec's few-shot examples of each task, capped at max_tokens"
    )
    out["cache"] = (
        "each task's step shares its system prompt across calls: written by the first call, read by the others "
        "once it reaches the provider's minimum; Anthropic's 5-minute cache is assumed to stay warm"
    )
    return out
