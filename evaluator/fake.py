"""FakeRunner: scripted results for tests of code that uses a runner (stages, routes).

Evaluator tests use the real sandbox; this stands in for it one layer up, like httpx's
MockTransport. Give it a function of the code, or a queue of results, or nothing (every
snippet passes).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from evaluator._types import RunResult

__all__ = ["FakeRunner"]


class FakeRunner:
    def __init__(
        self,
        results: Callable[[str], RunResult] | Iterable[RunResult] | None = None,
    ) -> None:
        self._fn = results if callable(results) else None
        self._queue = list(results) if results is not None and not callable(results) else []
        self.calls: list[str] = []
        self.owners: list[Hashable | None] = []
        self.closed = False

    async def run(self, code: str, *, owner: Hashable | None = None) -> RunResult:
        self.calls.append(code)
        self.owners.append(owner)
        if self._fn is not None:
            return self._fn(code)
        if self._queue:
            return self._queue.pop(0)
        return RunResult(verdict="passed", stdout="", duration_ms=1.0)

    def describe(self) -> dict[str, str]:
        return {"mode": "fake", "workers": "1"}

    async def aclose(self) -> None:
        self.closed = True
