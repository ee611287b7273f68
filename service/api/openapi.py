"""What a route's OpenAPI operation says beyond what Litestar infers from its types.

Litestar documents one media type per status and the body's type as it is. Some routes answer in
several media types (NDJSON on request, HTML reports, export files), and some bodies carry a rule
that a Struct cannot state (at least one of two lists); `documented(...)` adds those to the
operation, so the document and the service agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

__all__ = ["BINARY", "TEXT", "ClosedStructs", "at_least_one_of", "documented", "only_with"]

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


def only_with(field: str, value: str, *, option: str) -> Schema:
    """`options.<option>` may be set (not null) only when `field` is `value`."""
    return Schema(
        any_of=[
            Schema(properties={field: Schema(const=value)}),
            Schema(properties={"options": Schema(properties={option: Schema(type=OpenAPIType.NULL)})}),
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


class ClosedStructs(StructSchemaPlugin):
    """Litestar's Struct schemas, plus `additionalProperties: false` where the Struct forbids unknown
    fields (every wire type but Label Studio's own export): the document then says what msgspec does."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if info.forbid_unknown_fields:  # type: ignore[union-attr]
            schema.additional_properties = False
        for field in info.fields:  # type: ignore[union-attr]
            prop = (schema.properties or {}).get(field.encode_name)
            if isinstance(prop, Schema):
                _numeric_bounds(field.type, prop)
                _literal_keys(field.type, prop)
        return schema


def _literal_keys(type_: msgspec.inspect.Type, prop: Schema) -> None:
    """Litestar leaves a mapping's keys unstated; a `dict[Literal[...], ...]` accepts only those keys."""
    if not isinstance(type_, msgspec.inspect.DictType):
        return
    if isinstance(type_.key_type, msgspec.inspect.LiteralType):
        prop.property_names = Schema(type=OpenAPIType.STRING, enum=list(type_.key_type.values))
    if isinstance(prop.additional_properties, Schema):
        _literal_keys(type_.value_type, prop.additional_properties)


_BOUNDS = (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusive_minimum"), ("lt", "exclusive_maximum"))


def _numeric_bounds(type_: msgspec.inspect.Type, prop: Schema) -> None:
    """Litestar drops a bound of 0 on an optional number (`ge=0` is falsy where it copies them)."""
    types = type_.types if isinstance(type_, msgspec.inspect.UnionType) else (type_,)
    for t in types:
        if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            for attr, key in _BOUNDS:
                value = getattr(t, attr)
                if value is not None and getattr(prop, key) is None:
                    setattr(prop, key, value)
