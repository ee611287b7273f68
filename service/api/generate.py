"""Routes for /v1/generate."""

from __future__ import annotations

from typing import Any

routes: list[Any] = []
