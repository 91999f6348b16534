"""What ``relion-spot selftest --gpu [--interrupt]`` costs at most, modelled from the price table:
the GPU node's on-demand price (the catalog; EC2 never bills spot above it) and its root volume
for the time the node lives, the CPU node that makes the data set (the dearest of the default
CPU types), plus FIS's price per action-minute for the interruption. A new cluster's first GPU
job also waits for the cluster's RELION image build on a CPU node; that is the deployment's
one-time cost, not the selftest's, and is left out.

The durations are assumptions until a real run measures them (the selftest prints each phase's
own time and cost): they are named here so the README's figure and the budget check share them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import DEFAULT_CPU_TYPES, INSTANCE_TYPES
from ..estimate.idle import load_prices
from ..settings import Settings

GPU_ROOT_VOLUME_GIB = 150
"""The GPU launch template's root volume (relion_spot.stacks.cluster, held equal by a test: the
CLI does not import the CDK app)."""
CPU_ROOT_VOLUME_GIB = 40
"""The same for the CPU launch template."""
DATA_SECONDS = 120.0
"""Assumed: the synthetic set's job on the CPU node (400 particles, box 40; 17 s for
200 on the embedded cloud's node container, measured by the selftest)."""
BOOT_SECONDS = 600.0
"""Assumed: launch to RELION running on a fresh GPU node (DLAMI boot, the Slurm image pull, the
node bootstrap, the RELION SIF built into the EFS cache on the first node of a deployment)."""
SECONDS_PER_ITERATION = 60.0
"""Assumed: one iteration of the selftest's tiny Class3D (box 40, K=2, 400 particles) on one
GPU; on two CPU cores it takes about 20-40 s (measured by the demo), a GPU is not slower."""
NOTICE_SECONDS = 120.0
"""The spot interruption notice FIS sends (durationBeforeInterruption, EC2's two minutes)."""


@dataclass(frozen=True)
class CostLine:
    what: str
    node_seconds: float
    usd: float


@dataclass(frozen=True)
class SelftestCost:
    instance_type: str
    lines: tuple[CostLine, ...]

    @property
    def total_usd(self) -> float:
        return sum(line.usd for line in self.lines)


def selftest_cost(
    *,
    instance_type: str,
    iterations: int,
    interrupt: bool,
    seconds_per_iteration: float = SECONDS_PER_ITERATION,
    idle_seconds: float | None = None,
) -> SelftestCost:
    """The modelled cost, line by line, of one selftest on ``instance_type``."""
    prices = load_prices()
    gib_hour = prices["ebs_gp3_gb_month"] / prices["hours_per_month"]
    node_hour = INSTANCE_TYPES[instance_type].on_demand_usd_hour + GPU_ROOT_VOLUME_GIB * gib_hour
    cpu_type = max(DEFAULT_CPU_TYPES, key=lambda t: INSTANCE_TYPES[t].on_demand_usd_hour)
    cpu_hour = INSTANCE_TYPES[cpu_type].on_demand_usd_hour + CPU_ROOT_VOLUME_GIB * gib_hour
    idle = float(Settings().node_idle_seconds if idle_seconds is None else idle_seconds)

    def node(what: str, seconds: float) -> CostLine:
        return CostLine(what, seconds, node_hour * seconds / 3600)

    data_seconds = BOOT_SECONDS + DATA_SECONDS + idle
    lines = [
        CostLine(
            f"CPU node ({cpu_type}): the data set, with boot and idle",
            data_seconds,
            cpu_hour * data_seconds / 3600,
        ),
        node("boot and bootstrap", BOOT_SECONDS),
    ]
    lines.append(node(f"{iterations} iterations", iterations * seconds_per_iteration))
    if interrupt:
        lines.append(node("interruption notice (the node runs on)", NOTICE_SECONDS))
        lines.append(node("second node: boot and bootstrap", BOOT_SECONDS))
        lines.append(node("the interrupted iteration again", seconds_per_iteration))
        fis_minutes = NOTICE_SECONDS / 60
        lines.append(
            CostLine(
                f"AWS FIS: {fis_minutes:g} action-minutes",
                0.0,
                fis_minutes * prices["fis_action_minute"],
            )
        )
    lines.append(node("idle before Slurm powers the node down", idle))
    return SelftestCost(instance_type, tuple(lines))
