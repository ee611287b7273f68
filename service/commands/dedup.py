"""`qasynth dedup in.jsonl -o out.jsonl [--existing history.jsonl]`: the greedy ROUGE-L filter over files.

Input is JSONL or Parquet, one item a record with an id and a text (`--id-field`, `--text-field`;
default `id` and `text`). The output has one line per item, in input order: the same
`{id, kept, nearest_id, score}` as /v1/dedup, with the same decisions. `--kept FILE` also writes
the kept input records themselves. History (`--existing`) is kept unconditionally and compared
against first. A record without an id or text, with a blank text, or with an id used before is
a bad line: reported with its number, left out, and counted.

Rerun the same command after a crash or Ctrl-C and it continues: the items the output already
decides are not decided again (their kept ones join the history, which is exactly the filter's
state at that point). `--ray` runs the filter over blocks on a Ray cluster with the same result.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
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
from service.runners import RunnerUnavailable, open_runner
from service.settings import Settings
from service.wire.dedup import DedupItem, DedupResult

__all__ = ["register", "run"]


class _Items:
    """Valid items of one file, in order, with the bad ones reported; ids are unique over all files."""

    def __init__(self, args: argparse.Namespace, problems: Problems, seen: set[str]) -> None:
        self.id_field = args.id_field
        self.text_field = args.text_field
        self.problems = problems
        self.seen = seen

    def item(self, record: Record) -> DedupItem | None:
        if record.error is not None:
            self.problems.bad(record)
            return None
        value = record.value
        if not isinstance(value, dict):
            self.problems.bad(record, "not a JSON object")
            return None
        missing = [f for f in (self.id_field, self.text_field) if f not in value]
        if missing:
            self.problems.bad(record, f"no {' and no '.join(repr(f) for f in missing)} field")
            return None
        text = value[self.text_field]
        if isinstance(text, str) and not text.strip():
            self.problems.bad(record, f"{self.text_field} is blank")
            return None
        try:
            item = msgspec.convert({"id": value[self.id_field], "text": text}, DedupItem)
        except msgspec.ValidationError as exc:
            self.problems.bad(
                record, str(exc).replace("$.id", self.id_field).replace("$.text", self.text_field)
            )
            return None
        if item.id in self.seen:
            self.problems.bad(record, f"duplicate id {item.id!r}: an earlier item has it")
            return None
        self.seen.add(item.id)
        return item

    def of(self, records: Iterator[Record]) -> Iterator[tuple[Record, DedupItem]]:
        for record in records:
            item = self.item(record)
            if item is not None:
                yield record, item


def _dedup(args: argparse.Namespace) -> int:
    out = console()
    settings = Settings.from_env()
    summary = Summary(job="dedup")
    problems = Problems(out, args.errors)
    seen: set[str] = set()  # ids are refused twice, as /v1/dedup refuses them
    valid = _Items(args, problems, seen)
    output_path = Path(args.output)

    history: list[tuple[str, str]] = []
    if args.existing:
        history = [(item.id, item.text) for _, item in valid.of(read_records(Path(args.existing)))]

    source = Path(args.input)
    runner = open_runner(settings, ray=args.ray, block_size=args.block_size)
    summary.runner = runner.describe()
    kept_out = Output(Path(args.kept), append=False) if args.kept else None
    counts = {"items": 0, "kept": 0, "dropped": 0, "resumed": 0}
    output: Output | None = None
    interrupted = False
    try:
        with progress_bar(out, source, label="dedup", enabled=show_progress(args)) as update:
            items = valid.of(read_records(source, lambda n: update(n)))
            # What an earlier run decided: its kept items join the history, in order.
            previous = iter(() if args.restart else resume_records(output_path))
            for decided in previous:
                nxt = next(items, None)
                if nxt is None:
                    raise JobError(
                        f"{output_path} holds more results than {source} has items; pass --restart"
                    )
                record, item = nxt
                if decided.get("id") != item.id:
                    raise JobError(
                        f"{output_path} does not continue {source}: result {counts['items'] + 1} is "
                        f"{decided.get('id')!r}, the input has {item.id!r} ({record.where}); pass --restart"
                    )
                counts["items"] += 1
                counts["resumed"] += 1
                if decided.get("kept"):
                    counts["kept"] += 1
                    history.append((item.id, item.text))
                    if kept_out is not None:
                        kept_out.write(record.raw)
                else:
                    counts["dropped"] += 1
            output = Output(output_path, append=not args.restart)
            update(done=counts["items"])

            waiting: deque[Record] = deque()

            def offered() -> Iterator[tuple[str, str]]:
                for record, item in items:
                    waiting.append(record)
                    yield item.id, item.text

            for decision in runner.dedup(
                offered(), existing=history, threshold=args.threshold, tokenizer=args.tokenizer
            ):
                record = waiting.popleft()
                output.write(
                    msgspec.json.encode(
                        DedupResult(
                            id=decision.id,
                            kept=decision.kept,
                            nearest_id=decision.nearest_id,
                            score=decision.score,
                        )
                    )
                )
                counts["items"] += 1
                if decision.kept:
                    counts["kept"] += 1
                    if kept_out is not None:
                        kept_out.write(record.raw)
                else:
                    counts["dropped"] += 1
                update(done=counts["items"])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for f in (output, kept_out):
            if f is not None:
                f.close()
        problems.close()
        stats = getattr(runner, "stats", None)
        asyncio.run(runner.aclose())
    counts["bad_lines"] = problems.count
    summary.counts = counts
    if stats is not None:
        summary.extra["blocks"] = {
            "blocks": stats.blocks,
            "tasks": stats.tasks,
            "pairs_above_threshold": stats.pairs,
            "sequential_s": round(stats.sequential_s, 3),
        }
    line = (
        f"{counts['items']:,} items, {counts['kept']:,} kept, {counts['dropped']:,} dropped, "
        f"{problems.count:,} bad lines"
        + (f" ({counts['resumed']:,} decided by an earlier run)" if counts["resumed"] else "")
    )
    if interrupted:
        out.print(
            f"dedup: interrupted after {counts['items']:,} items; run the same command again to continue"
        )
        return 130
    summary.finish(out, line, args.summary)
    return 1 if problems.count else 0


def run(args: argparse.Namespace) -> int:
    try:
        return _dedup(args)
    except (JobError, RunnerUnavailable, OSError, ValueError) as exc:
        print(f"dedup: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "dedup",
        help="drop near-duplicates from a JSONL or Parquet file (ROUGE-L, as /v1/dedup)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="items as JSONL or Parquet (.parquet)")
    p.add_argument("-o", "--output", required=True, help="one decision per item, as JSONL")
    p.add_argument("--existing", metavar="FILE", help="history to compare against first (same format)")
    p.add_argument("--kept", metavar="FILE", help="also write the kept input records here")
    p.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F1 above which an item is dropped")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "rouge", "japanese", "char"))
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--block-size", type=int, default=None, help="--ray: items per block (default 20,000)")
    add_common_arguments(p)
    p.set_defaults(func=run)
