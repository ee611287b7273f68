"""/v1/exports and /v1/imports/label-studio over HTTP: bodies, headers, streaming, 400s, and the CLI."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.commands import export as export_cmd
from service.commands import import_review as import_cmd
from service.settings import Settings
from tests.stages.test_export_samples import mixed


@pytest.fixture
def client() -> TestClient:
    with TestClient(create_app(Settings(sandbox="none"))) as c:
        yield c


def body(pairs: object, fmt: str, **options: object) -> dict:
    return {"format": fmt, "pairs": json.loads(msgspec.json.encode(pairs)), "options": options}


def ls_export(pairs: list, annotations: list[list[dict]]) -> list[dict]:
    """Label Studio's JSON export of tasks we made, with the given annotations per task."""
    from service.stages.export import export

    tasks = msgspec.json.decode(export("label-studio", pairs, options=None).body())
    return [
        {"id": i + 1, "data": t["data"], "annotations": a}
        for i, (t, a) in enumerate(zip(tasks, annotations, strict=True))
    ]


def decision(value: str, answer: str | None = None) -> dict:
    result = [
        {"from_name": "decision", "to_name": "question", "type": "choices", "value": {"choices": [value]}}
    ]
    if answer is not None:
        result.append(
            {"from_name": "answer", "to_name": "question", "type": "textarea", "value": {"text": [answer]}}
        )
    return {"result": result}


def test_training_export_reports_left_out_in_headers(client: TestClient) -> None:
    r = client.post("/v1/exports", json=body(mixed(), "alpaca"))
    assert r.status_code == 200
    assert r.headers["x-qasynth-exported"] == "5"
    assert r.headers["x-qasynth-left-out"] == "flagged=1, rejected=0, filtered=0"
    assert len(r.text.splitlines()) == 5


def test_ndjson_stream_on_request(client: TestClient) -> None:
    r = client.post(
        "/v1/exports", json=body(mixed(), "label-studio"), headers={"accept": "application/x-ndjson"}
    )
    assert r.headers["content-type"].startswith("application/x-ndjson")
    ids = [json.loads(x)["data"]["pair_id"] for x in r.text.splitlines()]
    assert ids[0] == "p-bad-1" and len(ids) == 6


def test_parquet_body(client: TestClient) -> None:
    r = client.post("/v1/exports", json=body(mixed(), "hf-parquet", include_flagged=True))
    assert pq.read_table(io.BytesIO(r.content)).num_rows == 6


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"format": "csv", "pairs": []}, "format"),
        ({"format": "openai", "pairs": [{"id": "x"}]}, "pairs[0]"),
        (
            {
                "format": "openai",
                "pairs": [],
                "options": {"push": {"url": "x", "token": "t", "project_id": 1}},
            },
            None,
        ),
    ],
)
def test_bad_export_requests_are_400_naming_the_field(
    client: TestClient, payload: dict, field: str | None
) -> None:
    r = client.post("/v1/exports", json=payload)
    assert r.status_code == 400
    problem = r.json()
    assert problem["field"].startswith(field or "options.push")
    if field == "format":  # the formats are listed in the OpenAPI document's enum
        assert problem["detail"] == "format: Invalid enum value 'csv'"


def test_config_endpoint(client: TestClient) -> None:
    r = client.get("/v1/exports/label-studio/config", params={"locale": "ja"})
    assert r.status_code == 200 and "要修正" in r.text and 'alias="needs-fix"' in r.text
    assert client.get("/v1/exports/label-studio/config", params={"locale": "fr"}).status_code == 400


def test_import_applies_decisions_and_accounts_for_every_task(client: TestClient) -> None:
    pairs = mixed()[:4]
    tasks = ls_export(
        pairs,
        [
            [decision("needs-fix", "fixed answer")],
            [decision("accept")],
            [{"result": [], "was_cancelled": True}],
            [],
        ],
    )
    tasks.append({"id": 99, "data": {"text": "not ours"}, "annotations": [decision("accept")]})
    tasks.append({**tasks[1], "id": 100})
    r = client.post("/v1/imports/label-studio", params={"evaluate": "false"}, content=json.dumps(tasks))
    assert r.status_code == 200, r.text
    out = r.json()
    assert [p["id"] for p in out["accepted"]] == ["p-ok-1"]
    assert out["corrected"][0]["pair"]["answer"] == "fixed answer"
    reasons = sorted((s["index"], s["reason"]) for s in out["skipped"])
    assert reasons == [(2, "cancelled"), (3, "unannotated"), (4, "unknown_pair"), (5, "duplicate")]
    assert out["counts"]["tasks"] == 6 == sum(v for k, v in out["counts"].items() if k != "tasks")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: t[0]["annotations"][0].update(result="x"), "[0].annotations[0].result"),
        (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices="accept"),
         "[0].annotations[0].result[0].value.choices"),
        (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices=["maybe"]),
         "[0].annotations[0].result[0].value.choices[0]"),
        (lambda t: t[0]["data"]["pair"].update(task=""), "[0].data.pair.task"),
        (lambda t: t[0].pop("data"), "[0]"),
    ],
)  # fmt: skip
def test_malformed_export_is_400_naming_task_and_field(client: TestClient, mutate, field: str) -> None:
    tasks = ls_export(mixed()[:1], [[decision("accept")]])
    mutate(tasks)
    r = client.post("/v1/imports/label-studio", params={"evaluate": "false"}, content=json.dumps(tasks))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_import_rejects_non_json(client: TestClient) -> None:
    r = client.post("/v1/imports/label-studio", content=b"{not json")
    assert r.status_code == 400 and r.json()["field"] == "body"


def _cli(register, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_and_import_review(tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in mixed()))
    out = tmp_path / "tasks.json"
    assert (
        _cli(export_cmd.register, ["export", "--format", "label-studio", str(pairs_file), "-o", str(out)])
        == 0
    )
    assert len(json.loads(out.read_text())) == 6
    assert (tmp_path / "tasks.config.xml").read_text().startswith("<View>")
    assert _cli(export_cmd.register, ["export", "--format", "openai", str(tmp_path / "missing.jsonl")]) == 2

    tasks = [
        {"id": i, "data": t["data"], "annotations": [decision("accept")]}
        for i, t in enumerate(json.loads(out.read_text()))
    ]
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(tasks))
    result_file, train = tmp_path / "reviewed.json", tmp_path / "train.jsonl"
    argv = [
        "import-review",
        str(export_file),
        "-o",
        str(result_file),
        "--pairs-out",
        str(train),
        "--no-evaluate",
    ]
    assert _cli(import_cmd.register, argv) == 0
    assert json.loads(result_file.read_text())["counts"]["accepted"] == 6
    assert len(train.read_text().splitlines()) == 6
