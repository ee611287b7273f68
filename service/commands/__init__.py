"""CLI subcommands; each module's `register(subparsers)` adds one, with `func(args) -> exit code`."""

from service.commands import dedup, evaluate, export, import_review, report

__all__ = ["dedup", "evaluate", "export", "import_review", "report"]
