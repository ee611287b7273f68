"""The cell ledger: slots, top-up as a loop condition, the budget, and the invariant."""

from __future__ import annotations

import asyncio

from service.stages.ledger import CellLedger, calls_needed
from service.wire.base import Usage


def ledger(requested: int = 2, budget: int = 100, kind: str | None = "explain") -> CellLedger:
    return CellLedger(task="t", theme="h", requested=requested, budget=budget, kind=kind)


async def test_a_dropped_item_frees_its_slot_for_a_top_up() -> None:
    cell = ledger()
    first = await cell.take(5)
    assert [s.number for s in first] == [0, 1] and not any(s.top_up for s in first)
    waiting = asyncio.create_task(cell.take(5))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # both slots are held by items in flight
    cell.spend(first[0], 3, Usage(input_tokens=10))
    cell.dropped(first[0])
    [again] = await asyncio.wait_for(waiting, 1)
    assert again.top_up and again.number == 2
    cell.spend(again, 3, Usage())
    assert cell.count.top_up_calls == 3 and cell.count.calls == 6 and again.calls == 3
    cell.returned(first[1], flagged=False, repaired=True)
    cell.returned(again, flagged=True, repaired=False)
    assert await cell.take(5) == []  # full
    await cell.settled()
    assert cell.shortfall() == 0
    count = cell.finish(None)
    assert (count.returned, count.dropped, count.failed, count.flagged, count.repaired) == (2, 1, 0, 1, 1)


async def test_no_item_starts_that_the_budget_cannot_pay_for() -> None:
    cell = ledger(requested=3, budget=10, kind="fix")  # 4 calls an item
    a, b = await cell.take(1), await cell.take(1)
    assert a and b and await cell.take(1) == []  # 8 calls held by two items in flight, 2 left
    cell.spend(a[0], 7, Usage())  # retries and repairs: the item spent more than it held
    cell.dropped(a[0])
    assert cell.budget_left() == 10 - 7 - 4
    assert await cell.take(1) == []
    cell.spend(b[0], 2, Usage())
    cell.dropped(b[0])
    assert await cell.take(1) == []  # 1 call left, an item needs 4
    await cell.settled()
    assert cell.shortfall() == 3


async def test_a_question_call_that_gives_fewer_questions_releases_the_rest() -> None:
    cell = ledger(requested=5, budget=12, kind="generate")
    slots = await cell.take(5)
    assert len(slots) == 5 and cell.budget_left() == 12 - 6  # a question call, then five answers
    cell.release(slots[3:])
    assert cell.missing() == 2 and cell.started == 3
    more = await cell.take(5)
    assert [s.number for s in more] == [3, 4] and not any(s.top_up for s in more)


async def test_a_stopped_cell_starts_nothing_and_waiters_wake() -> None:
    cell = ledger(requested=1)
    [slot] = await cell.take(1)
    waiting = asyncio.create_task(cell.take(1))
    await asyncio.sleep(0.01)
    cell.stop()
    cell.failed(slot)
    assert await asyncio.wait_for(waiting, 1) == []
    await cell.settled()
    assert cell.shortfall() == 0 and cell.count.failed == 1


def test_calls_needed_by_kind() -> None:
    assert calls_needed("explain", 5, 5) == 15
    assert calls_needed("fix", 5, 5) == 20
    assert calls_needed("generate", 7, 5) == 2 + 7
    assert calls_needed(None, 1, 5) == 2
