"""CLI subcommands; each module's `register(subparsers)` adds one, with `func(args) -> exit code`."""

from service.commands import export, import_review

__all__ = ["export", "import_review"]
