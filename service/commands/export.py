"""`python -m service export --format F pairs.jsonl -o OUT`: the export stage on files.

Input is JSONL (one pair a line, as the NDJSON `pair` events or GenerateResponse.pairs) or a JSON
list of pairs. `-o -` writes to stdout. A count of exported and left-out pairs goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from service.errors import InvalidInput
from service.stages.export import export, label_config
from service.wire.export import FORMATS, ExportOptions, Review
from service.wire.generate import Pair

__all__ = ["read_pairs", "register", "run"]


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from JSONL or a JSON list; a line holding a `pair` event is unwrapped."""
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":
        return msgspec.json.decode(raw, type=list[Pair])
    pairs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = msgspec.json.decode(line)
            if isinstance(item, dict) and item.get("event") == "pair":
                item = item["pair"]
            pairs.append(msgspec.convert(item, type=Pair))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidInput(f"{path}:{n}: {exc}", field=f"line {n}") from None
    return pairs


def run(args: argparse.Namespace) -> int:
    try:
        pairs = read_pairs(Path(args.pairs))
        reviews = (
            msgspec.json.decode(Path(args.reviews).read_bytes(), type=list[Review]) if args.reviews else []
        )
        options = ExportOptions(
            verdicts=args.verdict or None,
            include_flagged=args.include_flagged,
            include_rejected=args.include_rejected,
            system_prompt=args.system_prompt,
            locale=args.locale,
        )
        result = export(args.format, pairs, reviews, options)
    except (InvalidInput, msgspec.ValidationError, msgspec.DecodeError, OSError) as exc:
        print(f"export: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    body = result.body()
    if args.output == "-":
        sys.stdout.buffer.write(body)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(body)
        if args.format == "label-studio":
            config = out.with_name(out.stem + ".config.xml")
            config.write_text(label_config(options.locale or "en"), encoding="utf-8")
    lo = result.left_out
    print(
        f"exported {result.exported} pairs as {args.format}; left out {lo.flagged} flagged, "
        f"{lo.rejected} rejected, {lo.filtered} filtered",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("export", help="write pairs as a review or training file", description=__doc__)
    p.add_argument("pairs", help="pairs as JSONL or a JSON list")
    p.add_argument("--format", "-f", required=True, choices=FORMATS)
    p.add_argument(
        "-o",
        "--output",
        default="-",
        help="output file (default stdout); label-studio also writes <name>.config.xml beside it",
    )
    p.add_argument("--reviews", help="JSON list of reviews (from import-review) to leave rejected pairs out")
    p.add_argument("--verdict", action="append", help="keep only this verdict (repeatable; 'unevaluated')")
    p.add_argument("--include-flagged", action="store_true", help="training formats: keep failed pairs")
    p.add_argument("--include-rejected", action="store_true", help="training formats: keep rejected pairs")
    p.add_argument("--system-prompt", help="openai/sharegpt/hf: a system message before each pair")
    p.add_argument("--locale", choices=("ja", "en"), help="labels of the Label Studio config")
    p.set_defaults(func=run)
