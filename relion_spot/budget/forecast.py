"""What the month will have cost if one more launch goes ahead.

    month's priced spend                  (ledger: jobs the cost Lambda has priced)
  + running jobs: time so far + HORIZON   (not priced until their attempt ends)
  + the launch asked for: HORIZON         (every node it would start)

Each node-hour is priced at the on-demand price of the most expensive type its group may launch
(the project's catalog): EC2 never bills spot above on-demand, so the forecast errs high and a
cap is not passed by a spot price that moved. RELION jobs have no time limit to price ahead, so
the forecast looks one hour ahead (``HORIZON_SECONDS``): a launch goes ahead only while the cap
leaves room for an hour more of every node, and running jobs are never stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..catalog import INSTANCE_TYPES
from ..powersave.config import NodeGroup
from ..slurm.squeue import SlurmJob

HORIZON_SECONDS = 3600
CENTS = 2


class UnpricedGroupError(ValueError):
    """A node group whose types the catalog has no price for: it cannot be kept under a cap."""


def node_hour_usd(group: NodeGroup) -> float:
    """The most a node of ``group`` can bill per hour."""
    prices = [
        INSTANCE_TYPES[t].on_demand_usd_hour for t in group.instance_types if t in INSTANCE_TYPES
    ]
    unknown = [t for t in group.instance_types if t not in INSTANCE_TYPES]
    if unknown or not prices:
        raise UnpricedGroupError(
            f"partition {group.partition}: no price for {', '.join(unknown) or 'its types'}"
        )
    return max(prices)


@dataclass(frozen=True)
class Forecast:
    cap_usd: float | None
    spent_usd: float
    running_usd: float
    asked_usd: float

    @property
    def total_usd(self) -> float:
        return round(self.spent_usd + self.running_usd + self.asked_usd, 6)

    @property
    def left_usd(self) -> float | None:
        """What the cap leaves after the spend and the running jobs (before the launch)."""
        if self.cap_usd is None:
            return None
        return round(self.cap_usd - self.spent_usd - self.running_usd, 6)

    @property
    def would_pass(self) -> bool:
        return self.cap_usd is not None and self.total_usd > self.cap_usd

    def describe(self) -> str:
        cap = "no cap" if self.cap_usd is None else f"cap ${self.cap_usd:.{CENTS}f}"
        return (
            f"month's spend ${self.spent_usd:.{CENTS}f} + running jobs "
            f"${self.running_usd:.{CENTS}f} + this launch ${self.asked_usd:.{CENTS}f} "
            f"(an hour ahead at on-demand prices) = ${self.total_usd:.{CENTS}f}, {cap}"
        )


def running_usd(
    jobs: Iterable[SlurmJob],
    groups: Mapping[str, NodeGroup],
    *,
    now: float,
    excluded_nodes: Iterable[str] = (),
) -> float:
    """Time so far plus the horizon of every job holding nodes, except jobs on
    ``excluded_nodes`` (the nodes being asked for, priced as the launch itself)."""
    excluded = set(excluded_nodes)
    total = 0.0
    for job in jobs:
        if not job.active or excluded.intersection(job.nodes):
            continue
        group = groups.get(job.partition)
        if group is None:
            raise UnpricedGroupError(
                f"job {job.job_id} runs in unknown partition {job.partition!r}"
            )
        seconds = max(0.0, now - job.start_time) if job.start_time else 0.0
        total += job.node_count * node_hour_usd(group) * (seconds + HORIZON_SECONDS) / 3600
    return round(total, 6)


def horizon_usd(group: NodeGroup, node_count: int) -> float:
    return round(node_count * node_hour_usd(group) * HORIZON_SECONDS / 3600, 6)
