"""POST /v1/evaluate: through the app with a scripted runner, and once end to end on real R in bwrap."""

from __future__ import annotations

import shutil

import pytest
from litestar.testing import AsyncTestClient

from evaluator import FakeRunner, RunResult
from service.app import create_app
from service.settings import Settings
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer


def app_with(runner: FakeRunner | None = None, **settings: object):  # type: ignore[no-untyped-def]
    return create_app(Settings(**settings), runner=runner)  # type: ignore[arg-type]


async def test_pairs_and_snippets_with_verdicts_and_evidence() -> None:
    def run(code: str) -> RunResult:
        if "stop" in code:
            return RunResult(verdict="runtime_error", message="boom", failing_call='stop("boom")', line=2)
        return RunResult(verdict="passed", stdout="[1] 3\n", stdout_bytes=6, duration_ms=4.0)

    runner = FakeRunner(run)
    body = {
        "pairs": [
            {"id": "bad", "task": "fix", "theme": "t", "question": "q?",
             "answer": "Fixed:\n```r\nx <- 1\nstop('boom')\n```"},
            {"id": "prose", "task": "explain", "theme": "t", "question": "q?", "answer": "It computes a mean."},
        ],
        "snippets": [{"id": "ok", "code": "print(1 + 2)"}],
    }  # fmt: skip
    async with AsyncTestClient(app_with(runner)) as client:
        response = await client.post("/v1/evaluate", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [p["id"] for p in data["pairs"]] == ["bad", "prose"]
    bad, prose = (p["evaluation"] for p in data["pairs"])
    ok = data["snippets"][0]["evaluation"]
    assert ok["verdict"] == "passed" and ok["stdout"] == "[1] 3\n" and not ok["flagged"]
    assert bad["verdict"] == "runtime_error" and bad["flagged"]
    assert bad["message"] == "boom" and bad["line"] == 2 and bad["answer_line"] == 4
    assert prose["verdict"] == "no_code" and not prose["flagged"]
    assert data["counts"] == {"no_code": 1, "passed": 1, "runtime_error": 1} and data["flagged"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "pairs"),
        ({"pairs": [], "snippets": []}, "pairs"),
        ({"snippets": [{"id": "a"}]}, "snippets[0]"),
        ({"snippets": [{"id": "a", "code": "1", "limits": {}}]}, "snippets[0]"),
        ({"snippets": [{"id": "bad id!", "code": "1"}]}, "snippets[0].id"),
        ({"pairs": [{"id": "a", "answer": "x"}]}, "pairs[0]"),
    ],
)
async def test_bad_requests_name_the_field(body: dict[str, object], field: str) -> None:
    runner = FakeRunner()
    async with AsyncTestClient(app_with(runner)) as client:
        response = await client.post("/v1/evaluate", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field
    assert runner.calls == []


async def test_sandbox_unavailable_is_a_503_that_says_why() -> None:
    async with AsyncTestClient(app_with(sandbox="bwrap")) as client:
        import evaluator._sandbox as sandbox_module

        original = sandbox_module.shutil.which
        sandbox_module.shutil.which = lambda name: None  # type: ignore[assignment]
        try:
            response = await client.post("/v1/evaluate", json={"snippets": [{"id": "a", "code": "1"}]})
        finally:
            sandbox_module.shutil.which = original
    assert response.status_code == 503, response.text
    problem = response.json()
    assert problem["title"] == "R sandbox unavailable"
    assert "apt-get install r-base-core bubblewrap" in problem["detail"]


@pytest.mark.sandbox
@pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("R") is None, reason="needs R and bubblewrap"
)
async def test_end_to_end_in_the_real_sandbox() -> None:
    answer = "```r\nx <- c(5.1, 4.9, 5.3)\nprint(t.test(x, mu = 5)$p.value > 0)\n```"
    body = {
        "pairs": [{"id": "t", "task": "generate", "theme": "tests", "question": "t-test?", "answer": answer}],
        "snippets": [
            {"id": "e", "code": "x <- 1\ny <- log(-x)\nstop('nope')"},
            {"id": "p", "code": "x <- (1 +"},
        ],
    }
    async with AsyncTestClient(app_with(sandbox="bwrap", eval_workers=2)) as client:
        response = await client.post("/v1/evaluate", json=body)
        ready = await client.get("/ready")
    assert response.status_code == 200, response.text
    data = response.json()
    t = data["pairs"][0]["evaluation"]
    e, p = (r["evaluation"] for r in data["snippets"])
    assert t["verdict"] == "passed" and t["stdout"] == "[1] TRUE\n"
    assert (
        e["verdict"] == "runtime_error" and e["line"] == 3 and e["warnings"] == ["In log(-x): NaNs produced"]
    )
    assert p["verdict"] == "parse_error"
    assert ready.json()["sandbox"]["mode"] == "bwrap" and ready.json()["sandbox"]["status"] == "ok"


def generate_spec(on_failure: str) -> dict[str, object]:
    return {
        "tasks": [{"id": "generate"}],
        "themes": [{"id": "mean-variance"}],
        "per_cell": 3,
        "model": {"provider": "openai", "questions_per_call": 3},
        "evaluation": {"enabled": True, "on_failure": on_failure},
    }


@pytest.mark.sandbox
@pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("R") is None, reason="needs R and bubblewrap"
)
async def test_generate_evaluates_every_answer_in_the_real_sandbox(llm_server: FakeLLMServer) -> None:
    app = create_app(settings_for(llm_server, sandbox="bwrap", eval_workers=1))
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/generate", json=generate_spec("flag"))
    assert response.status_code == 200, response.text
    pairs = response.json()["pairs"]
    assert len(pairs) == 3
    for pair in pairs:
        ev = pair["evaluation"]
        assert ev["verdict"] == "passed" and not ev["flagged"], ev
        assert ev["stdout"].startswith("[1] ") and ev["code"].startswith("x <- c(")


async def test_generate_drops_failing_answers_under_drop(llm_server: FakeLLMServer) -> None:
    failing = FakeRunner(lambda code: RunResult(verdict="runtime_error", message="boom", line=1))
    async with AsyncTestClient(create_app(settings_for(llm_server), runner=failing)) as client:
        response = await client.post("/v1/generate", json=generate_spec("drop"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pairs"] == []
    # Each flagged answer was repaired twice, still failed, and was dropped; the cell asked again
    # until its call budget ran out, then reported the three items it could not make.
    dropped = body["dropped"]
    assert dropped and {d["stage"] for d in dropped} == {"evaluation"}
    assert all(d["reason"] == "flagged" and "runtime_error — boom" in d["detail"] for d in dropped)
    assert body["counts"]["evaluation_dropped"] == body["counts"]["flagged"] == len(dropped)
    assert [f["reason"] for f in body["failed"]] == ["cell_budget_exhausted"] * 3
    answers_run = [code for code in failing.calls if code.startswith("x <- c(")]
    # Every answer and every repair ran once in the sandbox.
    assert len(answers_run) == len(dropped) + body["counts"]["repair_calls"] > len(dropped)


needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("R") is None, reason="needs R and bubblewrap"
)


async def _post_and_drop(base_url: str, body: dict[str, object], after_s: float) -> None:
    """Send a POST over a raw connection and close it without reading the answer."""
    import asyncio
    import json
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    payload = json.dumps(body).encode()
    _reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()
    await writer.wait_closed()


@pytest.mark.sandbox
@needs_sandbox
async def test_a_client_that_disconnects_frees_the_workers_at_once() -> None:
    import time

    import httpx

    from tests.conftest import serve

    app = app_with(sandbox="bwrap", eval_workers=2, eval_wall_s=10.0, eval_cpu_s=10.0)
    with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            warm = await client.post("/v1/evaluate", json={"snippets": [{"id": "w", "code": "1"}]})
            assert warm.status_code == 200
            dropped = {"snippets": [{"id": f"s{i}", "code": "Sys.sleep(4)"} for i in range(6)]}
            await _post_and_drop(base_url, dropped, 0.5)
            t0 = time.perf_counter()
            response = await client.post(
                "/v1/evaluate", json={"snippets": [{"id": "n", "code": "cat('next')"}]}
            )
            waited = time.perf_counter() - t0
    assert response.status_code == 200, response.text
    assert response.json()["snippets"][0]["evaluation"]["stdout"] == "next"
    assert waited < 1.5, waited  # was 11.6 s: the dropped request's snippets ran on


@pytest.mark.sandbox
@needs_sandbox
async def test_requests_take_turns_and_a_full_queue_is_a_503_with_retry_after() -> None:
    import asyncio
    import time

    import httpx

    from tests.conftest import serve

    # quota_snippets: one caller (anonymous, as both requests are) may have all of them in the pool.
    app = app_with(
        sandbox="bwrap",
        eval_workers=2,
        eval_wall_s=10.0,
        eval_cpu_s=10.0,
        eval_queue=5000,
        quota_snippets=10_000,
    )
    big = {"snippets": [{"id": f"b{i}", "code": "Sys.sleep(0.2)"} for i in range(5000)]}
    with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            await client.post("/v1/evaluate", json={"snippets": [{"id": "w", "code": "1"}]})
            # The big request stays connected until the other two are answered, however loaded the
            # machine is; it is dropped afterwards, which cancels what it still has queued.
            hog = asyncio.create_task(_post_and_drop(base_url, big, 8.0))
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            small = await client.post(
                "/v1/evaluate", json={"snippets": [{"id": "s", "code": "cat('small')"}]}
            )
            waited = time.perf_counter() - t0
            # 5,000 waiting (less the few that ran): room for few more, not for 100.
            full = await client.post(
                "/v1/evaluate", json={"snippets": [{"id": f"f{i}", "code": "1"} for i in range(100)]}
            )
            await hog
    assert small.status_code == 200 and small.json()["snippets"][0]["evaluation"]["stdout"] == "small"
    assert waited < 4.0, waited  # not 5,000 x 0.2 s / 2 workers
    assert full.status_code == 503, full.text
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["title"] == "R sandbox busy" and "waiting" in full.json()["detail"]


@pytest.mark.sandbox
@needs_sandbox
async def test_requests_of_one_key_take_turns_for_its_snippet_quota() -> None:
    import asyncio
    import time

    import httpx

    from tests.conftest import serve

    # The default quota (4 snippets in flight a key): both requests are the same caller.
    app = app_with(sandbox="bwrap", eval_workers=2, eval_wall_s=10.0, eval_cpu_s=10.0)
    big = {"snippets": [{"id": f"b{i}", "code": "Sys.sleep(0.2)"} for i in range(300)]}
    with serve(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            await client.post("/v1/evaluate", json={"snippets": [{"id": "w", "code": "1"}]})
            # The big request stays connected until the other two are answered, however loaded the
            # machine is; it is dropped afterwards, which cancels what it still has queued.
            hog = asyncio.create_task(_post_and_drop(base_url, big, 8.0))
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            small = await client.post(
                "/v1/evaluate", json={"snippets": [{"id": "s", "code": "cat('small')"}]}
            )
            waited = time.perf_counter() - t0
            await hog
    assert small.status_code == 200 and small.json()["snippets"][0]["evaluation"]["stdout"] == "small"
    assert waited < 1.5, waited  # not 300 x 0.2 s / 2 workers behind the key's first-come slots
