"""The export stage: pairs out to review tools and training formats, reviewed pairs back in.

export(format, pairs, reviews, options) -> Export     one function per format, in EXPORTERS
label_config(locale) -> str                           Label Studio labeling config
parse_export(body) / import_review(tasks, evaluate=…) Label Studio's export back to pairs
push_to_label_studio(export, target, allowed_origins=…) the only network call of this package, to allowed origins
"""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidInput
from service.stages.export.argilla import to_argilla
from service.stages.export.base import Export, Exporter
from service.stages.export.labelstudio import label_config, to_label_studio
from service.stages.export.markdown import safe_markdown
from service.stages.export.push import LabelStudioFailed, check_target, push_to_label_studio
from service.stages.export.review_import import import_review, parse_export
from service.stages.export.training import (
    to_alpaca,
    to_hf_card,
    to_hf_jsonl,
    to_hf_parquet,
    to_openai,
    to_sharegpt,
)
from service.wire.export import FORMATS, ExportOptions, Review
from service.wire.generate import Pair

__all__ = [
    "EXPORTERS",
    "Export",
    "Exporter",
    "LabelStudioFailed",
    "check_target",
    "export",
    "import_review",
    "label_config",
    "parse_export",
    "push_to_label_studio",
    "safe_markdown",
]

EXPORTERS: dict[str, Exporter] = {
    "label-studio": to_label_studio,
    "argilla": to_argilla,
    "openai": to_openai,
    "alpaca": to_alpaca,
    "sharegpt": to_sharegpt,
    "hf-jsonl": to_hf_jsonl,
    "hf-parquet": to_hf_parquet,
    "hf-card": to_hf_card,
}
assert tuple(EXPORTERS) == FORMATS


def export(
    format: str,
    pairs: Sequence[Pair],
    reviews: Sequence[Review] = (),
    options: ExportOptions | None = None,
) -> Export:
    """Run one format; an unknown name is `InvalidInput` listing the known ones."""
    exporter = EXPORTERS.get(format)
    if exporter is None:
        raise InvalidInput(f"unknown format {format!r}; one of: {', '.join(FORMATS)}", field="format")
    return exporter(pairs, reviews, options or ExportOptions())
