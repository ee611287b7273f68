"""`qasynth evaluate in.jsonl -o out.jsonl`: run the R code of many answers in the sandbox pool.

Input is JSONL or Parquet: pairs as /v1/generate returns them (a `pair` event line is unwrapped)
and/or snippets `{id, code}`, as /v1/evaluate takes them. The output has one line per item in
input order, written as results come: the pair with its new `evaluation`, or `{id, evaluation}`
for a snippet, exactly what /v1/evaluate returns for it. A record that is neither is a bad line.

Rerun the same command and it skips what the output already holds (a last line cut off by a
crash is dropped and redone). `--ray` spreads the snippets over one warm R pool per node.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import msgspec

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
    resume_records,
    show_progress,
)
from service.errors import QasynthError
from service.runners import EvalItem, open_runner
from service.settings import Settings
from service.wire.evaluate import Evaluation, Snippet, SnippetResult
from service.wire.generate import Pair

__all__ = ["parse_item", "register", "run", "to_eval_item", "with_evaluation"]


def parse_item(record: Record, problems: Problems, *, pairs_only: bool = False) -> Pair | Snippet | None:
    """A pair or a snippet, validated by the wire types themselves; None (reported) otherwise."""
    if record.error is not None:
        problems.bad(record)
        return None
    value = record.value
    if isinstance(value, dict) and value.get("event") == "pair" and isinstance(value.get("pair"), dict):
        value = value["pair"]
    if not isinstance(value, dict):
        problems.bad(record, "not a JSON object")
        return None
    is_snippet = "code" in value and "answer" not in value
    if is_snippet and pairs_only:
        problems.bad(record, "a snippet ({id, code}); a report takes pairs")
        return None
    try:
        return msgspec.convert(value, Snippet if is_snippet else Pair)
    except msgspec.ValidationError as exc:
        problems.bad(record, f"not a {'snippet' if is_snippet else 'pair'}: {exc}")
        return None


def to_eval_item(item: Pair | Snippet) -> EvalItem:
    """As /v1/evaluate runs it: a pair's answer under its task, a snippet's code as a `generate` task's."""
    if isinstance(item, Pair):
        return EvalItem("answer", item.task, item.answer)
    return EvalItem("code", "generate", item.code)


def with_evaluation(item: Pair | Snippet, evaluation: Evaluation) -> Pair | SnippetResult:
    if isinstance(item, Pair):
        return msgspec.structs.replace(item, evaluation=evaluation)
    return SnippetResult(id=item.id, evaluation=evaluation)


def skip_done(
    items: Iterator[tuple[Record, Pair | Snippet]], output: Path, source: Path
) -> Iterator[dict[str, object]]:
    """Walk the input alongside what `output` already holds; yields those results, checking each
    one belongs to the input item at its place."""
    for n, done in enumerate(resume_records(output), 1):
        nxt = next(items, None)
        if nxt is None:
            raise JobError(f"{output} holds more results than {source} has items; pass --restart")
        record, item = nxt
        if done.get("id") != item.id:
            raise JobError(
                f"{output} does not continue {source}: result {n} is {done.get('id')!r}, the input has "
                f"{item.id!r} ({record.where}); pass --restart"
            )
        yield done


async def _evaluate(args: argparse.Namespace) -> int:
    out = console()
    settings = Settings.from_env()
    summary = Summary(job="evaluate")
    problems = Problems(out, args.errors)
    source, output_path = Path(args.input), Path(args.output)
    verdicts: Counter[str] = Counter()
    counts = {"items": 0, "flagged": 0, "resumed": 0}
    runner = open_runner(settings, ray=args.ray)
    output: Output | None = None
    interrupted = False
    try:
        with progress_bar(out, source, label="evaluate", enabled=show_progress(args)) as update:

            def valid() -> Iterator[tuple[Record, Pair | Snippet]]:
                for record in read_records(source, lambda n: update(n)):
                    item = parse_item(record, problems)
                    if item is not None:
                        yield record, item

            items = valid()
            if not args.restart:
                for done in skip_done(items, output_path, source):
                    evaluation = done.get("evaluation")
                    if isinstance(evaluation, dict):
                        verdicts[str(evaluation.get("verdict"))] += 1
                        counts["flagged"] += bool(evaluation.get("flagged"))
                    counts["items"] += 1
                    counts["resumed"] += 1
            output = Output(output_path, append=not args.restart)
            update(done=counts["items"])

            waiting: deque[Pair | Snippet] = deque()

            def to_run() -> Iterator[EvalItem]:
                for _, item in items:
                    waiting.append(item)
                    yield to_eval_item(item)

            async for evaluation in runner.evaluate(to_run()):
                item = waiting.popleft()
                output.write(msgspec.json.encode(with_evaluation(item, evaluation)))
                verdicts[evaluation.verdict] += 1
                counts["flagged"] += evaluation.flagged
                counts["items"] += 1
                update(done=counts["items"])
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        if output is not None:
            output.close()
        problems.close()
        summary.runner = runner.describe()
        await runner.aclose()
    if interrupted:
        out.print(
            f"evaluate: interrupted after {counts['items']:,} items; run the same command again to continue"
        )
        return 130
    counts["bad_lines"] = problems.count
    summary.counts = {**counts, **{f"verdict_{v}": n for v, n in sorted(verdicts.items())}}
    by_verdict = ", ".join(f"{n:,} {v}" for v, n in sorted(verdicts.items())) or "nothing run"
    line = (
        f"{counts['items']:,} items ({by_verdict}), {counts['flagged']:,} flagged, {problems.count:,} bad lines"
        + (f" ({counts['resumed']:,} done by an earlier run)" if counts["resumed"] else "")
    )
    summary.finish(out, line, args.summary)
    return 1 if problems.count else 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_evaluate(args))
    except (JobError, QasynthError, OSError) as exc:
        print(f"evaluate: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate",
        help="run the R code of pairs or snippets from a JSONL or Parquet file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="pairs and/or snippets as JSONL or Parquet")
    p.add_argument("-o", "--output", required=True, help="the items with their evaluations, as JSONL")
    add_common_arguments(p)
    p.set_defaults(func=run)
