"""`python -m service estimate spec.json`: what a /v1/generate spec would cost, without a server.

The same work as POST /v1/estimate (the spec checked the same way, the job's real prompts counted),
printed as a table per step, or as the route's JSON with `--json`. Nothing is sent to a model;
the provider's own token counter is asked when it is configured and reachable. `--observed` takes
an earlier job's result (a /v1/generate response, its stream's `done` line, or its `counts`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec

from service.errors import QasynthError
from service.providers.registry import ProviderRegistry
from service.runtime import Runtime
from service.settings import Settings
from service.wire.estimate import Estimate, Span
from service.wire.generate import Counts, Spec

__all__ = ["load_observed", "register", "render", "run"]


def load_observed(data: bytes) -> Counts:
    """The counts in an earlier job's result: a whole response or `done` event, or the counts alone."""
    value = msgspec.json.decode(data)
    if isinstance(value, dict) and isinstance(value.get("counts"), dict):
        value = value["counts"]
    return msgspec.convert(value, Counts)


def _span(s: Span) -> str:
    return f"{s.low:,} / {s.expected:,} / {s.high:,}"


def render(e: Estimate) -> str:
    """The estimate as a plain-text table (low / expected / high)."""
    lines = [
        f"{e.requested} pairs on {e.provider} {e.model}; tokens by {e.tokenizer}",
        f"prices: {e.price_taken or 'none for this model'} (US dollars; low / expected / high)",
        "",
        f"{'step':14s} {'calls':>22s} {'input tokens':>30s} {'cached':>28s} {'output tokens':>28s} {'cost $':>24s}",
    ]
    for s in e.steps:
        cost = (
            "–"
            if s.cost_usd is None
            else f"{s.cost_usd.low:.4f} / {s.cost_usd.expected:.4f} / {s.cost_usd.high:.4f}"
        )
        lines.append(
            f"{s.step:14s} {_span(s.calls):>22s} {_span(s.input_tokens):>30s} {_span(s.cached_tokens):>28s} "
            f"{_span(s.output_tokens):>28s} {cost:>24s}"
        )
    cost = (
        "–"
        if e.cost_usd is None
        else f"{e.cost_usd.low:.4f} / {e.cost_usd.expected:.4f} / {e.cost_usd.high:.4f}"
    )
    lines.append(
        f"{'total':14s} {_span(e.calls):>22s} {_span(e.input_tokens):>30s} {_span(e.cached_tokens):>28s} "
        f"{_span(e.output_tokens):>28s} {cost:>24s}"
    )
    if e.cost_per_pair_usd is not None:
        p = e.cost_per_pair_usd
        lines.append(f"a pair: ${p.low:.5f} / ${p.expected:.5f} / ${p.high:.5f}")
    lines.append("")
    lines += [f"cache {n.task}/{n.step}: {n.detail}" for n in e.cache]
    lines += [f"observed {task}: {note}" for task, note in e.calibration.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from service.api.estimate import estimate_spec

    try:
        spec = msgspec.json.decode(Path(args.spec).read_bytes(), type=Spec)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"qasynth estimate: {args.spec}: {exc}", file=sys.stderr)
        return 1
    observed = None
    if args.observed:
        try:
            observed = load_observed(Path(args.observed).read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            print(f"qasynth estimate: {args.observed}: {exc}", file=sys.stderr)
            return 1
    settings = Settings.from_env()
    runtime = Runtime(settings=settings, providers=ProviderRegistry(settings))

    async def go() -> Estimate:
        try:
            return await estimate_spec(spec, runtime, observed=observed)
        finally:
            await runtime.aclose()

    try:
        estimate = asyncio.run(go())
    except QasynthError as exc:
        where = f" ({exc.field})" if getattr(exc, "field", None) else ""
        print(f"qasynth estimate: {exc}{where}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(estimate)).decode() + "\n")
    else:
        print(render(estimate))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("estimate", help="the calls, tokens and cost a spec would take (no model called)")
    parser.add_argument("spec", help="a /v1/generate spec as a JSON file")
    parser.add_argument("--json", action="store_true", help="print the /v1/estimate JSON instead of a table")
    parser.add_argument(
        "--observed",
        metavar="RESULT.json",
        help="an earlier job's result on the same model: its calls and reply lengths replace the built-in rates",
    )
    parser.set_defaults(func=run)
