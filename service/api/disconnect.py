"""Work belongs to its request: when the client goes away, what it asked for is cancelled.

Litestar does not cancel a handler whose client disconnected (only streamed responses notice).
`until_disconnect` races the handler's work against the ASGI `http.disconnect` message: the
server sends it the moment the connection drops, and the work is then cancelled at once, so
its snippets leave the R workers (a waiting one never starts, a running one is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request
from litestar.exceptions import HTTPException

__all__ = ["ClientDisconnected", "until_disconnect"]

log = logging.getLogger("qasynth")
T = TypeVar("T")


class ClientDisconnected(HTTPException):
    """The client closed the connection before the answer was ready (nginx's 499; nobody reads it)."""

    status_code = 499
    detail = "the client closed the connection; its work was cancelled"


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    # The body has been read by now, so the next message the server has for this request is
    # its end: `http.disconnect`, when the client goes away or once the response is sent.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """The result of `work`, unless the client disconnects first: then `work` is cancelled and
    `ClientDisconnected` raised."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("%s %s: the client went away; its work was cancelled", request.method, request.url.path)
        raise ClientDisconnected()
    return task.result()
