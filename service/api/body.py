"""Request bodies as they arrive: the one place a JSON body is decoded before the route sees it.

Litestar decodes a JSON body to plain objects and then converts them to the route's type with
`strict=False`, the coercion meant for query strings: `0` passes for `false` and `"1"` for 1, which
the OpenAPI document says are errors. Here the body is converted strictly, as JSON Schema reads it:
a number with no fractional part (`1.0`) is an integer, nothing else changes type. Litestar then
takes the Struct as it is. Errors keep Litestar's shape, so they leave as the same problem details.

msgspec, like the json module, raises RecursionError on deep nesting, which Litestar's decoder does
not translate: a body nested 200,000 deep would otherwise be a 500.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.utils.empty import value_or_default

from service.errors import InvalidInput

__all__ = ["TOO_DEEP", "QasynthRequest"]

TOO_DEEP = "the body nests JSON arrays or objects too deeply (the limit is about 1,000 levels)"
# "- at `$.a.b`", or "- at `key` in `$.a.b`" when a key of a mapping is wrong.
_PATH = re.compile(r" - at `(?:key` in `)?\$\.?(.*)`$")


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


_DECODER = msgspec.json.Decoder(float_hook=_number)


class QasynthRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        cached = value_or_default(self._connection_state.json, None)
        if cached is not None:
            return cached
        field = self.route_handler.parsed_data_field
        target: Any = field.annotation if field is not None else Any
        body = await self.body()
        try:
            value = msgspec.convert(_DECODER.decode(body or b"null"), target, strict=True)
        except RecursionError:
            raise InvalidInput(TOO_DEEP, field="body") from None
        except msgspec.ValidationError as exc:
            message = str(exc)
            m = _PATH.search(message)
            key = m.group(1) if m else "body"
            raise ValidationException(
                detail=f"Validation failed for {self.method} {self.url.path}",
                extra=[{"key": key or "body", "message": _PATH.sub("", message)}],
            ) from None
        except msgspec.DecodeError as exc:
            raise ValidationException(detail=f"body is not JSON: {exc}") from None
        self._json = self._connection_state.json = value
        return value
