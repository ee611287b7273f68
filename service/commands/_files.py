"""What the file jobs share: records streamed from JSONL or Parquet, bad lines, resumable output,
the progress bar and the summary.

A job reads its input one record at a time (Parquet a row group batch at a time), so memory is
bounded by what is in flight, not by the file. A line that is not a valid record is reported
with its number and counted, never skipped in silence. Output is JSONL written in input order;
`Resume` reads what an earlier run already wrote so a rerun continues after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = [
    "MAX_SHOWN",
    "JobError",
    "Output",
    "Problems",
    "Record",
    "add_common_arguments",
    "console",
    "progress_bar",
    "read_records",
    "resume_records",
]

MAX_SHOWN = 100  # bad lines printed on stderr; --errors lists them all


class JobError(Exception):
    """A job cannot start or go on (a missing file, output that belongs to other input)."""


def console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False, markup=False)


@dataclass(frozen=True, slots=True)
class Record:
    """One input record: its line (JSONL) or row (Parquet) number, the decoded value or why it could not be."""

    where: str
    line: int
    value: Any = None
    raw: bytes = b""
    error: str | None = None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def read_records(path: Path, advance: Callable[[int], None] | None = None) -> Iterator[Record]:
    """Every record of `path` in order; `advance(n)` is told the bytes (JSONL) or rows (Parquet) read."""
    if not path.is_file():
        raise JobError(f"{path}: no such file")
    if _is_parquet(path):
        yield from _parquet(path, advance)
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if advance is not None:
                advance(len(line))
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                yield Record(f"{path}:{n}", n, msgspec.json.decode(raw), raw)
            except msgspec.DecodeError as exc:
                yield Record(f"{path}:{n}", n, raw=raw, error=f"not JSON: {exc}")


def _parquet(path: Path, advance: Callable[[int], None] | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file it cannot read
        raise JobError(f"{path}: not a Parquet file ({exc})") from None
    n = 0
    for batch in file.iter_batches(batch_size=4096):
        rows = batch.to_pylist()
        if advance is not None:
            advance(len(rows))
        for row in rows:
            n += 1
            try:
                raw = msgspec.json.encode(row)
            except (TypeError, msgspec.EncodeError) as exc:
                yield Record(f"{path} row {n}", n, error=f"a value JSON cannot hold: {exc}")
                continue
            yield Record(f"{path} row {n}", n, row, raw)


def input_size(path: Path) -> int:
    """The progress bar's total: bytes of JSONL, rows of Parquet."""
    if not path.is_file():
        raise JobError(f"{path}: no such file")
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return path.stat().st_size


class Problems:
    """Bad lines: each printed (up to MAX_SHOWN) and, with --errors, every one written as JSONL."""

    def __init__(self, out: Console, errors_path: str | None) -> None:
        self.out = out
        self.count = 0
        self._file: IO[bytes] | None = open(errors_path, "wb") if errors_path else None  # noqa: SIM115

    def bad(self, record: Record, error: str | None = None) -> None:
        self.count += 1
        message = error or record.error or "bad record"
        if self.count <= MAX_SHOWN:
            self.out.print(Text.assemble(("bad line", "red"), f" {record.where}: {message}"))
        elif self.count == MAX_SHOWN + 1:
            more = (
                " (all of them are in the --errors file)" if self._file else "; --errors FILE lists them all"
            )
            self.out.print(f"more bad lines are not shown{more}")
        if self._file is not None:
            self._file.write(
                msgspec.json.encode({"where": record.where, "line": record.line, "error": message})
            )
            self._file.write(b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def resume_records(path: Path, kind: type | None = None) -> Iterator[Any]:
    """The results an earlier run wrote, in order: JSON objects with an id, or records of the wire
    type `kind`. A last line cut off by a crash is removed from the file, so appending continues
    cleanly; any other line that is not such a result is an error."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data_end = 0
        for n, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                fh.truncate(data_end)
                return
            try:
                value = msgspec.json.decode(line) if kind is None else msgspec.json.decode(line, type=kind)
            except (msgspec.DecodeError, msgspec.ValidationError):
                value = None
            if value is None or (kind is None and (not isinstance(value, dict) or "id" not in value)):
                raise JobError(f"{path}:{n} is not a result of this job; choose another -o or pass --restart")
            data_end += len(line)
            yield value


class Output:
    """JSONL appended in order, flushed every `flush_every` lines and on close."""

    def __init__(self, path: Path, *, append: bool, flush_every: int = 1000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab" if append else "wb")
        self._pending = 0
        self.flush_every = flush_every
        self.written = 0

    def write(self, line: bytes) -> None:
        self._fh.write(line)
        self._fh.write(b"\n")
        self.written += 1
        self._pending += 1
        if self._pending >= self.flush_every:
            self._fh.flush()
            self._pending = 0

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def progress_bar(
    out: Console, path: Path | None, *, label: str, enabled: bool, total: int | None = None
) -> Iterator[Callable[..., None]]:
    """A rich progress bar over the input (bytes or rows), or up to `total`; yields
    `update(advance=0, done=None)`."""
    progress = Progress(
        TextColumn(f"{label} {{task.fields[done]:,}} done"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out,
        disable=not enabled,
        transient=False,
    )
    task = progress.add_task(label, total=input_size(path) if path is not None else total, done=0)

    def update(advance: int = 0, done: int | None = None) -> None:
        if done is None:
            progress.advance(task, advance)
        else:
            progress.update(task, advance=advance, done=done)

    with progress:
        yield update


@dataclass
class Summary:
    """The numbers a job prints at its end, and writes with --summary."""

    job: str
    counts: dict[str, int] = field(default_factory=dict)
    runner: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def finish(self, out: Console, line: str, path: str | None) -> None:
        elapsed = round(time.perf_counter() - self.started, 3)
        out.print(f"{self.job}: {line} in {elapsed:,.1f} s ({self.runner.get('runner', '?')})")
        if path:
            doc = {
                "job": self.job,
                "elapsed_s": elapsed,
                "counts": self.counts,
                "runner": self.runner,
                **self.extra,
            }
            Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def add_common_arguments(p: argparse.ArgumentParser, *, input_lines: bool = True) -> None:
    p.add_argument(
        "--ray",
        metavar="auto|local|ADDRESS",
        help="run on a Ray cluster: auto joins this machine's cluster or starts one, local always "
        "starts one for the job, ADDRESS joins that cluster (needs pip install 'qasynth[ray]')",
    )
    p.add_argument("--restart", action="store_true", help="start over instead of continuing the output file")
    if input_lines:
        p.add_argument("--errors", metavar="FILE", help="write every bad input line here as JSONL")
    p.add_argument("--summary", metavar="FILE", help="also write the end summary here as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
