"""Hostile HTTP against the real server on loopback: deep and huge JSON, slow and oversized request heads,
idle and surplus connections. The server is configured by `service.server.server_config`, as `serve` is."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import serve

DEEP = 200_000


@contextlib.contextmanager
def server(**settings: object) -> Iterator[str]:
    with serve(create_app(Settings(sandbox="none", **settings))) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture
def url() -> Iterator[str]:
    with server(header_timeout_s=2.0, keep_alive_s=1) as base:
        yield base


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def closed_after(sock: socket.socket, *, dribble: bytes, limit_s: float) -> float | None:
    """Send `dribble` a byte a second; seconds until the server closed the connection, or None if it
    was still open after `limit_s`."""
    started = time.monotonic()
    sock.settimeout(0.05)
    for byte in dribble:
        if time.monotonic() - started > limit_s:
            return None
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return time.monotonic() - started
            if data == b"":
                return time.monotonic() - started
    return None


def health_response(sock: socket.socket) -> bytes:
    """Everything of one /health response (its body is the last thing sent)."""
    sock.settimeout(5)
    data = b""
    while b'{"status":"ok"}' not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


HEAD = (
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-client\r\nX-Pad: "
    + b"a" * 100
    + b"\r\n\r\n"
)


@pytest.mark.parametrize(
    "payload",
    [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP],
    ids=["arrays", "objects"],
)
@pytest.mark.parametrize(
    "path",
    ["/v1/dedup", "/v1/generate", "/v1/evaluate", "/v1/reports", "/v1/exports", "/v1/imports/label-studio"],
)
def test_json_nested_200000_deep_is_a_400_on_every_route(url: str, path: str, payload: bytes) -> None:
    r = httpx.post(url + path, content=payload, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "body" and r.json()["detail"].startswith("the body nests JSON")


def test_deep_json_inside_any_field_is_a_400(url: str) -> None:
    """Label Studio task `data` is any JSON: the decoder's RecursionError is caught where the body is decoded."""
    body = b'[{"data": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}]"
    r = httpx.post(url + "/v1/imports/label-studio", content=body, timeout=30)
    assert r.status_code == 400 and r.json()["detail"].startswith(
        "the body nests JSON arrays or objects too deeply"
    )


def test_a_body_over_the_limit_is_a_413_announced_or_not() -> None:
    with server(max_body_bytes=1_000_000) as url:
        _refuse_big_bodies(url)


def _refuse_big_bodies(url: str) -> None:
    big = json.dumps({"items": [{"id": f"i{i}", "text": "x" * 1000} for i in range(1200)]}).encode()
    r = httpx.post(url + "/v1/dedup", content=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["status"] == 413
    assert (
        r.json()["detail"]
        == "the body is larger than the service's limit of 1,000,000 bytes; split the request"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = httpx.post(
        url + "/v1/dedup", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and r.json()["status"] == 413
    assert httpx.get(url + "/health").status_code == 200


def test_a_client_sending_its_head_a_byte_a_second_is_dropped() -> None:
    """Deadline 2 s: dropped at about 2 s. Deadline 60 s: still connected after 4 s."""
    for deadline, expect_drop in ((2.0, True), (60.0, False)):
        with server(header_timeout_s=deadline) as base:
            with socket.create_connection(address(base)) as sock:
                held = closed_after(sock, dribble=HEAD, limit_s=4.0)
            if expect_drop:
                assert held is not None and 1.5 <= held <= 3.5, held
            else:
                assert held is None


def test_an_idle_connection_is_dropped_at_the_head_deadline(url: str) -> None:
    with socket.create_connection(address(url)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 1.5 <= time.monotonic() - started <= 3.5


def test_the_next_head_on_a_kept_alive_connection_has_a_deadline_too() -> None:
    """keep-alive 30 s: the connection stays for the next request, whose head must still come in time."""
    with server(header_timeout_s=2.0, keep_alive_s=30) as base:
        with socket.create_connection(address(base)) as sock:
            sock.sendall(HEAD)
            assert health_response(sock).startswith(b"HTTP/1.1 200")
            held = closed_after(sock, dribble=HEAD, limit_s=5.0)
        assert held is not None and 1.5 <= held <= 3.5, held


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(url: str) -> None:
    with socket.create_connection(address(url)) as sock:
        sock.sendall(HEAD)
        assert health_response(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started <= 1.8  # keep-alive 1 s, before the 2 s head deadline


def test_a_request_head_over_the_limit_is_refused(url: str) -> None:
    """h11 buffers at most QASYNTH_MAX_HEADER_BYTES (16 KiB) of a head that has not arrived whole."""
    with socket.create_connection(address(url)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        for _ in range(10):  # 20 KB of one header, in pieces
            sock.sendall(b"a" * 2_000)
            time.sleep(0.02)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    with pytest.raises(httpx.TransportError):  # refused and closed while the client still sends
        httpx.get(url + "/health", headers={"X-Big": "a" * 1_000_000})
    assert httpx.get(url + "/health", headers={"X-Fine": "a" * 8_000}).status_code == 200


def test_connections_beyond_the_limit_get_503() -> None:
    with server(max_connections=3, header_timeout_s=30.0) as base:
        idle = [socket.create_connection(address(base)) for _ in range(3)]
        try:
            time.sleep(0.2)
            r = httpx.get(base + "/health")
            assert r.status_code == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(base + "/health").status_code == 200
