"""`qasynth report in.jsonl --html report.html`: the validation report over a file of pairs.

Pairs without an `evaluation` are run in the sandbox pool first (`--evaluate all` runs every
pair again, `none` runs nothing), as POST /v1/reports does; `-o FILE` also writes every pair with
its evaluation, in input order as results come, and a rerun continues it. The report counts
every pair by verdict and by task × theme and lists them flagged first. Flagged pairs keep all
their evidence (message, code, output); the others are listed by id, question and verdict,
without their code and output, so memory grows by a short record per passing pair, not by the
answers. Exit status: 0, or 2 when some pair is flagged (as `python -m evaluator report`), 1 on
bad lines, 3 when the report cannot be made.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec

import evaluator
from service.commands._files import (
    JobError,
    Output,
    Problems,
    Record,
    Summary,
    add_common_arguments,
    console,
    progress_bar,
    read_records,
    show_progress,
)
from service.commands.evaluate import parse_item, skip_done, to_eval_item
from service.errors import QasynthError
from service.runners import JobRunner, open_runner
from service.settings import Settings
from service.stages.evaluate import to_check
from service.wire.evaluate import Evaluation
from service.wire.generate import Pair

__all__ = ["register", "run"]

CHUNK = 2048  # pairs read at a time: those needing a run go to the pool together


def _entry(pair: Pair, evaluation: Evaluation | None) -> evaluator.ReportEntry:
    check = to_check(evaluation) if evaluation is not None else None
    entry = evaluator.ReportEntry(
        id=pair.id, task=pair.task, theme=pair.theme, question=pair.question, answer=pair.answer, check=check
    )
    if check is None or entry.flagged:
        return entry
    slim = evaluator.Check(verdict=check.verdict, blocks=check.blocks, duration_ms=check.duration_ms)
    return msgspec.structs.replace(entry, answer="", check=slim)


async def _report(args: argparse.Namespace) -> int:
    out = console()
    settings = Settings.from_env()
    summary = Summary(job="report")
    problems = Problems(out, args.errors)
    source = Path(args.input)
    entries: list[evaluator.ReportEntry] = []
    counts = {"pairs": 0, "run": 0, "resumed": 0}
    runner: JobRunner | None = None
    output: Output | None = None
    environment: dict[str, str] = {}
    try:
        with progress_bar(out, source, label="report", enabled=show_progress(args)) as update:

            def valid() -> Iterator[tuple[Record, Pair]]:
                for record in read_records(source, lambda n: update(n)):
                    item = parse_item(record, problems, pairs_only=True)
                    if isinstance(item, Pair):
                        yield record, item

            items = valid()
            if args.output:
                if not args.restart:
                    for done in skip_done(items, Path(args.output), source):
                        pair = msgspec.convert(done, Pair)
                        entries.append(_entry(pair, pair.evaluation))
                        counts["pairs"] += 1
                        counts["resumed"] += 1
                output = Output(Path(args.output), append=not args.restart)
            update(done=counts["pairs"])
            while chunk := [pair for _, pair in _take(items, CHUNK)]:
                todo = [
                    i
                    for i, p in enumerate(chunk)
                    if args.evaluate == "all" or (args.evaluate == "missing" and p.evaluation is None)
                ]
                if todo:
                    if runner is None:
                        runner = open_runner(settings, ray=args.ray)
                    results = [e async for e in runner.evaluate(to_eval_item(chunk[i]) for i in todo)]
                    environment = runner.describe()
                    for i, evaluation in zip(todo, results, strict=True):
                        chunk[i] = msgspec.structs.replace(chunk[i], evaluation=evaluation)
                    counts["run"] += len(todo)
                for pair in chunk:
                    if output is not None:
                        output.write(msgspec.json.encode(pair))
                    entries.append(_entry(pair, pair.evaluation))
                counts["pairs"] += len(chunk)
                update(done=counts["pairs"])
    except (KeyboardInterrupt, asyncio.CancelledError):
        out.print(
            f"report: interrupted after {counts['pairs']:,} pairs; run the same command again to continue"
        )
        return 130
    finally:
        if output is not None:
            output.close()
        problems.close()
        if runner is not None:
            await runner.aclose()
    if not entries:
        out.print(f"report: {source} holds no pairs")
        return 3
    report = evaluator.build_report(entries, title=args.title, environment=environment)
    _write(report, args)
    summary.runner = {
        k: v for k, v in environment.items() if k in ("runner", "mode", "workers", "actors")
    } or {"runner": "none needed"}
    summary.counts = {
        **counts,
        "passed": report.passed,
        "flagged": report.flagged,
        "unevaluated": report.unevaluated,
        "bad_lines": problems.count,
    }
    verdicts = ", ".join(f"{n:,} {v}" for v, n in report.verdicts.items())
    summary.finish(
        out,
        f"{report.total:,} pairs ({verdicts}), {report.flagged:,} flagged, {problems.count:,} bad lines -> {args.html}",
        args.summary,
    )
    if problems.count:
        return 1
    return 2 if report.flagged else 0


def _write(report: evaluator.Report, args: argparse.Namespace) -> None:
    Path(args.html).write_text(evaluator.render_html(report), encoding="utf-8")
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))


def _take(items: Iterator[tuple[Record, Pair]], n: int) -> Iterator[tuple[Record, Pair]]:
    for _ in range(n):
        nxt = next(items, None)
        if nxt is None:
            return
        yield nxt


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_report(args))
    except (JobError, QasynthError, OSError) as exc:
        print(f"report: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "report",
        help="validation report (HTML) over a JSONL or Parquet file of pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="pairs as JSONL or Parquet")
    p.add_argument("--html", default="report.html", help="the report page (default report.html)")
    p.add_argument("--json", help="also write the report as JSON")
    p.add_argument("-o", "--output", help="also write every pair with its evaluation here (JSONL, resumable)")
    p.add_argument("--evaluate", choices=("missing", "all", "none"), default="missing")
    p.add_argument("--title", default="R answer validation report")
    add_common_arguments(p)
    p.set_defaults(func=run)
