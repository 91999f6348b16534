"""EC2 instance types the node groups may use, with what Slurm, preflight and pricing need to know.

Figures are AWS's published specifications (us-east-1 on-demand Linux prices, 2026-11). They are
data, not a lookup: synth must work offline and give the same template everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: int
    nvme_gb: int
    """Local instance-store NVMe, GB (0 = none). RELION's --scratch_dir lives here."""
    on_demand_usd_hour: float
    gpus: int = 0
    gpu_model: str = ""
    gpu_memory_gib: float = 0.0
    """Memory per GPU as the driver reports it to applications."""

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]


def _gpu(
    name: str, gpus: int, model: str, mem: float, vcpus: int, ram: int, nvme: int, price: float
) -> InstanceType:
    return InstanceType(
        name=name,
        gpus=gpus,
        gpu_model=model,
        gpu_memory_gib=mem,
        vcpus=vcpus,
        memory_gib=ram,
        nvme_gb=nvme,
        on_demand_usd_hour=price,
    )


def _cpu(name: str, vcpus: int, ram: int, price: float) -> InstanceType:
    return InstanceType(name=name, vcpus=vcpus, memory_gib=ram, nvme_gb=0, on_demand_usd_hour=price)


_A10G, _L4, _L40S, _T4 = "NVIDIA A10G", "NVIDIA L4", "NVIDIA L40S", "NVIDIA T4"

INSTANCE_TYPES: dict[str, InstanceType] = {
    t.name: t
    for t in (
        _gpu("g5.xlarge", 1, _A10G, 22.0, 4, 16, 250, 1.006),
        _gpu("g5.2xlarge", 1, _A10G, 22.0, 8, 32, 450, 1.212),
        _gpu("g5.4xlarge", 1, _A10G, 22.0, 16, 64, 600, 1.624),
        _gpu("g5.8xlarge", 1, _A10G, 22.0, 32, 128, 900, 2.448),
        _gpu("g5.12xlarge", 4, _A10G, 22.0, 48, 192, 3800, 5.672),
        _gpu("g5.24xlarge", 4, _A10G, 22.0, 96, 384, 3800, 8.144),
        _gpu("g5.48xlarge", 8, _A10G, 22.0, 192, 768, 7600, 16.288),
        _gpu("g6.xlarge", 1, _L4, 22.0, 4, 16, 250, 0.8048),
        _gpu("g6.2xlarge", 1, _L4, 22.0, 8, 32, 450, 0.9776),
        _gpu("g6.4xlarge", 1, _L4, 22.0, 16, 64, 600, 1.3232),
        _gpu("g6.12xlarge", 4, _L4, 22.0, 48, 192, 3760, 4.6016),
        _gpu("g6.24xlarge", 4, _L4, 22.0, 96, 384, 3760, 6.6752),
        _gpu("g6.48xlarge", 8, _L4, 22.0, 192, 768, 7520, 13.3504),
        _gpu("g6e.xlarge", 1, _L40S, 44.5, 4, 32, 250, 1.861),
        _gpu("g6e.2xlarge", 1, _L40S, 44.5, 8, 64, 450, 2.242),
        _gpu("g6e.12xlarge", 4, _L40S, 44.5, 48, 384, 3800, 10.493),
        _gpu("g6e.24xlarge", 4, _L40S, 44.5, 96, 768, 3800, 15.066),
        _gpu("g6e.48xlarge", 8, _L40S, 44.5, 192, 1536, 7600, 30.131),
        _gpu("g4dn.xlarge", 1, _T4, 15.0, 4, 16, 125, 0.526),
        _gpu("g4dn.2xlarge", 1, _T4, 15.0, 8, 32, 225, 0.752),
        _gpu("g4dn.12xlarge", 4, _T4, 15.0, 48, 192, 900, 3.912),
        _gpu("g4dn.metal", 8, _T4, 15.0, 96, 384, 1800, 7.824),
        _cpu("m7a.large", 2, 8, 0.11592),
        _cpu("m7a.xlarge", 4, 16, 0.23184),
        _cpu("m6a.large", 2, 8, 0.0864),
        _cpu("m6a.xlarge", 4, 16, 0.1728),
        _cpu("m6i.large", 2, 8, 0.096),
        _cpu("m6i.xlarge", 4, 16, 0.192),
        _cpu("m5.large", 2, 8, 0.096),
        _cpu("m5.xlarge", 4, 16, 0.192),
    )
}

DEFAULT_GPU_TYPES: dict[int, tuple[str, ...]] = {
    1: ("g5.xlarge", "g6.xlarge"),
    4: ("g5.12xlarge", "g6.12xlarge"),
    8: ("g5.48xlarge", "g6.48xlarge"),
}
"""GPU count -> instance types, the reference type first. Alternatives have the same GPU count
and a 24 GB-class GPU, so a spot shortage of one type does not stall the lab."""

DEFAULT_CPU_TYPES: tuple[str, ...] = ("m6a.xlarge", "m6i.xlarge", "m7a.xlarge", "m5.xlarge")

SUPPORTED_GPU_COUNTS: tuple[int, ...] = tuple(sorted(DEFAULT_GPU_TYPES))


def gpu_types() -> list[str]:
    return sorted(n for n, t in INSTANCE_TYPES.items() if t.gpus)


def cpu_types() -> list[str]:
    return sorted(n for n, t in INSTANCE_TYPES.items() if not t.gpus)
