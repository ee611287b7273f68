"""/v1/exports `options.push`: only to origins the operator allowed, no redirects, no remote body echoed.

The targets are small HTTP servers on loopback that answer as a hostile or misconfigured endpoint
would; the real Label Studio round trip is in tests/integration.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings
from tests.stages.test_export_samples import mixed

SECRET = "INTERNAL-ONLY-7f3a"


class Target:
    """Answers every POST with (status, headers, body) and records the paths it was sent."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.paths: list[tuple[str, str]] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                target.paths.append((self.path, self.headers.get("authorization", "")))
                self.send_response(target.status)
                for k, v in {"Content-Type": "application/json", **target.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(target.body)))
                self.end_headers()
                self.wfile.write(target.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    made: list[Target] = []
    yield made
    for t in made:
        t.close()


def target(targets: list[Target], status: int, body: object, headers: dict[str, str] | None = None) -> Target:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    t = Target(status, raw, headers)
    targets.append(t)
    return t


def push(allowed: tuple[str, ...], url: str, token: str = "0" * 40) -> dict:
    with TestClient(create_app(Settings(sandbox="none", label_studio_urls=allowed))) as client:
        r = client.post(
            "/v1/exports",
            json={
                "format": "label-studio",
                "pairs": json.loads(msgspec.json.encode(mixed())),
                "options": {"push": {"url": url, "token": token, "project_id": 7}},
            },
        )
    return {"status": r.status_code, **r.json()}


def test_a_push_to_an_allowed_origin_imports_the_tasks(targets: list[Target]) -> None:
    ls = target(targets, 201, {"task_count": 6, "prediction_count": 6})
    out = push((ls.url,), ls.url + "/")
    assert out["status"] == 200 and out["task_count"] == 6 and out["exported"] == 6
    assert ls.paths == [("/api/projects/7/import", "Token " + "0" * 40)]


def test_pushing_is_off_when_the_operator_allowed_no_origin(targets: list[Target]) -> None:
    ls = target(targets, 201, {"task_count": 6})
    out = push((), ls.url)
    assert out["status"] == 403 and out["field"] == "options.push.url"
    assert "QASYNTH_LABEL_STUDIO_URLS" in out["detail"]
    assert ls.paths == []


@pytest.mark.parametrize(
    "url",
    [
        "{other}",
        "{allowed}.evil.example",
        "http://user:pass@{host}",
        "{allowed}/?next=http://169.254.169.254/",
        "https://{host}",  # another scheme is another origin
    ],
)
def test_a_push_anywhere_else_is_403_and_sends_nothing(targets: list[Target], url: str) -> None:
    allowed, other = target(targets, 201, {"task_count": 1}), target(targets, 201, {"task_count": 1})
    host = allowed.url.removeprefix("http://")
    out = push((allowed.url,), url.format(allowed=allowed.url, other=other.url, host=host))
    assert out["status"] == 403 and out["field"] == "options.push.url", out
    assert allowed.paths == [] and other.paths == []


def test_redirects_are_not_followed(targets: list[Target]) -> None:
    inner = target(targets, 201, {"task_count": 6})
    ls = target(targets, 307, b"", {"Location": inner.url + "/api/projects/7/import"})
    out = push((ls.url, inner.url), ls.url)
    assert out["status"] == 502 and "redirects are not followed" in out["detail"]
    assert len(ls.paths) == 1 and inner.paths == []


def test_a_refusal_repeats_no_remote_body(targets: list[Target]) -> None:
    page = f"<html><body><h1>Admin console</h1><pre>{SECRET}</pre>{'x' * 10_000}</body></html>".encode()
    ls = target(targets, 500, page, {"Content-Type": "text/html"})
    out = push((ls.url,), ls.url)
    assert out["status"] == 502 and SECRET not in json.dumps(out)
    assert out["detail"] == "Label Studio answered 500 to the import: a body that is not JSON"

    ls = target(targets, 401, {"detail": "<script>alert(1)</script>\n" + "y" * 5_000, "other": SECRET})
    out = push((ls.url,), ls.url)
    assert out["status"] == 502 and SECRET not in json.dumps(out)
    assert out["detail"].startswith('Label Studio answered 401 to the import: "<script>alert(1)</script>\\n')
    assert len(out["detail"]) < 300 and out["detail"].endswith('…"')
