"""One cell's accounting: how many items it still misses, and the calls it may still spend.

A cell asks for `requested` items. Each item the cell starts holds a slot until it ends as a pair
(returned), a failure (the slot is lost, with its reason), or a drop (the slot is free again and
the cell asks for another: top-up). The cell loop only asks `take()` for slots to start now: it
waits while items in flight may still fill the cell, and gives none once the cell is full or its
call budget cannot pay for another item. Each item in flight holds the calls it needs when nothing
goes wrong, so lanes running side by side cannot together start more than the budget pays for;
content retries and repairs spend from what is left and may pass it by a little. When the cell
ends, whatever is still missing is failed, so per cell `requested = returned + failed` always
holds, and every drop is listed besides.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import msgspec

from service.wire.base import Usage
from service.wire.evaluate import QualityCheck
from service.wire.generate import CellCount, CheckCount

__all__ = ["CellLedger", "Slot", "calls_needed", "item_cost"]

# Model calls one item needs when nothing goes wrong, by the kind of its task.
_CALLS_PER_ITEM = {"explain": 3, "fix": 4}  # snippet, (bug), question, answer
BUDGET_FACTOR = 3


def calls_needed(kind: str | None, count: int, questions_per_call: int) -> int:
    """Calls a cell of `count` items needs if every reply is usable and every item passes."""
    if kind in _CALLS_PER_ITEM:
        return _CALLS_PER_ITEM[kind] * count
    return math.ceil(count / questions_per_call) + count


def item_cost(kind: str | None) -> int:
    """Calls one item needs when nothing goes wrong (a shared question call comes on top)."""
    return _CALLS_PER_ITEM.get(kind or "", 1)


class Slot(msgspec.Struct, kw_only=True):
    """One started item; `top_up` when it replaces an item that was dropped. `reserved`: calls of
    the budget still held for it (what it needs when nothing goes wrong, less what it spent)."""

    number: int
    top_up: bool
    calls: int = 0
    reserved: int = 0
    # Set once the slot's outcome is counted, or an item task owns it (`handed`).
    done: bool = False
    handed: bool = False


class CellLedger:
    """`shared_call`: the items of the cell's kind come several to one question call (generate)."""

    def __init__(
        self, *, task: str, theme: str, requested: int, budget: int, kind: str | None = None
    ) -> None:
        self.count = CellCount(task=task, theme=theme, requested=requested, budget=budget)
        self.per_item = item_cost(kind)
        self.shared_call = kind not in _CALLS_PER_ITEM
        self.started = 0
        self.usage = Usage()
        self.stopped = False
        self.checks: Counter[tuple[str, bool]] = Counter()
        self._active: list[Slot] = []
        self._changed = asyncio.Event()

    # -- what the cell loop asks

    @property
    def requested(self) -> int:
        return self.count.requested

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def missing(self) -> int:
        """Slots neither filled, failed nor held by an item in flight."""
        c = self.count
        return c.requested - c.returned - c.failed - self.in_flight

    def budget_left(self) -> int:
        """Calls neither spent nor held for the items in flight."""
        return self.count.budget - self.count.calls - sum(s.reserved for s in self._active)

    def _cost(self, n: int) -> int:
        return self.per_item * n + (1 if self.shared_call else 0)

    async def take(self, at_most: int) -> list[Slot]:
        """Start up to `at_most` items now: waits while the cell is covered by items in flight, and
        starts none once the cell is full, stopped, or its budget cannot pay for one more item."""
        while True:
            if self.stopped:
                return []
            missing = self.missing()
            if missing > 0:
                n = min(at_most, missing)
                while n and self._cost(n) > self.budget_left():
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
        for i in range(n):
            shared = 1 if self.shared_call and i == 0 else 0
            slots.append(
                Slot(
                    number=self.started,
                    top_up=self.started >= self.requested,
                    reserved=self.per_item + shared,
                )
            )
            self.started += 1
        self._active += slots
        return slots

    def spend(self, slot: Slot, calls: int, usage: Usage) -> None:
        """Model calls made for one item."""
        self._charge(calls, usage, top_up=slot.top_up)
        slot.calls += calls
        slot.reserved = max(0, slot.reserved - calls)

    def spend_shared(self, slots: list[Slot], calls: int, usage: Usage) -> None:
        """Model calls made for several items at once (one question call): no one item's calls."""
        self._charge(calls, usage, top_up=slots[0].top_up)
        slots[0].reserved = max(0, slots[0].reserved - calls)

    def _charge(self, calls: int, usage: Usage, *, top_up: bool) -> None:
        self.count.calls += calls
        if top_up:
            self.count.top_up_calls += calls
        self.usage = self.usage + usage

    def returned(self, slot: Slot, *, flagged: bool, repaired: bool) -> None:
        self.count.returned += 1
        self.count.flagged += flagged
        self.count.repaired += repaired
        self._end(slot)

    def dropped(self, slot: Slot) -> None:
        """The item is left out; its slot is free for another."""
        self.count.dropped += 1
        self._end(slot)

    def failed(self, slot: Slot) -> None:
        self.count.failed += 1
        self._end(slot)

    def release(self, slots: list[Slot]) -> None:
        """Slots started but never used (a question call gave fewer questions than asked): free again,
        and not counted as replacements."""
        for slot in slots:
            slot.done = True
            self._active.remove(slot)
        self.started -= len(slots)
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

    def _end(self, slot: Slot) -> None:
        self._active.remove(slot)
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
