"""Command line: `python -m evaluator {report,run,check}`.

    report PAIRS --html report.html [--json report.json]
        Check every answer of PAIRS and write the validation report. PAIRS is JSON
        Lines (one object a line) or one JSON document: a list of objects, or an object
        with a "pairs" list (a /v1/generate response). Each object needs "answer";
        "id", "task", "theme" and "question" are used when present. An object that
        already has an "evaluation" is reported as it is, unless --rerun. Objects with an
        "expected_verdict" make it a validation of the evaluator too: the report counts
        how many got the verdict they were expected to get, and lists the others.
    run FILE...
        Run R files (.R) or markdown answers (.md) and print one JSON verdict per file.
    check
        Start the sandbox once and print what it found (exit 1 if it cannot run).

Exit status of `report`: 0 when no answer is flagged, 2 when some are (1 on errors),
so it can gate a pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from evaluator._check import check_answer, check_code
from evaluator._pool import WorkerPool
from evaluator._report import ReportEntry, build_report, render_html
from evaluator._types import Check, Limits, SandboxUnavailable


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _load_pairs(path: str) -> list[dict[str, Any]]:
    text = _read(path)
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and '"pairs"' in stripped[:200_000]):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict) and isinstance(doc.get("pairs"), list):
            return doc["pairs"]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{n}: not JSON: {exc}") from None
    return rows


def _check_from_evaluation(ev: dict[str, Any]) -> Check:
    fields = {k: ev[k] for k in Check.__struct_fields__ if k in ev}
    if "warnings" in fields:
        fields["warnings"] = tuple(fields["warnings"])
    return msgspec.convert(fields, type=Check)


async def _report(args: argparse.Namespace) -> int:
    rows = _load_pairs(args.pairs)
    if not rows:
        print(f"{args.pairs}: no pairs", file=sys.stderr)
        return 1
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("answer"), str):
            print(f"{args.pairs}: item {i + 1} has no string 'answer'", file=sys.stderr)
            return 1
    todo = [i for i, r in enumerate(rows) if args.rerun or not isinstance(r.get("evaluation"), dict)]
    checks: dict[int, Check] = {}
    environment: dict[str, str] = {}
    if todo:
        async with WorkerPool(sandbox=args.sandbox, workers=args.workers, limits=_limits(args)) as pool:
            environment = pool.describe()
            done = 0

            async def one(i: int) -> None:
                nonlocal done
                checks[i] = await check_answer(pool, rows[i]["answer"])
                done += 1
                if args.progress and (done % 50 == 0 or done == len(todo)):
                    print(f"checked {done}/{len(todo)}", file=sys.stderr)

            await asyncio.gather(*(one(i) for i in todo))
    entries = []
    for i, row in enumerate(rows):
        check = checks.get(i)
        if check is None and isinstance(row.get("evaluation"), dict):
            check = _check_from_evaluation(row["evaluation"])
        entries.append(
            ReportEntry(
                id=str(row.get("id") or f"item-{i + 1}"),
                task=str(row.get("task") or ""),
                theme=str(row.get("theme") or ""),
                question=str(row.get("question") or ""),
                answer=row["answer"],
                check=check,
                expected=row.get("expected_verdict")
                if isinstance(row.get("expected_verdict"), str)
                else None,
            )
        )
    report = build_report(entries, title=args.title, environment=environment)
    _write(args.output, render_html(report).encode())
    if args.json:
        _write(args.json, msgspec.json.format(msgspec.json.encode(report), indent=2))
    summary = ", ".join(f"{v} {n}" for v, n in report.verdicts.items())
    print(f"{report.total} answers: {summary}; {report.flagged} flagged -> {args.output}")
    if report.expected_total:
        print(f"expected verdicts: {report.expected_agree} of {report.expected_total} agree")
        for i in report.disagreements:
            print(
                f"  {i}: expected {next(e.expected for e in entries if e.id == i)}, got "
                f"{next(e.verdict for e in entries if e.id == i)}"
            )
    return 2 if report.flagged else 0


async def _run(args: argparse.Namespace) -> int:
    async with WorkerPool(sandbox=args.sandbox, workers=1, limits=_limits(args)) as pool:
        for path in args.files:
            text = _read(path)
            is_markdown = os.path.splitext(path)[1].lower() in (".md", ".markdown", ".rmd", ".qmd")
            check = await (check_answer(pool, text) if is_markdown else check_code(pool, text))
            out = msgspec.to_builtins(check)
            out["file"] = path
            print(json.dumps(out, ensure_ascii=False))
    return 0


async def _check(args: argparse.Namespace) -> int:
    async with WorkerPool(sandbox=args.sandbox, workers=1, limits=_limits(args)) as pool:
        result = await pool.run('cat(R.version.string, "\\n")')
        print(
            json.dumps(
                {**pool.describe(), "probe": result.verdict, "stdout": result.stdout.strip()}, indent=2
            )
        )
        return 0 if result.verdict == "passed" else 1


def _limits(args: argparse.Namespace) -> Limits:
    base = Limits()
    return msgspec.structs.replace(
        base,
        wall_s=args.wall_s or base.wall_s,
        cpu_s=args.wall_s or base.cpu_s,
        mem_mb=args.mem_mb or base.mem_mb,
        total_mem_mb=max(args.mem_mb or 0, base.total_mem_mb),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description="Run R answers in a sandbox.")
    parser.add_argument(
        "--sandbox", choices=("bwrap", "none"), default=os.environ.get("QASYNTH_SANDBOX") or "bwrap"
    )
    parser.add_argument("--wall-s", type=float, default=None, help="time limit per snippet (default 10)")
    parser.add_argument("--mem-mb", type=int, default=None, help="memory per process (default 1024)")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="check answers and write the HTML validation report")
    rep.add_argument("pairs")
    rep.add_argument("--html", "-o", "--output", dest="output", default="report.html", help="the HTML report")
    rep.add_argument("--json", help="also write the report as JSON here")
    rep.add_argument("--title", default="R answer validation report")
    rep.add_argument("--workers", type=int, default=None, help="R workers (default: one per core)")
    rep.add_argument("--rerun", action="store_true", help="check answers that already have an evaluation too")
    rep.add_argument("--progress", action="store_true")
    run = sub.add_parser("run", help="run .R files or .md answers, print JSON verdicts")
    run.add_argument("files", nargs="+")
    sub.add_parser("check", help="start the sandbox once and say what it found")
    args = parser.parse_args(argv)
    command = {"report": _report, "run": _run, "check": _check}[args.command]
    try:
        return asyncio.run(command(args))
    except SandboxUnavailable as exc:
        print(f"sandbox unavailable: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
