"""Routes for /v1/reports."""

from __future__ import annotations

from typing import Any

routes: list[Any] = []
