"""The pricing lease that replaced the function's reserved concurrency of one."""

from __future__ import annotations

import pytest

from relion_spot.cost.handler import handle
from relion_spot.cost.lock import LOCK_KEY, LockBusy, PricingLock
from relion_spot.cost.store import JOB_KEY

from .conftest import COSTS


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def lock(account, owner: str, clock: Clock, lease: float = 60) -> PricingLock:
    return PricingLock(
        account.clients.dynamodb,
        COSTS,
        owner=owner,
        lease_seconds=lease,
        poll_seconds=20,
        clock=clock,
        sleep=clock.sleep,
    )


def test_one_holder_at_a_time_and_the_lease_outlives_no_one(account):
    clock = Clock()
    first, second = lock(account, "a", clock), lock(account, "b", clock)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    clock.now += 61  # the holder died: its lease runs out
    assert first.try_acquire()


def test_release_never_drops_a_lease_taken_over(account):
    clock = Clock()
    first, second = lock(account, "a", clock), lock(account, "b", clock)
    assert first.try_acquire()
    clock.now += 61
    assert second.try_acquire()
    first.release()
    assert not lock(account, "c", clock).try_acquire()


def test_a_waiter_gets_its_turn_when_the_lease_frees(account):
    clock = Clock()
    holder, waiter = lock(account, "a", clock, lease=30), lock(account, "b", clock)
    assert holder.try_acquire()
    assert waiter.acquire(wait_seconds=120)
    assert clock.now >= 1_800_000_030


def test_a_busy_pricing_run_fails_so_lambda_retries_it(account):
    clock = Clock()
    assert lock(account, "other", clock, lease=3600).try_acquire()
    service = account.service()
    service.lock = lock(account, "mine", clock)
    with pytest.raises(LockBusy), service.lock.held(wait_seconds=10):
        pass
    with pytest.raises(LockBusy):
        handle({"action": "reconcile"}, service, now=clock.now)


def test_the_lease_is_gone_after_a_run(account):
    handle({"action": "schedule"}, account.service())
    item = account.clients.dynamodb.get_item(TableName=COSTS, Key={JOB_KEY: {"S": LOCK_KEY}})
    assert "Item" not in item
