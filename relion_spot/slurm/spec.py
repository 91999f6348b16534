"""What slurm.conf needs to know about one cluster, and nothing else.

The controller container receives a ``ClusterSpec`` as JSON in an environment variable (the CDK
stack writes it; the local cloud writes it too) and renders slurm.conf from it at start, when its
own hostname and address are finally known. Keeping this separate from ``Settings`` means the
image never needs the CDK libraries, and the spec can describe a local cluster as well.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from .. import catalog

if TYPE_CHECKING:
    from ..settings import Settings

SPEC_ENV = "RELION_SPOT_SLURM_SPEC"
"""Environment variable that carries the ``ClusterSpec`` JSON into the controller container."""

SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818

GPU_PARTITION = "gpu"
CPU_PARTITION = "cpu"

LOCAL_GPU_DEVICE_PREFIX = "/run/relion-spot/gpu"
"""Where local-cloud node containers get placeholder GPU device files (see ``local_cloud``)."""

MEMORY_HEADROOM = 0.9
"""Share of an instance's nominal memory declared to Slurm (RealMemory). The kernel, the Docker
engine and slurmd itself take the rest; a job asking for all declared memory must still fit."""


class SpecError(ValueError):
    """A cluster spec that cannot be rendered; the message names the field and the value."""


@dataclass(frozen=True)
class PartitionSpec:
    """One node group: a partition of CLOUD nodes ``<node_prefix>-[1-max_nodes]``."""

    name: str
    node_prefix: str
    max_nodes: int
    cpus: int
    real_memory_mib: int
    gpus: int
    instance_types: tuple[str, ...]
    """Published as node Features, so a job may constrain to a type."""
    default: bool = False

    @property
    def node_names(self) -> str:
        """The nodes as a Slurm host list expression, e.g. ``gpu-[1-4]`` or ``gpu-1``."""
        if self.max_nodes == 1:
            return f"{self.node_prefix}-1"
        return f"{self.node_prefix}-[1-{self.max_nodes}]"

    @property
    def def_mem_per_cpu_mib(self) -> int:
        """A job that names no memory gets its CPUs' share, so small jobs can share a node."""
        return self.real_memory_mib // self.cpus


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster as slurm.conf sees it. Timeouts in seconds."""

    cluster_name: str
    partitions: tuple[PartitionSpec, ...]
    suspend_time: int
    """Idle seconds before a node is powered down (Settings.node_idle_seconds)."""
    resume_timeout: int = 900
    suspend_timeout: int = 120
    slurmd_timeout: int = 60
    state_save_location: str = "/var/spool/slurmctld"
    slurmctld_port: int = SLURMCTLD_PORT
    slurmd_port: int = SLURMD_PORT
    powersave_bin_dir: str = "/opt/relion-spot/assets/slurm/bin"
    gpu_device_prefix: str = "/dev/nvidia"
    """GPU device files of a node are ``<prefix>0`` .. ``<prefix>N-1`` (gres.conf File=). Slurm
    drops GPUs that have no file, so the local cloud, whose nodes have none, points this at
    placeholder files the node entrypoint creates (``LOCAL_GPU_DEVICE_PREFIX``)."""
    config_overrides: bool = False
    """Take nodes to have the declared CPUs and memory whatever they report. Only for the local
    cloud, whose node containers all share the host's few cores."""
    min_job_age: int = 3600
    """Seconds a finished job stays visible to squeue/scontrol (no accounting database)."""

    def __post_init__(self) -> None:
        _check_name("cluster_name", self.cluster_name)
        if not self.partitions:
            raise SpecError("partitions: at least one partition is needed")
        names = [p.name for p in self.partitions]
        if len(set(names)) != len(names):
            raise SpecError(f"partitions: names must be unique, got {names}")
        prefixes = [p.node_prefix for p in self.partitions]
        if len(set(prefixes)) != len(prefixes):
            raise SpecError(f"partitions: node prefixes must be unique, got {prefixes}")
        if sum(p.default for p in self.partitions) != 1:
            raise SpecError(f"partitions: exactly one must be the default, got {names}")
        for part in self.partitions:
            _check_name("partition name", part.name)
            _check_name("node_prefix", part.node_prefix)
            for attr in ("max_nodes", "cpus", "real_memory_mib"):
                _check_positive(f"partition {part.name}: {attr}", getattr(part, attr))
            if part.gpus < 0:
                raise SpecError(f"partition {part.name}: gpus = {part.gpus}, need 0 or more")
        for attr in (
            "suspend_time",
            "resume_timeout",
            "suspend_timeout",
            "slurmd_timeout",
            "slurmctld_port",
            "slurmd_port",
            "min_job_age",
        ):
            _check_positive(attr, getattr(self, attr))
        if not self.gpu_device_prefix.startswith("/"):
            raise SpecError(
                f"gpu_device_prefix = {self.gpu_device_prefix!r}, need an absolute path"
            )
        if not self.state_save_location.startswith("/"):
            raise SpecError(
                f"state_save_location = {self.state_save_location!r}, need an absolute path"
            )

    @property
    def default_partition(self) -> PartitionSpec:
        return next(p for p in self.partitions if p.default)

    def partition_of(self, node_name: str) -> PartitionSpec | None:
        """The partition whose nodes are named ``<node_prefix>-<n>``, if any."""
        prefix = node_name.rsplit("-", 1)[0]
        return next((p for p in self.partitions if p.node_prefix == prefix), None)

    @property
    def uses_gpus(self) -> bool:
        return any(p.gpus for p in self.partitions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        """Parse what ``to_json`` wrote; anything else raises ``SpecError`` naming the problem."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"cluster spec is not JSON ({err.msg} at char {err.pos})") from None
        if not isinstance(data, dict):
            raise SpecError(f"cluster spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"cluster spec has unknown fields {unknown}; known: {sorted(known)}")
        raw_parts = data.get("partitions")
        if not isinstance(raw_parts, list):
            raise SpecError("cluster spec: partitions must be a list of objects")
        data["partitions"] = tuple(_partition_from_dict(p) for p in raw_parts)
        try:
            return cls(**data)
        except TypeError as err:
            raise SpecError(f"cluster spec: {err}") from None


def _partition_from_dict(raw: Any) -> PartitionSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"cluster spec: a partition must be an object, got {raw!r}")
    raw = dict(raw)
    raw["instance_types"] = tuple(raw.get("instance_types", ()))
    try:
        return PartitionSpec(**raw)
    except TypeError as err:
        raise SpecError(f"cluster spec partition {raw.get('name')!r}: {err}") from None


def _check_name(what: str, value: object) -> None:
    text = str(value)
    if not text or not all(c.isalnum() or c in "-_" for c in text) or not text[0].isalpha():
        raise SpecError(
            f"{what} = {value!r}: use letters, digits, '-' or '_', starting with a letter"
        )


def _check_positive(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{what} = {value!r}, need a whole number above 0")


def partition_for_types(
    *, name: str, instance_types: tuple[str, ...], max_nodes: int, default: bool
) -> PartitionSpec:
    """A node group over several instance types, declared as the smallest of them.

    Slurm holds one static description per node, but the fleet may land any of the group's
    types: declaring the minimum CPUs and memory means a job that fits the declaration fits
    whichever type arrives (nodes register with SlurmdParameters=config_overrides).
    """
    if not instance_types:
        raise SpecError(f"partition {name}: needs at least one instance type")
    unknown = [t for t in instance_types if t not in catalog.INSTANCE_TYPES]
    if unknown:
        raise SpecError(
            f"partition {name}: unknown instance types {unknown}; "
            f"known: {', '.join(sorted(catalog.INSTANCE_TYPES))}"
        )
    specs = [catalog.INSTANCE_TYPES[t] for t in instance_types]
    gpu_counts = {s.gpus for s in specs}
    if len(gpu_counts) != 1:
        raise SpecError(
            f"partition {name}: instance types {list(instance_types)} have different GPU "
            f"counts {sorted(gpu_counts)}; one group needs one count"
        )
    return PartitionSpec(
        name=name,
        node_prefix=name,
        max_nodes=max_nodes,
        cpus=min(s.vcpus for s in specs),
        real_memory_mib=int(min(s.memory_gib for s in specs) * 1024 * MEMORY_HEADROOM),
        gpus=gpu_counts.pop(),
        instance_types=tuple(instance_types),
        default=default,
    )


def spec_from_settings(settings: Settings, gpu_count: int, **overrides: Any) -> ClusterSpec:
    """The spec of the cluster stack for ``gpu_count`` GPUs per node.

    ``overrides`` set ClusterSpec fields that are not settings (see ``LOCAL_CLOUD``).
    """
    if gpu_count not in settings.gpus:
        raise SpecError(
            f"gpu_count = {gpu_count!r} is not one of the deployment's GPU counts {settings.gpus}"
        )
    gpu = partition_for_types(
        name=GPU_PARTITION,
        instance_types=tuple(settings.gpu_types[gpu_count]),
        max_nodes=settings.max_nodes,
        default=True,
    )
    cpu = partition_for_types(
        name=CPU_PARTITION,
        instance_types=tuple(settings.cpu_types),
        max_nodes=settings.cpu_max_nodes,
        default=False,
    )
    return ClusterSpec(
        cluster_name=settings.cluster_name(gpu_count),
        partitions=(gpu, cpu),
        suspend_time=settings.node_idle_seconds,
        **overrides,
    )


LOCAL_CLOUD: dict[str, Any] = {
    "gpu_device_prefix": LOCAL_GPU_DEVICE_PREFIX,
    "config_overrides": True,
}
"""``spec_from_settings`` overrides for node containers on one local host without GPUs."""
