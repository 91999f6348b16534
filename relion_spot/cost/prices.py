"""Spot price history from EC2, fetched once per instance type, AZ and window."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from relion_spot.cost.pricing import PriceHistory

log = logging.getLogger(__name__)

PRODUCT_DESCRIPTIONS = ("Linux/UNIX (Amazon VPC)", "Linux/UNIX")


class PriceSource(Protocol):
    """Where pricing reads $/hour histories from."""

    requests: int

    def histories(
        self, pairs: Iterable[tuple[str, str]], start: int, end: int
    ) -> dict[tuple[str, str], PriceHistory]: ...


class SpotPriceSource:
    """Caches each (type, AZ, window) history for the life of the object (one invocation)."""

    def __init__(self, ec2: Any):
        self._ec2 = ec2
        self._cache: dict[tuple[str, str, int, int], PriceHistory] = {}
        self.requests = 0

    def history(self, instance_type: str, zone: str, start: int, end: int) -> PriceHistory:
        key = (instance_type, zone, int(start), int(end))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        points: list[tuple[float, float]] = []
        pages = self._ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=[instance_type],
            ProductDescriptions=list(PRODUCT_DESCRIPTIONS),
            Filters=[{"Name": "availability-zone", "Values": [zone]}],
            StartTime=datetime.fromtimestamp(start, UTC),
            EndTime=datetime.fromtimestamp(end, UTC),
        )
        for page in pages:
            self.requests += 1
            for entry in page.get("SpotPriceHistory", []):
                if entry.get("InstanceType") != instance_type:
                    continue
                if entry.get("AvailabilityZone") != zone:
                    continue
                try:
                    points.append((entry["Timestamp"].timestamp(), float(entry["SpotPrice"])))
                except (KeyError, TypeError, ValueError) as err:
                    log.warning("skipping spot price entry %r: %s", entry, err)
        history = PriceHistory(points)
        if not history:
            log.warning("no spot price history for %s in %s", instance_type, zone)
        self._cache[key] = history
        return history

    def histories(
        self, pairs: Iterable[tuple[str, str]], start: int, end: int
    ) -> dict[tuple[str, str], PriceHistory]:
        return {pair: self.history(pair[0], pair[1], start, end) for pair in set(pairs)}


class OnDemandCeiling:
    """The on-demand price of each type (the project's catalog) as a flat history: what a spot
    instance can cost at most, since EC2 never bills spot above on-demand. For places with no
    spot market to read, such as the embedded cloud, whose moto quotes a placeholder price."""

    def __init__(self) -> None:
        self.requests = 0

    def history(self, instance_type: str, zone: str, start: int, end: int) -> PriceHistory:
        from ..catalog import INSTANCE_TYPES

        known = INSTANCE_TYPES.get(instance_type)
        return PriceHistory([(0.0, known.on_demand_usd_hour)] if known else [])

    def histories(
        self, pairs: Iterable[tuple[str, str]], start: int, end: int
    ) -> dict[tuple[str, str], PriceHistory]:
        return {pair: self.history(pair[0], pair[1], start, end) for pair in set(pairs)}
