"""One cell's accounting: how many items it still misses, and the calls it may still spend.

A cell asks for `requested` items. Each item the cell starts holds a slot until it ends as a pair
(returned), a failure (the slot is lost, with its reason), or a drop (the slot is free again and
the cell asks for another: top-up). The cell loop only asks `take()` for slots to start now: it
waits while items in flight may still fill the cell, and gives none once the cell is full or its
call budget is spent. When the cell ends, whatever is still missing is failed, so per cell
`requested = returned + failed` always holds, and every drop is listed besides.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable

import msgspec

from service.wire.base import Usage
from service.wire.evaluate import QualityCheck
from service.wire.generate import CellCount, CheckCount

__all__ = ["CellLedger", "Slot", "calls_needed", "start_cost"]

# Model calls one item needs when nothing goes wrong, by the kind of its task.
_CALLS_PER_ITEM = {"explain": 3, "fix": 4}  # snippet, (bug), question, answer
BUDGET_FACTOR = 3


def calls_needed(kind: str | None, count: int, questions_per_call: int) -> int:
    """Calls a cell of `count` items needs if every reply is usable and every item passes."""
    if kind in _CALLS_PER_ITEM:
        return _CALLS_PER_ITEM[kind] * count
    return math.ceil(count / questions_per_call) + count


def start_cost(kind: str | None, n: int) -> int:
    """Calls that starting `n` items at once costs when nothing goes wrong: a new item starts only
    while the budget still holds that much (content retries and repairs may go beyond it a little)."""
    if kind in _CALLS_PER_ITEM:
        return _CALLS_PER_ITEM[kind] * n
    return 1 + n  # one question call, then an answer each


class Slot(msgspec.Struct, kw_only=True):
    """One started item; `top_up` when it replaces an item that was dropped."""

    number: int
    top_up: bool
    calls: int = 0
    # Set once the slot's outcome is counted, or an item task owns it (`handed`).
    done: bool = False
    handed: bool = False


class CellLedger:
    def __init__(
        self, *, task: str, theme: str, requested: int, budget: int, cost: Callable[[int], int] = lambda n: n
    ) -> None:
        self.count = CellCount(task=task, theme=theme, requested=requested, budget=budget)
        self.cost = cost
        self.in_flight = 0
        self.started = 0
        self.usage = Usage()
        self.stopped = False
        self.checks: Counter[tuple[str, bool]] = Counter()
        self._changed = asyncio.Event()

    # -- what the cell loop asks

    @property
    def requested(self) -> int:
        return self.count.requested

    def missing(self) -> int:
        """Slots neither filled, failed nor held by an item in flight."""
        c = self.count
        return c.requested - c.returned - c.failed - self.in_flight

    def budget_left(self) -> int:
        return self.count.budget - self.count.calls

    async def take(self, at_most: int) -> list[Slot]:
        """Start up to `at_most` items now: waits while the cell is covered by items in flight, and
        starts none once the cell is full, stopped, or its budget cannot pay for one more item."""
        while True:
            if self.stopped:
                return []
            missing = self.missing()
            if missing > 0:
                n = min(at_most, missing)
                while n and self.cost(n) > self.budget_left():
                    n -= 1
                return self._start(n) if n else []
            if self.in_flight == 0:
                return []  # full
            self._changed.clear()
            await self._changed.wait()

    def stop(self) -> None:
        """No new items (the provider rejected the job); items in flight still end."""
        self.stopped = True
        self._wake()

    # -- items

    def _start(self, n: int) -> list[Slot]:
        slots = []
        for _ in range(n):
            slots.append(Slot(number=self.started, top_up=self.started >= self.requested))
            self.started += 1
        self.in_flight += n
        return slots

    def spend(self, slot: Slot | None, calls: int, usage: Usage, *, top_up: bool = False) -> None:
        """Model calls made (for `slot`, or for several slots at once when it is None)."""
        self.count.calls += calls
        if slot.top_up if slot is not None else top_up:
            self.count.top_up_calls += calls
        if slot is not None:
            slot.calls += calls
        self.usage = self.usage + usage

    def returned(self, *, flagged: bool, repaired: bool) -> None:
        self.count.returned += 1
        self.count.flagged += flagged
        self.count.repaired += repaired
        self._end()

    def dropped(self) -> None:
        """The item is left out; its slot is free for another."""
        self.count.dropped += 1
        self._end()

    def failed(self) -> None:
        self.count.failed += 1
        self._end()

    def release(self, slots: list[Slot]) -> None:
        """Slots started but never used (a question call gave fewer questions than asked): free again,
        and not counted as replacements."""
        for slot in slots:
            slot.done = True
        self.started -= len(slots)
        self.in_flight -= len(slots)
        self._wake()

    async def settled(self) -> None:
        """Until no item of the cell is in flight."""
        while self.in_flight > 0:
            self._changed.clear()
            await self._changed.wait()

    def record(self, checks: list[QualityCheck]) -> None:
        for check in checks:
            self.checks[(check.name, check.passed)] += 1

    def repair_calls(self, calls: int) -> None:
        self.count.repair_calls += calls

    def _end(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()

    # -- the end

    def shortfall(self) -> int:
        """What is still missing when no item is in flight: the count to fail."""
        assert self.in_flight == 0, "items still in flight"
        return self.count.requested - self.count.returned - self.count.failed

    def fail_shortfall(self, n: int) -> None:
        self.count.failed += n

    def finish(self, diversity: float | None) -> CellCount:
        names = sorted({name for name, _ in self.checks})
        checks = {}
        for name in names:
            passed, failed = self.checks[(name, True)], self.checks[(name, False)]
            checks[name] = CheckCount(
                passed=passed, failed=failed, pass_rate=round(passed / (passed + failed), 4)
            )
        return msgspec.structs.replace(self.count, checks=checks, diversity=diversity)  # type: ignore[arg-type]
