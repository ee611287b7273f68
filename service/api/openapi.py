"""What a route's OpenAPI operation says beyond what Litestar infers from its types.

Litestar documents one media type per status and the body's type as it is. Some routes answer in
several media types (NDJSON on request, HTML reports, export files), and some bodies carry a rule
that a Struct cannot state (at least one of two lists); `documented(...)` adds those to the
operation, so the document and the service agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema

__all__ = ["TEXT", "at_least_one_of", "documented"]

TEXT = Schema(type=OpenAPIType.STRING)
BINARY = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]


def at_least_one_of(*names: str) -> Schema:
    """A JSON body holding at least one non-empty list among `names`."""
    return Schema(
        any_of=[
            Schema(required=[name], properties={name: Schema(type=OpenAPIType.ARRAY, min_items=1)})
            for name in names
        ]
    )


def documented(
    *, body_rule: Schema | None = None, ok_media: dict[str, Schema] | None = None
) -> type[Operation]:
    """An `operation_class=` that adds `body_rule` to the JSON body's schema and `ok_media` to the 200."""

    @dataclass
    class _Documented(Operation):
        def __post_init__(self) -> None:
            if body_rule is not None and self.request_body is not None:
                media = self.request_body.content["application/json"]  # type: ignore[union-attr]
                media.schema = Schema(all_of=[media.schema, body_rule])  # type: ignore[list-item]
            if ok_media and self.responses is not None:
                ok = self.responses["200"]
                for media_type, schema in ok_media.items():
                    ok.content = {**(ok.content or {}), media_type: OpenAPIMediaType(schema=schema)}  # type: ignore[union-attr]

    return _Documented
