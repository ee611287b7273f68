"""The HTTP server: uvicorn, configured in one place for `serve` and for the tests' background server.

uvicorn bounds the request head's size (h11's `max_incomplete_event_size`), idle keep-alive time and
connections at once (`limit_concurrency`, answered 503), but it has no deadline for reading a request
head: a client that sends a byte a second holds its connection for as long as it likes, and one that
connects and sends nothing is never dropped. `HeadTimeoutH11Protocol` adds that deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings, SettingsError

if TYPE_CHECKING:
    import asyncio

    import uvicorn
    from litestar import Litestar

__all__ = ["HeadTimeoutH11Protocol", "check_exposure", "is_loopback", "serve_in_background", "server_config"]

log = logging.getLogger("qasynth")


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head.

    The clock starts when the connection opens and again when a response has been sent (the next
    request's head); it stops once h11 has a whole request line and headers. A client still short of
    one when it rings is disconnected. Bodies are not timed here: the app reads them.
    """

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        self._head_deadline = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("dropped %s: no whole request head within %.0f s", self.client, self._head_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)


def server_config(app: Litestar, *, host: str, port: int, log_level: str) -> uvicorn.Config:
    """Every limit the server itself enforces, from the settings the app was made with."""
    import uvicorn

    settings: Settings = app.state.settings

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=partial(HeadTimeoutH11Protocol, head_timeout_s=settings.header_timeout_s),  # type: ignore[arg-type]
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        ws="none",
        lifespan="on",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to serve a non-loopback address with no API keys, unless the operator said so."""
    if settings.api_keys or settings.allow_no_auth or is_loopback(host):
        return
    raise SettingsError(
        f"refusing to serve {host} with no API keys: anyone who reaches the port could run R and spend the "
        "providers' credit. Configure keys (QASYNTH_API_KEYS or QASYNTH_API_KEYS_FILE; `python -m service "
        "keygen` makes one), or pass --insecure-no-auth (QASYNTH_ALLOW_NO_AUTH=1) if something in front "
        "of the service does the authentication."
    )


@contextlib.contextmanager
def serve_in_background(app: Litestar) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread, configured as `serve` would; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = server_config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service failed to start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
