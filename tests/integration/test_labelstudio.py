"""The review round trip against a real Label Studio: config, push, annotate, export, import back.

Also opens a task in headless Chromium (DevTools protocol over a pipe) to check that the answers'
HTML stays inert in the reviewer's browser, and saves a screenshot of the task view when
QASYNTH_SCREENSHOT_TO names a file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from service.stages.export import label_config
from tests.integration.conftest import LabelStudio
from tests.stages.test_export_samples import XSS_ANSWER, mixed

pytestmark = pytest.mark.slow

FIXED = "Use `mean(x)`.\n\n```r\nx <- c(1, 2)\nprint(mean(x))\n```"


def _evaluator_available() -> bool:
    try:
        import service.stages.evaluate as ev

        return hasattr(ev, "evaluate_answer")
    except ImportError:
        return False


def _controls(config: str) -> set[tuple[str, str, str]]:
    """(name, toName, result type) of every control tag in a labeling config."""
    types = {"Choices": "choices", "TextArea": "textarea"}
    root = ET.fromstring(config)
    return {
        (el.get("name", ""), el.get("toName", ""), types[el.tag]) for el in root.iter() if el.tag in types
    }


def _result(name: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"from_name": name, "to_name": "question", "type": kind, "value": value, "origin": "manual"}


def _decide(decision: str, answer: str | None = None, comment: str = "") -> list[dict[str, Any]]:
    results = [_result("decision", "choices", {"choices": [decision]})]
    if answer is not None:
        results.append(_result("answer", "textarea", {"text": [answer]}))
    if comment:
        results.append(_result("comment", "textarea", {"text": [comment]}))
    return results


@pytest.fixture
def project(label_studio: LabelStudio) -> tuple[int, str]:
    config = label_config("en")
    with label_studio.client() as ls:
        for locale in ("en", "ja"):
            check = ls.post("/api/projects/validate/", json={"label_config": label_config(locale)})
            assert check.status_code in (200, 204), check.text
        created = ls.post("/api/projects", json={"title": "R answers review", "label_config": config})
        assert created.status_code == 201, created.text
        return created.json()["id"], config


async def test_review_round_trip(label_studio: LabelStudio, project: tuple[int, str]) -> None:
    project_id, config = project
    pairs = mixed()
    app = create_app(Settings(sandbox="bwrap", label_studio_urls=(label_studio.url,)))
    async with AsyncTestClient(app) as client:
        target = {"url": label_studio.url, "token": label_studio.token, "project_id": project_id}
        pushed = await client.post(
            "/v1/exports",
            json={"format": "label-studio", "pairs": json.loads(_encode(pairs)), "options": {"push": target}},
        )
        assert pushed.status_code == 200, pushed.text
        assert pushed.json()["task_count"] == len(pairs)
        assert pushed.json()["prediction_count"] == len(pairs)

        bad_token = {**target, "token": "0" * 40}
        refused = await client.post(
            "/v1/exports",
            json={
                "format": "label-studio",
                "pairs": json.loads(_encode(pairs[:1])),
                "options": {"push": bad_token},
            },
        )
        assert refused.status_code == 502
        assert refused.headers["content-type"].startswith("application/problem+json")

        with label_studio.client() as ls:
            listed = ls.get("/api/tasks", params={"project": project_id, "page_size": 100}).json()
            tasks = listed["tasks"]
            assert len(tasks) == len(pairs)
            by_pair = {t["data"]["pair_id"]: t["id"] for t in tasks}
            assert set(by_pair) == {p.id for p in pairs}

            # Label Studio imports predictions without checking them against the config: we do.
            controls = _controls(config)
            predictions = 0
            for task_id in by_pair.values():
                for prediction in ls.get("/api/predictions/", params={"task": task_id}).json():
                    predictions += 1
                    assert prediction["model_version"] == "qasynth"
                    for item in prediction["result"]:
                        assert (item["from_name"], item["to_name"], item["type"]) in controls
            assert predictions == len(pairs)

            reviews = {
                "p-ok-1": {"result": _decide("accept", answer=pairs[0].answer)},
                "p-bad-1": {"result": _decide("needs-fix", answer=FIXED, comment="y was never defined")},
                "p-ok-2": {"result": _decide("reject", comment="does not answer the question")},
                "p-none": {"result": [], "was_cancelled": True},
                "p-ja": {"result": _decide("needs-fix", comment="英語が混ざっている")},
            }
            for pair_id, annotation in reviews.items():
                made = ls.post(f"/api/tasks/{by_pair[pair_id]}/annotations/", json=annotation)
                assert made.status_code == 201, made.text
            exported = ls.get(
                f"/api/projects/{project_id}/export",
                params={"exportType": "JSON", "download_all_tasks": "true"},
            )
            assert exported.status_code == 200, exported.text
            assert len(exported.json()) == len(pairs)

        evaluate = _evaluator_available()
        back = await client.post(
            "/v1/imports/label-studio",
            params={"evaluate": str(evaluate).lower()},
            content=exported.content,
            headers={"content-type": "application/json"},
        )
        assert back.status_code == 200, back.text
        result = back.json()

    assert [p["id"] for p in result["accepted"]] == ["p-ok-1"]
    (fixed,) = result["corrected"]
    assert fixed["pair"]["id"] == "p-bad-1" and fixed["pair"]["answer"] == FIXED
    assert fixed["original_evaluation"]["verdict"] == "runtime_error"
    assert fixed["comment"] == "y was never defined"
    if evaluate:
        assert fixed["pair"]["evaluation"]["verdict"] == "passed"
        assert "1.5" in fixed["pair"]["evaluation"]["stdout"]
    (rejected,) = result["rejected"]
    assert rejected["pair"]["id"] == "p-ok-2" and rejected["comment"] == "does not answer the question"
    skipped = {s["pair_id"]: s["reason"] for s in result["skipped"]}
    assert skipped == {"p-none": "cancelled", "p-xss": "unannotated", "p-ja": "unfixed"}
    assert result["counts"] == {"tasks": 6, "accepted": 1, "corrected": 1, "rejected": 1, "skipped": 3}


def _encode(pairs: list[Any]) -> bytes:
    return msgspec.json.encode(pairs)


# Headless Chromium, driven over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-separated JSON).


class _Chromium:
    def __init__(self, profile: Path) -> None:
        exe = shutil.which("chromium") or "/usr/bin/chromium"
        self._to_r, self._to_w = os.pipe()
        self._from_r, self._from_w = os.pipe()
        args = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--window-size=1400,1000", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            pass_fds=(3, 4),
            preexec_fn=self._fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(self._to_r)
        os.close(self._from_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def _fds(self) -> None:
        os.dup2(self._to_r, 3)
        os.dup2(self._from_w, 4)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from_r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get(
            "value"
        )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_w)
        os.close(self._from_r)


def _session_cookie(ls: LabelStudio) -> dict[str, str]:
    with httpx.Client(base_url=ls.url, follow_redirects=False, timeout=30) as web:
        web.get("/user/login/")
        csrf = web.cookies["csrftoken"]
        web.post(
            "/user/login/",
            data={"email": ls.username, "password": ls.password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{ls.url}/user/login/"},
        )
        return {name: value for name, value in web.cookies.items()}


def test_answers_stay_inert_in_the_reviewers_browser(
    label_studio: LabelStudio, project: tuple[int, str], tmp_path: Path
) -> None:
    project_id, _ = project
    from service.stages.export import export
    from tests.stages.test_export_samples import pair

    shown = pair(
        "p-shown",
        verdict="runtime_error",
        flagged=True,
        question="How do I fit a linear model and print its coefficients?",
        answer=XSS_ANSWER,
    )
    with label_studio.client() as ls:
        imported = ls.post(
            f"/api/projects/{project_id}/import",
            content=export("label-studio", [shown]).body(),
            headers={"Content-Type": "application/json"},
        )
        assert imported.status_code == 201, imported.text
        (task,) = ls.get("/api/tasks", params={"project": project_id}).json()["tasks"]
    cookies = _session_cookie(label_studio)
    assert "sessionid" in cookies

    browser = _Chromium(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        browser.session = browser.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True
        )["sessionId"]
        browser.send("Network.enable")
        for name, value in cookies.items():
            browser.send("Network.setCookie", {"name": name, "value": value, "url": label_studio.url})
        browser.send("Page.enable")
        browser.send(
            "Page.navigate", {"url": f"{label_studio.url}/projects/{project_id}/data?task={task['id']}"}
        )
        deadline = time.monotonic() + 90
        while not browser.evaluate("document.body && document.body.innerText.includes('lm(y ~ x)')"):
            assert time.monotonic() < deadline, browser.evaluate("document.body && document.body.innerText")
            time.sleep(1)
        time.sleep(2)  # let images fail and handlers (if any) run
        assert "pwned" not in browser.evaluate("document.title")
        assert (
            browser.evaluate("document.querySelectorAll('img[onerror], a[href^=\"javascript\"]').length") == 0
        )
        text = browser.evaluate("document.body.innerText")
        assert "<script>document.title='pwned-script'</script>" in text  # shown as text, not run
        assert "x <- c(1, 2, 3)" in text
        shot = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
        png = base64.b64decode(shot)
        assert png.startswith(b"\x89PNG")
        if dest := os.environ.get("QASYNTH_SCREENSHOT_TO"):
            Path(dest).write_bytes(png)
    finally:
        browser.close()
