"""Long-lived objects shared by requests: providers and the R runner. Never request data."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from service.errors import SandboxUnavailable
from service.pricing import PriceTable
from service.providers.registry import ProviderRegistry
from service.settings import Settings

__all__ = ["Runtime"]


class Runtime:
    """Starts the warm R worker pool on first use, so the app starts fast and /health answers at once."""

    def __init__(self, *, settings: Settings, providers: ProviderRegistry, runner: Any = None) -> None:
        self.settings = settings
        self.providers = providers
        self.prices = PriceTable.load(settings.prices_file)
        # Derived once from settings and shipped files (never request data): /ready's cache notes.
        self.memo: dict[str, Any] = {}
        # Signs batch handles; a random key when none is set lives as long as this process.
        self.batch_secret = (settings.batch_secret or secrets.token_hex(32)).encode()
        self._runner = runner
        self._owns_runner = runner is None
        self._runner_error: str | None = None
        self._lock = asyncio.Lock()

    async def runner(self) -> Any:
        """The evaluator's runner; raises `SandboxUnavailable` saying why when it cannot start."""
        if self._runner is not None:
            return self._runner
        async with self._lock:
            if self._runner is None:
                import evaluator

                s = self.settings
                limits = evaluator.Limits(
                    wall_s=s.eval_wall_s,
                    cpu_s=s.eval_cpu_s,
                    mem_mb=s.eval_mem_mb,
                    total_mem_mb=max(s.eval_mem_mb, evaluator.Limits().total_mem_mb),
                    output_bytes=s.eval_output_bytes,
                )
                try:
                    self._runner = await evaluator.start_runner(
                        sandbox=s.sandbox,
                        workers=s.eval_workers or None,
                        packages=s.r_packages,
                        limits=limits,
                        max_queue=s.eval_queue,
                    )
                except evaluator.SandboxUnavailable as exc:
                    self._runner_error = str(exc)
                    raise SandboxUnavailable(str(exc)) from exc
                self._runner_error = None
        return self._runner

    def default_model(self, provider: str) -> str:
        """The model a provider would use when a spec names none, whether or not it is configured."""
        if provider == "openai":
            return self.settings.openai_model
        if provider == "anthropic":
            return self.settings.anthropic_model
        return "local"

    @property
    def runner_error(self) -> str | None:
        return self._runner_error

    async def aclose(self) -> None:
        await self.providers.aclose()
        if self._runner is not None and self._owns_runner:
            await self._runner.aclose()
            self._runner = None
