"""Command line: `python -m service [COMMAND]`, one of serve, demo, prepare-model, openapi, export,
import-review, keygen, generate, dedup, evaluate, report.

`serve` (the default) runs the HTTP service. `demo` starts it on a free loopback
port, sends a small spec and prints the pairs as they are produced, which is the
quickest way to see the whole pipeline run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from service.server import serve_in_background

__all__ = ["main", "serve_in_background"]


def _openapi(args: argparse.Namespace) -> int:
    from service.app import openapi_json

    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_json(), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    """Assemble and verify the packaged model now, so the first request does not wait for it."""
    from service.providers import _gguf
    from service.settings import Settings

    settings = Settings.from_env()
    name = settings.local_model_path
    if name is not None and name not in _gguf.CANDIDATES:
        print(f"QASYNTH_LOCAL_MODEL is a file ({name}); nothing to assemble", file=sys.stderr)
        return 0
    packaged = _gguf.CANDIDATES[name] if name else _gguf.DEFAULT_MODEL
    if _gguf.find_parts(packaged) is None and not _gguf.is_cached(packaged):
        print(f"{packaged.model_id} is not installed: {packaged.install_hint}", file=sys.stderr)
        return 1
    model = _gguf.ensure_model(packaged)
    print(f"{model.model_id}: {model.path} ({model.size:,} bytes, sha256 {model.sha256[:12]}… verified)")
    return 0


def _print_pair(pair: dict, out: object) -> None:
    evaluation = pair.get("evaluation") or {}
    verdict = evaluation.get("verdict", "not evaluated")
    prov = pair.get("provenance") or {}
    answer_prov = prov.get("answer", {})
    print("=" * 78, file=out)  # type: ignore[arg-type]
    print(
        f"{pair['task']} × {pair['theme']}  id={pair['id']}  verdict={verdict}  "
        f"model={answer_prov.get('provider')}/{answer_prov.get('model')}",
        file=out,  # type: ignore[arg-type]
    )
    if evaluation.get("message"):
        print(f"evaluator: {evaluation['message']}", file=out)  # type: ignore[arg-type]
    print(f"--- question\n{pair['question']}\n--- answer\n{pair['answer']}", file=out)  # type: ignore[arg-type]


def _demo(args: argparse.Namespace) -> int:
    import logging

    import httpx

    # The progress lines are the demo's log; one line per model call would drown them.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)

    spec = {
        "language": "r",
        "locale": args.locale,
        "tasks": [{"id": t} for t in args.tasks.split(",")],
        "themes": [{"id": t} for t in args.themes.split(",")],
        "per_cell": args.per_cell,
        "model": {"questions_per_call": 1, "temperature": 0.2, "max_tokens": args.max_tokens},
        "evaluation": {"enabled": True, "on_failure": "flag"},
    }
    if args.provider:
        spec["model"]["provider"] = args.provider  # type: ignore[index]
    with contextlib.ExitStack() as stack:
        if args.url:
            url = args.url
        else:
            from service.app import create_app
            from service.settings import Settings

            url = stack.enter_context(serve_in_background(create_app(Settings.from_env())))
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        ready = httpx.get(f"{url}/ready", headers=headers, timeout=120).json()
        print(
            f"qasynth at {url}: default provider {ready['default_provider']}, "
            f"sandbox {ready['sandbox'].get('mode', '?')} ({ready['sandbox'].get('status')})",
            file=sys.stderr,
        )
        started = time.perf_counter()
        with httpx.stream(
            "POST",
            f"{url}/v1/generate",
            json=spec,
            headers={**headers, "Accept": "application/x-ndjson"},
            timeout=httpx.Timeout(10, read=1800),
        ) as response:
            if response.status_code != 200:
                print(response.read().decode(), file=sys.stderr)
                return 1
            for line in response.iter_lines():
                event = json.loads(line)
                kind = event["event"]
                elapsed = time.perf_counter() - started
                if kind == "pair":
                    _print_pair(event["pair"], sys.stdout)
                elif kind == "done":
                    counts = event["counts"]
                    print("=" * 78)
                    print(
                        f"done in {event['elapsed_s']:.0f} s: {counts['returned']} of {counts['requested']} "
                        f"pairs returned, {counts['flagged']} flagged by the evaluator, "
                        f"{counts['questions_dropped'] + counts['answers_dropped']} near-duplicates dropped, "
                        f"{counts['failed']} failed; tokens in/out/cached "
                        f"{event['usage']['input_tokens']}/{event['usage']['output_tokens']}/"
                        f"{event['usage']['cached_tokens']}"
                    )
                elif kind in ("dropped", "failed"):
                    item = event["item"]
                    print(f"[{elapsed:6.1f}s] {kind}: {item['stage']} {item['reason']}", file=sys.stderr)
                else:
                    print(f"[{elapsed:6.1f}s] {kind}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")

    from service.commands import serve

    serve.register(sub)

    demo = sub.add_parser("demo", help="start the service, generate a small grid, print the pairs")
    demo.add_argument("--url", help="use a running service instead of starting one")
    demo.add_argument(
        "--api-key", default=os.environ.get("QASYNTH_API_KEY"), help="the key to send (QASYNTH_API_KEY)"
    )
    demo.add_argument("--locale", default="en", choices=["en", "ja"])
    demo.add_argument("--tasks", default="explain,generate")
    demo.add_argument("--themes", default="mean-variance,hypothesis-tests")
    demo.add_argument("--per-cell", type=int, default=1)
    demo.add_argument("--max-tokens", type=int, default=512)
    demo.add_argument("--provider", choices=["openai", "anthropic", "local"])
    demo.set_defaults(func=_demo)

    prepare = sub.add_parser("prepare-model", help="assemble and verify the embedded model's weights")
    prepare.set_defaults(func=_prepare_model)

    schema = sub.add_parser("openapi", help="write the OpenAPI schema generated from the app")
    schema.add_argument("-o", "--output", default="openapi/openapi.json")
    schema.set_defaults(func=_openapi)

    from service.commands import dedup, estimate, evaluate, export, generate, import_review, keygen, report

    estimate.register(sub)
    export.register(sub)
    import_review.register(sub)
    keygen.register(sub)
    generate.register(sub)
    dedup.register(sub)
    evaluate.register(sub)
    report.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    from service.settings import SettingsError

    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"qasynth: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
