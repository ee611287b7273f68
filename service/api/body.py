"""Request bodies as they arrive: the one place a JSON body is decoded before the route's types see it."""

from __future__ import annotations

from typing import Any

from litestar import Request

from service.errors import InvalidInput

__all__ = ["TOO_DEEP", "QasynthRequest"]

TOO_DEEP = "the body nests JSON arrays or objects too deeply (the limit is about 1,000 levels)"


class QasynthRequest(Request[Any, Any, Any]):
    """msgspec, like the json module, raises RecursionError on deep nesting, and Litestar's decoder
    translates only `DecodeError`: a body nested 200,000 deep would otherwise be a 500."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise InvalidInput(TOO_DEEP, field="body") from None
