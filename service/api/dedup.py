"""Routes for /v1/dedup."""

from __future__ import annotations

from typing import Any

routes: list[Any] = []
