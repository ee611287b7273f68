"""A real Label Studio on loopback, from its own venv (scripts/install-labelstudio.sh), one per session."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LS_BIN = Path(os.environ.get("LABEL_STUDIO_VENV", ROOT / ".venv-labelstudio")) / "bin" / "label-studio"
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LabelStudio:
    url: str
    token: str
    username: str
    password: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    # Label Studio also reads unprefixed USERNAME/PASSWORD/HOST/PORT: keep them out of its sight.
    env = {k: v for k, v in os.environ.items() if k not in {"USERNAME", "PASSWORD", "HOST", "PORT"}}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        DJANGO_DB="sqlite",
    )
    return env


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    if not LS_BIN.exists():
        pytest.fail(f"{LS_BIN} missing: run scripts/install-labelstudio.sh")
    data_dir = tmp_path_factory.mktemp("label-studio")
    username, password, token = "reviewer@example.com", secrets.token_hex(12), secrets.token_hex(20)
    port = _free_port()
    log = data_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=_env(data_dir, username, password, token),
            cwd=data_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).json().get("status") == "UP":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio not up after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        # A busy port silently becomes port+1: make sure the server answering is ours and authenticates us.
        who = httpx.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=10
        )
        assert who.status_code == 200, who.text
        assert who.json()["email"] == username
        yield LabelStudio(url=url, token=token, username=username, password=password, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
