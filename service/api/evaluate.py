"""Routes for /v1/evaluate."""

from __future__ import annotations

from typing import Any

routes: list[Any] = []
