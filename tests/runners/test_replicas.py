"""The HTTP service keeps no state between requests, so replicas behind a load balancer are one
service: two uvicorn replicas on loopback, requests alternating between them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer

CORPUS = Path(__file__).resolve().parent.parent / "data" / "r_help_corpus.jsonl"

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(llm_server: FakeLLMServer) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(create_app(settings_for(llm_server)))) for _ in range(2)]


def test_a_dedup_split_over_replicas_equals_one_request(replicas: list[str]) -> None:
    with CORPUS.open(encoding="utf-8") as f:
        items = [
            {"id": f"r{i}", "text": json.loads(line)["text"]} for i, line in zip(range(3000), f, strict=False)
        ]
    items += [{"id": f"v{i}", "text": "In R, " + x["text"]} for i, x in enumerate(items[::5])]
    with httpx.Client(timeout=120) as client:
        whole = client.post(f"{replicas[0]}/v1/dedup", json={"items": items}).json()["results"]
        # The client carries the state: what was kept so far goes with the next chunk, to the other replica.
        history: list[dict[str, str]] = []
        split: list[dict[str, Any]] = []
        urls = itertools.cycle(replicas)
        for start in range(0, len(items), 400):
            chunk = items[start : start + 400]
            r = client.post(f"{next(urls)}/v1/dedup", json={"items": chunk, "existing": history})
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            split += results
            history += [item for item, res in zip(chunk, results, strict=True) if res["kept"]]
    assert split == whole
    assert sum(not x["kept"] for x in whole) > 500


async def test_generation_requests_alternating_between_replicas_are_each_accounted(
    replicas: list[str],
) -> None:
    spec = {
        "language": "r",
        "tasks": [{"id": "explain"}, {"id": "generate"}],
        "themes": [{"id": "mean-variance"}, {"id": "summaries"}],
        "per_cell": 2,
        "model": {"provider": "openai", "questions_per_call": 2},
        "evaluation": {"enabled": False},
    }
    async with httpx.AsyncClient(timeout=120) as client:

        async def generate(url: str, stream: bool) -> dict[str, Any]:
            if not stream:
                r = await client.post(f"{url}/v1/generate", json=spec)
                assert r.status_code == 200, r.text
                return r.json()
            async with client.stream(
                "POST", f"{url}/v1/generate", json=spec, headers={"Accept": "application/x-ndjson"}
            ) as r:
                events = [json.loads(line) async for line in r.aiter_lines() if line]
            done = events[-1]
            assert done["event"] == "done"
            return {"pairs": [e["pair"] for e in events if e["event"] == "pair"], "counts": done["counts"]}

        bodies = await asyncio.gather(*(generate(replicas[i % 2], stream=i >= 2) for i in range(4)))
    for body in bodies:
        counts = body["counts"]
        assert counts["requested"] == 8 and counts["returned"] == len(body["pairs"]) == 8
        assert counts["failed"] == 0
        assert {(p["task"], p["theme"]) for p in body["pairs"]} == {
            (t, th) for t in ("explain", "generate") for th in ("mean-variance", "summaries")
        }


@pytest.mark.sandbox
def test_evaluation_on_either_replica_gives_the_same_verdicts(replicas: list[str]) -> None:
    snippets = [
        {"id": f"s{i}", "code": f"x <- 1:{i + 2}\ncat(sum(x))" if i % 3 else "stop('no')"} for i in range(12)
    ]
    with httpx.Client(timeout=120) as client:
        answers = [client.post(f"{url}/v1/evaluate", json={"snippets": snippets}).json() for url in replicas]
    key = [
        [(s["id"], s["evaluation"]["verdict"], s["evaluation"]["stdout"]) for s in a["snippets"]]
        for a in answers
    ]
    assert key[0] == key[1]
    assert key[0][1] == ("s1", "passed", "6") and key[0][0][1] == "runtime_error"
