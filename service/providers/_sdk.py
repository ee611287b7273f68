"""What the OpenAI and Anthropic providers share: one official SDK client and a bound on calls in flight."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["SDKProvider"]


class SDKProvider:
    name: str
    default_model: str

    def __init__(self, client: Any, *, name: str, default_model: str, concurrency: int) -> None:
        self.name = name
        self.default_model = default_model
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency

    async def aclose(self) -> None:
        await self._client.close()

    def describe(self) -> dict[str, str]:
        return {
            "base_url": str(self._client.base_url),
            "default_model": self.default_model,
            "concurrency": str(self._concurrency),
        }
