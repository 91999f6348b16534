"""One pricing or reconciliation at a time per cluster, however many invocations run at once.

The cost function has no reserved concurrency: a new account's Lambda quota is 10 concurrent
executions with none to reserve, and a stack that reserves any fails to create. So a stream
batch, the hourly run and the daily reconciliation can start together. Each writes whole cost
items that carry the billed fields forward, and publishes how far each estimate moved: two at
once could drop a billed figure the other just stored, or publish the same move twice.

They take turns on a lease instead: one item in the job cost table, put only if absent or
expired, deleted by its holder when done. A holder that dies (timeout, crash) blocks the others
for at most the lease, which outlasts the function's timeout. The node count needs no turn: it
writes nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .store import JOB_KEY

log = logging.getLogger(__name__)

LOCK_KEY = "lock#pricing"
"""Never a job key: those are ``<cluster>#<job id>`` and cluster names have no ``#``. Without a
``cluster`` attribute the item stays out of the report's index."""
LEASE_SECONDS = 16 * 60
"""Longer than the function's 15-minute timeout, so a live holder never loses the lease."""
WAIT_SECONDS = 10 * 60
"""How long an invocation waits for its turn before it fails and is retried (stream batches
and scheduled events are retried by Lambda), leaving time for its own work."""
POLL_SECONDS = 2.0


class LockBusy(RuntimeError):
    """Another pricing or reconciliation held the lease for the whole wait."""


@dataclass
class PricingLock:
    client: Any
    table: str
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def try_acquire(self) -> bool:
        now = self.clock()
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    JOB_KEY: {"S": LOCK_KEY},
                    "owner": {"S": self.owner},
                    "expires_at": {"N": str(int(now + self.lease_seconds))},
                },
                ConditionExpression="attribute_not_exists(#job) OR expires_at < :now",
                ExpressionAttributeNames={"#job": JOB_KEY},
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def acquire(self, wait_seconds: float) -> bool:
        deadline = self.clock() + wait_seconds
        while not self.try_acquire():
            if self.clock() >= deadline:
                return False
            self.sleep(self.poll_seconds)
        return True

    def release(self) -> None:
        """Delete the lease if it is still ours (it is not once it expired and was taken)."""
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={JOB_KEY: {"S": LOCK_KEY}},
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}},
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            log.warning("the pricing lease expired before it was released")

    @contextmanager
    def held(self, wait_seconds: float = WAIT_SECONDS) -> Iterator[None]:
        if not self.acquire(wait_seconds):
            raise LockBusy(f"another pricing run held {self.table} for {wait_seconds:.0f} s")
        try:
            yield
        finally:
            self.release()
