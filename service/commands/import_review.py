"""`python -m service import-review export.json -o reviewed.json`: Label Studio's export back to pairs.

Corrected answers are re-evaluated in the R sandbox configured by the environment (QASYNTH_SANDBOX),
unless `--no-evaluate`. `--pairs-out` also writes the pairs ready for training (accepted plus
corrected) as JSONL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec

from service.errors import QasynthError
from service.stages.export import import_review, parse_export
from service.wire.export import ReviewImport

__all__ = ["register", "run"]


async def _run(body: bytes, evaluate: bool) -> ReviewImport:
    tasks = parse_export(body)
    if not evaluate:
        return await import_review(tasks, evaluate=None)
    from service.providers.registry import ProviderRegistry
    from service.runtime import Runtime
    from service.settings import Settings
    from service.stages.evaluate import answer_evaluator

    settings = Settings.from_env()
    runtime = Runtime(settings=settings, providers=ProviderRegistry(settings))
    try:
        return await import_review(tasks, evaluate=answer_evaluator(await runtime.runner()))
    finally:
        await runtime.aclose()


def run(args: argparse.Namespace) -> int:
    try:
        body = Path(args.export).read_bytes()
        result = asyncio.run(_run(body, not args.no_evaluate))
    except QasynthError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"import-review: {exc.detail}{where}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"import-review: {exc}", file=sys.stderr)
        return 2
    encoded = msgspec.json.format(msgspec.json.encode(result), indent=2)
    if args.output == "-":
        sys.stdout.buffer.write(encoded + b"\n")
    else:
        Path(args.output).write_bytes(encoded + b"\n")
    if args.pairs_out:
        pairs = [*result.accepted, *(c.pair for c in result.corrected)]
        Path(args.pairs_out).write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in pairs))
    c = result.counts
    print(
        f"{c.tasks} tasks: {c.accepted} accepted, {c.corrected} corrected, {c.rejected} rejected, "
        f"{c.skipped} skipped",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "import-review", help="apply reviewers' decisions from a Label Studio export", description=__doc__
    )
    p.add_argument("export", help="Label Studio JSON export (exportType=JSON, download_all_tasks=true)")
    p.add_argument("-o", "--output", default="-", help="where to write the result JSON (default stdout)")
    p.add_argument("--pairs-out", help="also write accepted and corrected pairs as JSONL")
    p.add_argument("--no-evaluate", action="store_true", help="do not re-run corrected answers in R")
    p.set_defaults(func=run)
