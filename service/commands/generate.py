"""`qasynth generate spec.json -o pairs.jsonl`: a spec of any size through the pipeline, into files.

The spec is the one /v1/generate takes, checked the same way (a bad field is named), without the
request's cap on the total count. Records are written the moment they are ready, each file JSONL
of the wire type /v1/generate returns in its lists:

    pairs.jsonl           one Pair a line (what `qasynth evaluate`, `report` and `export` read)
    pairs.dropped.jsonl   one ItemDropped a line: left out, with its reason, and replaced
    pairs.failed.jsonl    one ItemFailed a line: a requested item that could not be made

(`--dropped` and `--failed` name other files.) The summary has the counts of /v1/generate's
response; per cell `requested = returned + failed`.

Rerun the same command after a crash or Ctrl-C and it continues: per cell, the pairs and failures
the files hold count towards its count, and only the rest is made; the questions and answers
already returned join the dedup history, so no near-duplicate of them appears, and the cells'
prompts avoid them. A last line cut off by a crash is removed. Files that belong to another spec
are refused (`--restart` starts over). `--ray` spreads the cells over a Ray cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from service.commands._files import (
    JobError,
    Output,
    Summary,
    add_common_arguments,
    console,
    progress_bar,
    resume_records,
    show_progress,
)
from service.errors import QasynthError
from service.runners import open_runner
from service.settings import Settings
from service.stages.pipeline import History, add_counts
from service.stages.spec import Job, resolve_spec
from service.wire.base import Usage
from service.wire.generate import (
    Cell,
    CellCount,
    Counts,
    Done,
    Dropped,
    Failed,
    ItemDropped,
    ItemFailed,
    Pair,
    PairReady,
    Spec,
)

__all__ = ["Earlier", "load_job", "register", "run"]

_AT = re.compile(r" - at `\$\.?([^`]*)`")


def load_job(path: Path) -> Job:
    """The spec file as /v1/generate would take it (no cap on the total count); errors name the field."""
    if not path.is_file():
        raise JobError(f"{path}: no such file")
    try:
        spec = msgspec.json.decode(path.read_bytes(), type=Spec)
    except msgspec.ValidationError as exc:
        message = str(exc)
        where = _AT.search(message)
        if where is None:
            raise JobError(f"{path}: {message}") from None
        raise JobError(f"{path}: {where.group(1) or 'the spec'}: {message[: where.start()]}") from None
    except msgspec.DecodeError as exc:
        raise JobError(f"{path}: not JSON: {exc}") from None
    try:
        return resolve_spec(spec, max_total=None)
    except QasynthError as exc:
        raise JobError(
            f"{path}: {exc.field}: {exc.detail}" if exc.field else f"{path}: {exc.detail}"
        ) from None


@dataclass
class Earlier:
    """What the output files already hold, per cell, and what follows from it for the rest of the job."""

    pairs: list[Pair] = field(default_factory=list)
    dropped: list[ItemDropped] = field(default_factory=list)
    failed: list[ItemFailed] = field(default_factory=list)

    @classmethod
    def read(cls, job: Job, paths: tuple[Path, Path, Path]) -> Earlier:
        earlier = cls(
            list(resume_records(paths[0], Pair)),
            list(resume_records(paths[1], ItemDropped)),
            list(resume_records(paths[2], ItemFailed)),
        )
        grid = {(c.task, c.theme): c.count for c in job.cells}
        held: Counter[tuple[str, str]] = Counter()
        for path, records in zip(paths, (earlier.pairs, earlier.dropped, earlier.failed), strict=True):
            for record in records:
                key = (record.task, record.theme)
                if key not in grid:
                    raise JobError(
                        f"{path} holds a record of cell {record.task} × {record.theme}, which the spec "
                        "does not have: it belongs to another spec; choose another -o or pass --restart"
                    )
                if not isinstance(record, ItemDropped):
                    held[key] += 1
        for pair in earlier.pairs:
            if pair.provenance is not None and pair.provenance.spec_sha256 != job.spec_sha256:
                raise JobError(
                    f"{paths[0]} holds pairs of another spec (spec_sha256 {pair.provenance.spec_sha256[:12]}…, "
                    f"this one is {job.spec_sha256[:12]}…); choose another -o or pass --restart"
                )
        for key, n in held.items():
            if n > grid[key]:
                raise JobError(
                    f"{paths[0]} and {paths[2]} hold {n} items of cell {key[0]} × {key[1]}, which asks for "
                    f"{grid[key]}; they belong to another spec; pass --restart"
                )
        return earlier

    def cells(self, job: Job) -> tuple[Cell, ...]:
        """What each cell still misses; a cell the files already account for is left out."""
        held = Counter((r.task, r.theme) for r in [*self.pairs, *self.failed])
        rest = (Cell(task=c.task, theme=c.theme, count=c.count - held[(c.task, c.theme)]) for c in job.cells)
        return tuple(c for c in rest if c.count > 0)

    def history(self) -> History:
        """Kept questions and answers, as the filters kept them, and each cell's questions."""
        history = History()
        for record in [*self.pairs, *self.dropped]:
            history.keep(record)
        return history

    def counts(self) -> Counts:
        """The accounting these records stand for (calls, usage and checks are not in the records)."""
        cells: dict[tuple[str, str], CellCount] = {}

        def cell(task: str, theme: str) -> CellCount:
            return cells.setdefault((task, theme), CellCount(task=task, theme=theme, requested=0))

        for pair in self.pairs:
            c = cell(pair.task, pair.theme)
            flagged = bool(pair.quality and pair.quality.flagged)
            c.requested += 1
            c.returned += 1
            c.flagged += flagged
            c.repaired += bool(pair.provenance and pair.provenance.repairs) and not flagged
        for item in self.failed:
            c = cell(item.task, item.theme)
            c.requested += 1
            c.failed += 1
        for item in self.dropped:
            c = cell(item.task, item.theme)
            c.dropped += 1
            c.flagged += item.stage == "evaluation"
        stages = Counter(d.stage for d in self.dropped)
        return Counts(
            requested=len(self.pairs) + len(self.failed),
            returned=len(self.pairs),
            failed=len(self.failed),
            questions_dropped=stages["question"],
            answers_dropped=sum(d.stage == "answer" and d.reason == "near_duplicate" for d in self.dropped),
            evaluation_dropped=stages["evaluation"],
            flagged=sum(c.flagged for c in cells.values()),
            cells=list(cells.values()),
        )


def side_paths(output: Path, dropped: str | None, failed: str | None) -> tuple[Path, Path, Path]:
    """`pairs.jsonl` → `pairs.dropped.jsonl` and `pairs.failed.jsonl`, unless named."""
    suffix = output.suffix or ".jsonl"
    stem = output.with_suffix("") if output.suffix else output
    return (
        output,
        Path(dropped) if dropped else stem.with_name(f"{stem.name}.dropped{suffix}"),
        Path(failed) if failed else stem.with_name(f"{stem.name}.failed{suffix}"),
    )


async def _generate(args: argparse.Namespace) -> int:
    out = console()
    settings = Settings.from_env()
    job = load_job(Path(args.spec))
    paths = side_paths(Path(args.output), args.dropped, args.failed)
    if len(set(paths)) < 3:
        raise JobError("the pairs, dropped and failed files must be three different files")
    earlier = Earlier() if args.restart else Earlier.read(job, paths)
    rest = msgspec.structs.replace(job, cells=earlier.cells(job))
    summary = Summary(job="generate")
    parts = [earlier.counts()]
    usage = Usage()
    files = [Output(p, append=not args.restart, flush_every=1) for p in paths]
    runner = open_runner(settings, ray=args.ray) if rest.cells else None
    resumed = len(earlier.pairs) + len(earlier.failed)
    done = resumed
    interrupted = False
    try:
        with progress_bar(
            out, None, label="generate", enabled=show_progress(args), total=job.requested
        ) as update:
            update(done=done)
            if runner is not None:
                async for event in runner.generate(rest, history=earlier.history()):
                    if isinstance(event, PairReady):
                        files[0].write(msgspec.json.encode(event.pair))
                        done += 1
                    elif isinstance(event, Dropped):
                        files[1].write(msgspec.json.encode(event.item))
                    elif isinstance(event, Failed):
                        files[2].write(msgspec.json.encode(event.item))
                        done += 1
                    elif isinstance(event, Done):
                        parts.append(event.counts)
                        usage = event.usage
                    update(done=done)
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        for f in files:
            f.close()
        if runner is not None:
            summary.runner = runner.describe()
            await runner.aclose()
        else:
            summary.runner = {"runner": "none needed"}
    if interrupted:
        out.print(
            f"generate: interrupted after {done:,} of {job.requested:,} items; "
            "run the same command again to continue"
        )
        return 130
    counts = add_counts(parts)
    # The cells in the spec's order, as /v1/generate lists them.
    order = {(c.task, c.theme): i for i, c in enumerate(job.cells)}
    counts = msgspec.structs.replace(
        counts, cells=sorted(counts.cells, key=lambda c: order[(c.task, c.theme)])
    )
    summary.counts = msgspec.to_builtins(counts)
    summary.extra = {
        "usage": msgspec.to_builtins(usage),
        "spec_sha256": job.spec_sha256,
        "files": {"pairs": str(paths[0]), "dropped": str(paths[1]), "failed": str(paths[2])},
        "resumed": resumed,
    }
    line = (
        f"{counts.returned:,} of {counts.requested:,} pairs returned, {counts.failed:,} failed, "
        f"{sum(c.dropped for c in counts.cells):,} dropped and replaced, {counts.flagged:,} flagged"
        + (f" ({resumed:,} accounted for by an earlier run)" if resumed else "")
    )
    summary.finish(out, line, args.summary)
    return 1 if counts.failed else 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_generate(args))
    except (JobError, QasynthError, OSError) as exc:
        print(f"generate: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "generate",
        help="generate pairs from a spec (as /v1/generate, any size) into JSONL files; resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="the spec as JSON, the body /v1/generate takes")
    p.add_argument("-o", "--output", required=True, help="the pairs, as JSONL")
    p.add_argument("--dropped", metavar="FILE", help="dropped items (default: OUTPUT with .dropped)")
    p.add_argument("--failed", metavar="FILE", help="failed items (default: OUTPUT with .failed)")
    add_common_arguments(p, input_lines=False)
    p.set_defaults(func=run)
