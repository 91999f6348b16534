"""Pricing of job attempts from spot price history: pure arithmetic, no AWS.

Choices (also the documented contract of the figures a user sees):

- A price point holds from its timestamp until the next point of the same type and AZ (that is
  how EC2 publishes spot prices: a point is emitted only when the price changes).
- An attempt starting before the first known point is charged the earliest point from its start
  until the second point: the price in force before is unknown, the earliest one is the closest
  evidence. EC2 returns the last change before a query's start time, so with real history this
  only happens when the history itself is cut short.
- Two points with the same timestamp: the higher price wins (an estimate should not undershoot).
- An attempt is charged for its own seconds (Slurm's START..END); boot and idle time of a node
  belong to no job and show up as the gap between the estimates and the bill.
- A job holds ``cpus / node_count / vcpus`` of each node (capped at 1); the same share applies to
  the node's EBS volumes. A GPU node running one job at a time (the node groups' setup) has the
  job hold all of it. An instance type not in the catalog counts as held whole.
- EBS is prorated per second over a 730-hour month (AWS's convention).
- Storage I/O: the bytes an attempt read from and wrote to the shared file system, as its node
  metered them (relion_spot.node.storage_io), times the file system's per-GiB rates (Elastic
  throughput bills them; Bursting and Provisioned do not). An attempt with no meter reading is
  flagged ``storage-io-unmetered`` and its I/O counts as nothing, never as a guess.
- Data transfer: none. Nodes reach EFS through the mount target of their own zone and S3 in the
  same region, both free of transfer charges; nothing leaves the region.
- An attempt that ended NODE_FAIL, PREEMPTED or REQUEUED was lost to a reclaim: its cost is part
  of the job's cost and is also reported on its own as the reclaimed cost and share, per
  component (compute, EBS, storage I/O).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relion_spot.catalog import INSTANCE_TYPES

RECLAIM_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "REQUEUED"})
SECONDS_PER_MONTH = 730 * 3600
EBS_USD_PER_GB_MONTH: dict[str, float] = {
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}
"""us-east-1 storage prices (IOPS/throughput extras of gp3/io* are not charged per job)."""
GIB = 2**30
"""AWS bills storage and transfer in binary gigabytes."""
COMPONENTS = ("compute", "ebs", "storage_io")
"""The parts of a job's cost, in the order they are reported."""
DIGITS = 10
"""Stored dollar figures are rounded here so a re-run reproduces them bit for bit."""


@dataclass(frozen=True, slots=True)
class Volume:
    size_gb: int
    volume_type: str


@dataclass(frozen=True, slots=True)
class StorageIo:
    """Bytes an attempt moved on the shared file system, as its node's NFS client counted."""

    read_bytes: int
    write_bytes: int


@dataclass(frozen=True, slots=True)
class StorageRates:
    """What the shared file system bills per GiB moved (zero outside Elastic throughput)."""

    read_usd_per_gib: float = 0.0
    write_usd_per_gib: float = 0.0

    def dollars(self, io: StorageIo) -> float:
        return (
            io.read_bytes * self.read_usd_per_gib + io.write_bytes * self.write_usd_per_gib
        ) / GIB


@dataclass(frozen=True, slots=True)
class NodeUse:
    """One node of an attempt and the instance that played it (None when it was not found)."""

    node: str
    instance_id: str | None = None
    instance_type: str | None = None
    availability_zone: str | None = None
    launch_time: float | None = None
    volumes: tuple[Volume, ...] = ()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a Slurm job on its nodes; a requeued job has several."""

    cluster: str
    job_id: str
    start: int
    end: int
    state: str
    user: str = ""
    job_name: str = ""
    partition: str = ""
    cpus: int = 0
    node_count: int = 0
    nodes: tuple[NodeUse, ...] = ()
    reason: str = ""
    exit_code: str = ""
    storage_io: StorageIo | None = None
    """None until the node's meter reading is attached (and when it never arrives)."""

    @property
    def key(self) -> str:
        """Attempt identity within the job: its start second (Slurm gives no attempt counter)."""
        return f"{self.start:010d}"

    @property
    def seconds(self) -> int:
        return max(0, self.end - self.start)

    @property
    def reclaimed(self) -> bool:
        return self.state in RECLAIM_STATES


class PriceHistory:
    """Spot price steps of one instance type in one AZ, in $/hour."""

    __slots__ = ("prices", "times")

    def __init__(self, points: Iterable[tuple[float, float]]):
        merged: dict[float, float] = {}
        for when, price in points:
            if not (math.isfinite(when) and math.isfinite(price)) or price < 0:
                raise ValueError(f"bad spot price point ({when!r}, {price!r})")
            merged[when] = max(price, merged.get(when, price))
        self.times = sorted(merged)
        self.prices = [merged[t] for t in self.times]

    def __bool__(self) -> bool:
        return bool(self.times)

    def dollars(self, start: float, end: float) -> float:
        """Price times hours integrated over [start, end)."""
        if end <= start or not self.times:
            return 0.0
        times, prices = self.times, self.prices
        index = max(0, bisect.bisect_right(times, start) - 1)
        total = 0.0
        cursor = start
        while cursor < end:
            next_change = times[index + 1] if index + 1 < len(times) else math.inf
            segment_end = min(end, next_change)
            if segment_end > cursor:
                total += prices[index] * (segment_end - cursor)
                cursor = segment_end
            index += 1
        return total / 3600.0


@dataclass(frozen=True, slots=True)
class NodeCost:
    node: str
    instance_id: str | None
    instance_type: str | None
    availability_zone: str | None
    share: float
    compute_usd: float
    ebs_usd: float


@dataclass(frozen=True, slots=True)
class AttemptCost:
    key: str
    state: str
    start: int
    end: int
    reclaimed: bool
    compute_usd: float
    ebs_usd: float
    nodes: tuple[NodeCost, ...]
    flags: tuple[str, ...]
    storage_io_usd: float = 0.0
    storage_read_bytes: int | None = None
    storage_write_bytes: int | None = None

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.ebs_usd + self.storage_io_usd

    def component_usd(self, component: str) -> float:
        return float(getattr(self, f"{component}_usd"))


@dataclass(frozen=True)
class JobCost:
    cluster: str
    job_id: str
    user: str
    job_name: str
    partition: str
    first_start: int
    last_end: int
    attempts: tuple[AttemptCost, ...]
    flags: tuple[str, ...] = field(default=())

    @property
    def total_usd(self) -> float:
        return round(sum(a.total_usd for a in self.attempts), DIGITS)

    @property
    def reclaimed_usd(self) -> float:
        return round(sum(a.total_usd for a in self.attempts if a.reclaimed), DIGITS)

    @property
    def reclaimed_share(self) -> float:
        total = self.total_usd
        return round(self.reclaimed_usd / total, DIGITS) if total > 0 else 0.0

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Each component's dollars, the part of them lost to reclaims, and that share."""
        parts: dict[str, dict[str, float]] = {}
        for component in COMPONENTS:
            usd = round(sum(a.component_usd(component) for a in self.attempts), DIGITS)
            lost = round(
                sum(a.component_usd(component) for a in self.attempts if a.reclaimed), DIGITS
            )
            parts[component] = {
                "usd": usd,
                "reclaimed_usd": lost,
                "reclaimed_share": round(lost / usd, DIGITS) if usd > 0 else 0.0,
            }
        return parts

    @property
    def storage_bytes(self) -> tuple[int, int] | None:
        """(read, written) over the metered attempts; None when no attempt was metered."""
        metered = [a for a in self.attempts if a.storage_read_bytes is not None]
        if not metered:
            return None
        return (
            sum(a.storage_read_bytes or 0 for a in metered),
            sum(a.storage_write_bytes or 0 for a in metered),
        )

    @property
    def month(self) -> str:
        return datetime.fromtimestamp(self.first_start, UTC).strftime("%Y-%m")

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return tuple(
            sorted({n.instance_id for a in self.attempts for n in a.nodes if n.instance_id})
        )

    def as_dict(self) -> dict:
        """Plain JSON-able form: what is stored, reported and fingerprinted."""
        return {
            "cluster": self.cluster,
            "job_id": self.job_id,
            "user": self.user,
            "job_name": self.job_name,
            "partition": self.partition,
            "month": self.month,
            "first_start": self.first_start,
            "last_end": self.last_end,
            "estimate_usd": self.total_usd,
            "reclaimed_usd": self.reclaimed_usd,
            "reclaimed_share": self.reclaimed_share,
            "flags": list(self.flags),
            "instance_ids": list(self.instance_ids),
            "cost_breakdown": self.breakdown(),
            "attempts": [
                {
                    "attempt": a.key,
                    "state": a.state,
                    "start": a.start,
                    "end": a.end,
                    "reclaimed": a.reclaimed,
                    "compute_usd": round(a.compute_usd, DIGITS),
                    "ebs_usd": round(a.ebs_usd, DIGITS),
                    "storage_io_usd": round(a.storage_io_usd, DIGITS),
                    "storage_read_bytes": a.storage_read_bytes,
                    "storage_write_bytes": a.storage_write_bytes,
                    "flags": list(a.flags),
                    "nodes": [
                        {
                            "node": n.node,
                            "instance_id": n.instance_id,
                            "instance_type": n.instance_type,
                            "availability_zone": n.availability_zone,
                            "share": round(n.share, DIGITS),
                            "compute_usd": round(n.compute_usd, DIGITS),
                            "ebs_usd": round(n.ebs_usd, DIGITS),
                        }
                        for n in a.nodes
                    ],
                }
                for a in self.attempts
            ],
        }

    def fingerprint(self) -> str:
        """Hash of everything priced: equal fingerprints mean a rewrite would change nothing."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def node_share(attempt: Attempt, instance_type: str | None) -> float:
    spec = INSTANCE_TYPES.get(instance_type or "")
    if spec is None or attempt.cpus <= 0:
        return 1.0
    per_node = attempt.cpus / max(1, attempt.node_count or len(attempt.nodes) or 1)
    return min(1.0, per_node / spec.vcpus)


def price_attempt(
    attempt: Attempt,
    histories: Mapping[tuple[str, str], PriceHistory],
    rates: StorageRates = StorageRates(),
) -> AttemptCost:
    nodes: list[NodeCost] = []
    flags: list[str] = []
    for use in attempt.nodes:
        if not use.instance_type or not use.availability_zone:
            flags.append(f"unresolved-node:{use.node}")
            nodes.append(NodeCost(use.node, use.instance_id, None, None, 0.0, 0.0, 0.0))
            continue
        share = node_share(attempt, use.instance_type)
        history = histories.get((use.instance_type, use.availability_zone))
        if not history:
            flags.append(f"no-spot-price:{use.instance_type}@{use.availability_zone}")
            compute = 0.0
        else:
            compute = history.dollars(attempt.start, attempt.end) * share
        ebs = share * sum(
            v.size_gb * EBS_USD_PER_GB_MONTH.get(v.volume_type, EBS_USD_PER_GB_MONTH["gp3"])
            for v in use.volumes
        )
        ebs *= attempt.seconds / SECONDS_PER_MONTH
        nodes.append(
            NodeCost(
                use.node,
                use.instance_id,
                use.instance_type,
                use.availability_zone,
                share,
                compute,
                ebs,
            )
        )
    if not attempt.nodes and attempt.seconds > 0:
        flags.append("no-nodes-recorded")
    io = attempt.storage_io
    if io is None and attempt.seconds > 0:
        flags.append("storage-io-unmetered")
    return AttemptCost(
        key=attempt.key,
        state=attempt.state,
        start=attempt.start,
        end=attempt.end,
        reclaimed=attempt.reclaimed,
        compute_usd=sum(n.compute_usd for n in nodes),
        ebs_usd=sum(n.ebs_usd for n in nodes),
        nodes=tuple(nodes),
        flags=tuple(flags),
        storage_io_usd=rates.dollars(io) if io is not None else 0.0,
        storage_read_bytes=io.read_bytes if io is not None else None,
        storage_write_bytes=io.write_bytes if io is not None else None,
    )


def price_job(
    attempts: Sequence[Attempt],
    histories: Mapping[tuple[str, str], PriceHistory],
    *,
    vanished_instances: frozenset[str] | set[str] = frozenset(),
    rates: StorageRates = StorageRates(),
) -> JobCost:
    """Sum a job's attempts. ``vanished_instances`` were gone when pricing ran: their nodes are
    priced from the record (type, AZ, volumes as written at the attempt's end) and flagged."""
    if not attempts:
        raise ValueError("a job needs at least one attempt to be priced")
    ordered = sorted({a.key: a for a in attempts}.values(), key=lambda a: a.start)
    priced = tuple(price_attempt(a, histories, rates) for a in ordered)
    flags = {flag for a in priced for flag in a.flags}
    flags.update(
        f"priced-from-record:{n.instance_id}"
        for a in ordered
        for n in a.nodes
        if n.instance_id and n.instance_id in vanished_instances
    )
    last = ordered[-1]
    return JobCost(
        cluster=last.cluster,
        job_id=last.job_id,
        user=last.user,
        job_name=last.job_name,
        partition=last.partition,
        first_start=ordered[0].start,
        last_end=max(a.end for a in ordered),
        attempts=priced,
        flags=tuple(sorted(flags)),
    )
