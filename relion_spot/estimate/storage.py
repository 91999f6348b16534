"""The storage-design model for the canonical refinement: what each way of holding the data
costs per refinement, per month at rest, and in wall time, from the dated price table.

Modelled, not measured (no AWS here): wall time is the seed's GPU minutes plus the time to copy
the particle stack to the node's NVMe scratch and to write each iteration's output (K class maps
of box^3 float32 and a data.star line per particle) at the ceiling the file system, the NFS
client and the instance's network allow. The comparison rests on the differences between
designs, which come from published limits and prices; the seed's minutes are common to all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB_MIB = 1024
DATA_STAR_BYTES_PER_PARTICLE = 400
"""A RELION 5 data.star particle line with this job's columns (about 30 fields): an estimate."""
DATASETS = ("efs", "s3")
THROUGHPUTS = ("bursting", "elastic", "provisioned")
CURRENT = ("efs", "elastic")
"""The design deployed before this model: the yardstick for "equal or better wall time"."""


@dataclass(frozen=True)
class Refinement:
    """The canonical benchmark job (EMPIAR-10028 Class3D, as in the published case study)."""

    gpus: int
    instance_type: str
    gpu_minutes: float
    particles: int = 105_247
    box: int = 360
    classes: int = 6
    iterations: int = 25
    dataset_gib: float = 47.0

    @property
    def output_gib_per_iteration(self) -> float:
        maps = self.classes * self.box**3 * 4
        return (maps + self.particles * DATA_STAR_BYTES_PER_PARTICLE) / 2**30

    @property
    def output_gib(self) -> float:
        return self.output_gib_per_iteration * self.iterations


BENCHMARK = {
    1: Refinement(gpus=1, instance_type="g5.xlarge", gpu_minutes=198.0),
    4: Refinement(gpus=4, instance_type="g5.12xlarge", gpu_minutes=96.0),
}
"""The seed's published wall times: 1x A10G 198 min, 4x A10G 96 min."""


@dataclass(frozen=True)
class Design:
    dataset: str
    """Where the particle stack lives: ``efs`` (RELION copies it to scratch) or ``s3``
    (copied straight to scratch before RELION starts)."""
    throughput: str
    provisioned_mibps: int = 0

    @property
    def label(self) -> str:
        mode = self.throughput + (
            f" {self.provisioned_mibps} MiB/s" if self.throughput == "provisioned" else ""
        )
        return f"{self.dataset.upper()}->scratch, EFS {mode}"


@dataclass(frozen=True)
class DesignCost:
    design: Design
    copy_minutes: float
    write_minutes: float
    wall_minutes: float
    compute_usd: float
    read_usd: float
    """Copying the stack to scratch: EFS reads (Elastic) or S3 GETs."""
    write_usd: float
    """Writing every iteration's output to EFS (Elastic)."""
    standing_usd_month: float
    metered_gib: float
    """What the job spends of Bursting's credits (reads count a third)."""
    refinements_per_day_in_credits: float | None
    """How many a day the credits the stored data earns can carry at burst speed (Bursting)."""

    @property
    def storage_io_usd(self) -> float:
        return self.read_usd + self.write_usd

    @property
    def all_in_usd(self) -> float:
        return self.compute_usd + self.storage_io_usd


def _bursting_baseline_mibps(efs: dict[str, Any], stored_gib: float) -> float:
    per_gib = efs["bursting_baseline_kibps_per_gib"] / 1024
    return max(efs["bursting_minimum_baseline_mibps"], per_gib * stored_gib)


def price_design(job: Refinement, design: Design, prices: dict[str, Any]) -> DesignCost:
    efs, s3 = prices["efs"], prices["s3"]
    network = prices["instance_network_mibps"][job.instance_type]
    client = efs["client_limit_mibps"][design.throughput]
    read_fraction = efs["read_metering_fraction"]
    if design.throughput == "bursting":
        fs_write = efs["bursting_burst_mibps"]
    elif design.throughput == "provisioned":
        fs_write = design.provisioned_mibps
    else:
        fs_write = client
    fs_read = fs_write / read_fraction if design.throughput != "elastic" else client
    dataset_mib = job.dataset_gib * GIB_MIB
    if design.dataset == "efs":
        copy_seconds = dataset_mib / min(fs_read, client, network)
        efs_read_gib = job.dataset_gib
        s3_gets = 0
    else:
        copy_seconds = dataset_mib / network
        efs_read_gib = 0.0
        s3_gets = math.ceil(dataset_mib / s3["part_mib"])
    write_seconds = job.output_gib * GIB_MIB / min(fs_write, client, network)
    wall = job.gpu_minutes + (copy_seconds + write_seconds) / 60
    read_usd = s3_gets * s3["get_per_1000"] / 1000
    write_usd = 0.0
    if design.throughput == "elastic":
        read_usd += efs_read_gib * efs["elastic_read_gb"]
        write_usd = job.output_gib * efs["elastic_write_gb"]
    stored_gib = job.output_gib + (job.dataset_gib if design.dataset == "efs" else 0.0)
    baseline = _bursting_baseline_mibps(efs, stored_gib)
    standing = 0.0
    if design.throughput == "provisioned":
        standing = max(0.0, design.provisioned_mibps - baseline) * efs["provisioned_mibps_month"]
    metered = efs_read_gib * read_fraction + job.output_gib
    per_day = None
    if design.throughput == "bursting":
        per_day = baseline * 86_400 / GIB_MIB / metered
    compute = wall / 60 * prices["seed_spot_hour"][job.instance_type]
    return DesignCost(
        design=design,
        copy_minutes=copy_seconds / 60,
        write_minutes=write_seconds / 60,
        wall_minutes=wall,
        compute_usd=compute,
        read_usd=read_usd,
        write_usd=write_usd,
        standing_usd_month=standing,
        metered_gib=metered,
        refinements_per_day_in_credits=per_day,
    )


def storage_io_rates(throughput: str, prices: dict[str, Any]) -> tuple[float, float]:
    """What the file system bills per GiB read and written in this throughput mode."""
    if throughput != "elastic":
        return (0.0, 0.0)
    return (prices["efs"]["elastic_read_gb"], prices["efs"]["elastic_write_gb"])


def designs(provisioned_mibps: int) -> list[Design]:
    return [
        Design(dataset, throughput, provisioned_mibps if throughput == "provisioned" else 0)
        for dataset in DATASETS
        for throughput in THROUGHPUTS
    ]


def choose(costs: list[DesignCost]) -> DesignCost:
    """The lowest all-in cost per refinement among designs that stand at $0 while asleep and
    are no slower than the current design."""
    current = next(c for c in costs if (c.design.dataset, c.design.throughput) == CURRENT)
    eligible = [
        c
        for c in costs
        if c.standing_usd_month == 0 and c.wall_minutes <= current.wall_minutes + 1e-9
    ]
    return min(eligible, key=lambda c: (c.all_in_usd, c.wall_minutes))


@dataclass(frozen=True)
class AtRest:
    store: str
    usd_month: float
    usd_per_read: float
    """Access charge each time a refinement reads the whole stack (IA retrieval)."""


def at_rest(job: Refinement, prices: dict[str, Any]) -> list[AtRest]:
    efs, s3 = prices["efs"], prices["s3"]
    gib = job.dataset_gib
    return [
        AtRest("EFS Standard", gib * efs["standard_gb_month"], 0.0),
        AtRest(
            "EFS Infrequent Access",
            gib * efs["infrequent_access_gb_month"],
            gib * efs["infrequent_access_read_gb"],
        ),
        AtRest(
            "S3 Standard",
            gib * s3["standard_gb_month"],
            math.ceil(gib * GIB_MIB / s3["part_mib"]) * s3["get_per_1000"] / 1000,
        ),
    ]


def staging_usd(job: Refinement, dataset: str, throughput: str, prices: dict[str, Any]) -> float:
    """Putting the dataset in place once: on EFS the tarball is written, read and extracted
    (written again); into S3 each 8 MiB part is one PUT (transfer in is free)."""
    efs, s3 = prices["efs"], prices["s3"]
    gib = job.dataset_gib
    if dataset == "s3":
        return math.ceil(gib * GIB_MIB / s3["part_mib"]) * s3["put_per_1000"] / 1000
    if throughput != "elastic":
        return 0.0
    return gib * (2 * efs["elastic_write_gb"] + efs["elastic_read_gb"])


def reclaim_premium(
    job: Refinement, cost: DesignCost, *, reclaim_after: int, resumes: bool
) -> float:
    """What one reclaim during iteration ``reclaim_after + 1`` adds, the iteration in progress
    counted as half lost: the fresh node copies the stack to its scratch again (time and read
    charges); a job that resumes loses nothing more, one that restarts from zero repeats the
    ``reclaim_after`` finished iterations and rewrites their output."""
    per_iteration = job.gpu_minutes / job.iterations
    minutes = cost.copy_minutes + 0.5 * per_iteration
    usd = cost.read_usd
    if not resumes:
        done = reclaim_after / job.iterations
        minutes += reclaim_after * per_iteration + cost.write_minutes * done
        usd += cost.write_usd * done
    hourly = job_hourly(job, cost)
    return minutes / 60 * hourly + usd


def job_hourly(job: Refinement, cost: DesignCost) -> float:
    return cost.compute_usd / (cost.wall_minutes / 60)
