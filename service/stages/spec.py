"""Spec → Job: fill in built-in defaults, check cross-references, and hash what was asked for.

Everything a request can get wrong beyond its JSON shape is caught here, before
any model is called, and reported as `InvalidInput` naming the field.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from functools import cache
from pathlib import Path

import msgspec

from service.errors import InvalidInput
from service.wire.generate import MAX_TOTAL_COUNT, Cell, FewShot, Spec, Task, TaskKind, Theme

__all__ = ["Job", "ResolvedTask", "ResolvedTheme", "locale_defaults", "prompts_dir", "resolve_spec"]


def prompts_dir() -> Path:
    """Templates live in the top-level `prompts/` folder; `QASYNTH_PROMPTS_DIR` points elsewhere."""
    override = os.environ.get("QASYNTH_PROMPTS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "prompts"


class _Described(msgspec.Struct):
    description: str
    instructions: str = ""


class _Example(msgspec.Struct):
    task: str
    question: str
    answer: str


class _Labels(msgspec.Struct):
    """Words the steps put into prompts, in the locale's language."""

    error: str
    prints: str
    intended: str
    question_output: str
    not_run: str
    verdict: str
    failed_checks: str


class _Defaults(msgspec.Struct):
    conventions: str
    answer_rules: str
    avoid_header: str
    none: str
    labels: _Labels
    tasks: dict[str, _Described]
    themes: dict[str, _Described]
    few_shot: list[_Example] = []


@cache
def locale_defaults(locale: str) -> _Defaults:
    raw = (prompts_dir() / f"defaults.{locale}.toml").read_bytes()
    return msgspec.convert(tomllib.loads(raw.decode()), _Defaults)


class ResolvedTask(msgspec.Struct, frozen=True):
    id: str
    description: str
    instructions: str
    kind: TaskKind | None = None


class ResolvedTheme(msgspec.Struct, frozen=True):
    id: str
    description: str


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A spec with every default filled in; the stages read only this."""

    spec: Spec
    spec_sha256: str
    tasks: dict[str, ResolvedTask]
    themes: dict[str, ResolvedTheme]
    cells: tuple[Cell, ...]
    conventions: str
    answer_rules: str
    few_shot: tuple[FewShot, ...]

    @property
    def requested(self) -> int:
        return sum(c.count for c in self.cells)


def _unique(ids: list[str], field: str) -> None:
    seen: set[str] = set()
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise InvalidInput(f"duplicate id {item_id!r}", field=f"{field}[{i}].id")
        seen.add(item_id)


def _resolve(
    given: list[Task] | list[Theme] | None, builtins: dict[str, _Described], field: str
) -> dict[str, _Described]:
    """Tasks and themes alike: a built-in id may leave out its description, a new one may not."""
    items = given if given is not None else [Task(id=i) for i in builtins]
    _unique([item.id for item in items], field)
    out = {}
    for i, item in enumerate(items):
        builtin = builtins.get(item.id)
        if item.description is None and builtin is None:
            raise InvalidInput(
                f"{field[:-1]} {item.id!r} is not built in ({', '.join(builtins)}); give it a description",
                field=f"{field}[{i}].description",
            )
        instructions = getattr(item, "instructions", None)
        out[item.id] = _Described(
            description=item.description or (builtin.description if builtin else ""),
            instructions=instructions
            if instructions is not None
            else (builtin.instructions if builtin else ""),
        )
    return out


BUILT_IN_KINDS: frozenset[str] = frozenset({"explain", "fix", "generate"})


def _resolve_tasks(spec: Spec, defaults: _Defaults) -> dict[str, ResolvedTask]:
    resolved = _resolve(spec.tasks, defaults.tasks, "tasks")
    kinds: dict[str, TaskKind | None] = {t.id: t.kind for t in spec.tasks or []}
    out = {}
    for k, v in resolved.items():
        kind = kinds.get(k)
        if kind is None and k in BUILT_IN_KINDS:
            kind = k  # type: ignore[assignment]
        out[k] = ResolvedTask(id=k, description=v.description, instructions=v.instructions, kind=kind)
    return out


def _check_policy(spec: Spec, tasks: dict[str, ResolvedTask]) -> None:
    for key in spec.evaluation.policy:
        if key != "*" and key not in tasks:
            raise InvalidInput(
                f'policy for unknown task {key!r}; use a task id of the spec or "*" for every task',
                field=f"evaluation.policy.{key}",
            )


def _resolve_themes(spec: Spec, defaults: _Defaults) -> dict[str, ResolvedTheme]:
    resolved = _resolve(spec.themes, defaults.themes, "themes")
    return {k: ResolvedTheme(id=k, description=v.description) for k, v in resolved.items()}


def _resolve_cells(
    spec: Spec, tasks: dict[str, ResolvedTask], themes: dict[str, ResolvedTheme]
) -> list[Cell]:
    if (spec.per_cell is None) == (spec.cells is None):
        raise InvalidInput(
            "give exactly one of per_cell (one count for every cell) or cells", field="per_cell"
        )
    if spec.cells is None:
        assert spec.per_cell is not None
        return [Cell(task=t, theme=h, count=spec.per_cell) for t in tasks for h in themes]
    seen: set[tuple[str, str]] = set()
    for i, cell in enumerate(spec.cells):
        if cell.task not in tasks:
            raise InvalidInput(f"unknown task {cell.task!r}", field=f"cells[{i}].task")
        if cell.theme not in themes:
            raise InvalidInput(f"unknown theme {cell.theme!r}", field=f"cells[{i}].theme")
        if (cell.task, cell.theme) in seen:
            raise InvalidInput(f"cell {cell.task} × {cell.theme} is listed twice", field=f"cells[{i}]")
        seen.add((cell.task, cell.theme))
    return list(spec.cells)


def resolve_spec(spec: Spec, *, max_total: int | None = MAX_TOTAL_COUNT) -> Job:
    """Validate and complete a spec; raises `InvalidInput` naming the offending field. One request
    holds at most `max_total` pairs; a job from the command line has no such cap (None)."""
    defaults = locale_defaults(spec.locale)
    tasks = _resolve_tasks(spec, defaults)
    themes = _resolve_themes(spec, defaults)
    cells = _resolve_cells(spec, tasks, themes)
    _check_policy(spec, tasks)
    total = sum(c.count for c in cells)
    if max_total is not None and total > max_total:
        raise InvalidInput(
            f"the spec asks for {total} pairs; one request may ask for at most {max_total}",
            field="cells" if spec.cells is not None else "per_cell",
        )
    if spec.few_shot:
        few_shot = list(spec.few_shot)
        for i, example in enumerate(few_shot):
            if example.task not in tasks:
                raise InvalidInput(
                    f"few-shot example for unknown task {example.task!r}", field=f"few_shot[{i}].task"
                )
    else:
        few_shot = [
            FewShot(task=e.task, question=e.question, answer=e.answer.strip()) for e in defaults.few_shot
        ]
        few_shot = [e for e in few_shot if e.task in tasks]
    existing_ids: set[str] = set()
    for i, item in enumerate(spec.dedup.existing):
        if item.id in existing_ids:
            raise InvalidInput(f"duplicate id {item.id!r}", field=f"dedup.existing[{i}].id")
        existing_ids.add(item.id)
    return Job(
        spec=spec,
        spec_sha256=hashlib.sha256(msgspec.json.encode(spec, order="deterministic")).hexdigest(),
        tasks=tasks,
        themes=themes,
        cells=tuple(cells),
        conventions=(spec.conventions or defaults.conventions).strip(),
        answer_rules=(spec.answer_rules or defaults.answer_rules).strip(),
        few_shot=tuple(few_shot),
    )
