"""Provider name -> instance, built lazily from `Settings` so an unused provider costs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from service.errors import ProviderNotConfigured
from service.providers.base import Laned, Provider
from service.providers.limiter import LaneState
from service.settings import Settings

__all__ = ["PROVIDER_NAMES", "ProviderRegistry"]

PROVIDER_NAMES = ("openai", "anthropic", "local")


def _openai(settings: Settings) -> Provider:
    from service.providers.openai import OpenAIProvider

    return OpenAIProvider.from_settings(settings)


def _anthropic(settings: Settings) -> Provider:
    from service.providers.anthropic import AnthropicProvider

    return AnthropicProvider.from_settings(settings)


def _local(settings: Settings) -> Provider:
    from service.providers.local import LocalProvider

    return LocalProvider.from_settings(settings)


FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "local": _local,
}


class ProviderRegistry:
    """Hands out one provider instance per name for the app's lifetime; `overrides` replace factories."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Provider] | None = None) -> None:
        self._settings = settings
        self._instances: dict[str, Provider] = dict(overrides or {})
        self._lock = asyncio.Lock()

    @property
    def default_name(self) -> str:
        return self._settings.resolved_default_provider

    def is_configured(self, name: str) -> bool:
        if name in self._instances:
            return True
        s = self._settings
        if name == "openai":
            return s.openai_configured
        if name == "anthropic":
            return s.anthropic_configured
        if name == "local":
            from service.providers.local import local_available

            return local_available(s)
        return False

    def get(self, name: str | None = None) -> Provider:
        name = name or self.default_name
        if name not in FACTORIES and name not in self._instances:
            raise ProviderNotConfigured(
                f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}",
                provider=name,
                field="model.provider",
            )
        if name not in self._instances:
            self._instances[name] = FACTORIES[name](self._settings)
        return self._instances[name]

    def open_configured(self) -> None:
        """Build the configured API providers now, so the first request does not pay for SDK imports.
        The local provider stays lazy: loading its model is for the first request that asks for it."""
        for name in ("openai", "anthropic"):
            if self.is_configured(name):
                self.get(name)

    def describe(self) -> dict[str, dict[str, str]]:
        """Configured providers for /ready; instantiated ones add their own description."""
        out: dict[str, dict[str, str]] = {}
        for name in PROVIDER_NAMES:
            if name in self._instances:
                out[name] = {"configured": "true", **self._instances[name].describe()}
            else:
                out[name] = {"configured": "true" if self.is_configured(name) else "false"}
            out[name]["default"] = "true" if name == self.default_name else "false"
        return out

    def lanes(self) -> list[LaneState]:
        """Limit, calls in flight and breaker of every provider and model used so far."""
        return [state for p in self._instances.values() if isinstance(p, Laned) for state in p.lanes()]

    async def aclose(self) -> None:
        for provider in self._instances.values():
            await provider.aclose()
        self._instances.clear()
