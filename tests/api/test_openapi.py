"""The committed OpenAPI document is the one the app generates: regenerate with `python -m service openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from service.app import openapi_json

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_schema_matches_the_app() -> None:
    live = openapi_json()
    assert COMMITTED.read_text(encoding="utf-8") == live, (
        "openapi/openapi.json drifted from the app; run: .venv/bin/python -m service openapi"
    )


def test_schema_documents_every_route_and_wire_type() -> None:
    schema = json.loads(openapi_json())
    for path in (
        "/v1/generate",
        "/v1/dedup",
        "/v1/evaluate",
        "/v1/reports",
        "/v1/exports",
        "/health",
        "/ready",
    ):
        assert path in schema["paths"], path
    components = schema["components"]["schemas"]
    assert {"Spec", "Pair", "GenerateResponse", "Evaluation"} <= set(components)
    threshold = components["DedupSettings"]["properties"]["threshold"]
    assert threshold["minimum"] == 0.0 and threshold["maximum"] == 1.0
