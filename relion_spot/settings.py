"""Deployment settings: CDK context in, one typed and validated object out.

``app.py`` is the only place that reads context; everything else receives a ``Settings``. Every
bad value stops synth with one ``SettingsError`` that names the setting, the value given and what
would be accepted, so a lab member never has to read a traceback to fix a typo.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from . import catalog

EgressMode = Literal["public", "nat-instance", "nat-gateway"]
EfsThroughput = Literal["elastic", "bursting", "provisioned"]
EFS_THROUGHPUTS: tuple[EfsThroughput, ...] = ("elastic", "bursting", "provisioned")
MAX_PROVISIONED_MIBPS = 1024
ControllerCapacity = Literal["spot", "on-demand"]

EGRESS_MODES: tuple[EgressMode, ...] = ("public", "nat-instance", "nat-gateway")
CONTROLLER_CAPACITIES: tuple[ControllerCapacity, ...] = ("spot", "on-demand")
MAX_NODES_LIMIT = 256
"""Upper bound on nodes per group: Slurm node names are pre-declared, and a larger figure is more
likely a typo than a plan (the account's spot vCPU quota is the real ceiling)."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_TAG_VALUE_RE = re.compile(r"^[\w .:/=+@-]{1,128}$")
_IMAGE_RE = re.compile(
    r"^(def:[\w./-]+(:[\w./-]+)?"
    r"|(docker|oras|library)://[\w./:@-]+"
    r"|(docker-archive|oci-archive):/[\w./-]+"
    r"|/[\w./-]+\.sif)$"
)
_EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
MAX_MONTHLY_BUDGET_USD = 1_000_000
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FILE_SYSTEM_ID_RE = re.compile(r"^fs-[0-9a-f]{8,17}$")
_IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


class SettingsError(ValueError):
    """A setting that cannot be deployed; the message is meant for the user, verbatim."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        super().__init__(f"setting '{setting}' = {value!r} is not valid: {accepted}")


@dataclass(frozen=True)
class Settings:
    """Everything a deployment may vary. Defaults give the canonical 1-GPU benchmark cluster."""

    name: str = "relion-spot"
    """Prefix of every stack and cluster name; lets several deployments share an account."""
    region: str = "us-east-1"
    account: str | None = None
    """None synthesizes an environment-agnostic template (the CLI fills it in at deploy)."""
    azs: tuple[str, ...] = ()
    """Explicit availability zones; empty means the region's first ``az_count`` zones, resolved
    by CloudFormation at deploy time."""
    az_count: int = 3
    gpus: tuple[int, ...] = (1,)
    """One cluster stack per GPU count, side by side."""
    gpu_types: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: dict(catalog.DEFAULT_GPU_TYPES)
    )
    max_nodes: int = 4
    """Most GPU nodes one cluster may run at once."""
    cpu_types: tuple[str, ...] = catalog.DEFAULT_CPU_TYPES
    cpu_max_nodes: int = 1
    """CPU nodes for staging data and light jobs."""
    keep_data: bool = True
    """Whether ``cdk destroy`` keeps the EFS file system (the lab's data)."""
    controller_capacity: ControllerCapacity = "spot"
    egress: EgressMode = "public"
    project: str = "relion-spot"
    """Value of the ``Project`` cost-allocation tag on every resource."""
    node_idle_seconds: int = 600
    """How long a node may sit idle before Slurm powers it down (SuspendTime)."""
    controller_idle_seconds: int = 1800
    """How long the controller may have no jobs, nodes or submissions before it stops itself
    (its state stays on EFS; the next submission wakes it)."""
    log_retention_days: int = 30
    relion_image: str = ""
    """The GPU jobs' RELION image; empty: the project's RELION 5 CUDA 12 recipe, built in the
    cluster by the image job (relion_spot.jobs.class3d.DEFAULT_IMAGE)."""
    monthly_budget_usd: float | None = None
    """Each cluster's spending cap per calendar month (UTC); None: no cap. Past it the resume
    program launches nothing and holds the waiting jobs (relion_spot.budget)."""
    notify_email: str | None = None
    """Where each cluster's notifications (job done, failed, reclaimed and resumed, budget
    reached) are e-mailed through its SNS topic; None: no topic."""
    stage_buckets: tuple[str, ...] = ()
    """S3 buckets the staging job (``submit stage --source s3://...``) may read, read-only."""
    adopt_file_system_id: str | None = None
    """An EFS file system an earlier deployment kept on ``cdk destroy`` (keep_data): this
    deployment mounts it instead of creating a new, empty one."""
    dashboard: bool = False
    """A CloudWatch dashboard per cluster: $3/month unless among the account's first three, so
    off by default: a sleeping cluster then bills nothing."""
    efs_throughput: EfsThroughput = "elastic"
    """EFS throughput mode. ``relion-spot estimate`` prints what each costs for the benchmark:
    Elastic bills every GiB moved and is the fastest; Bursting bills none but writes at most
    100 MiB/s while its credits last; Provisioned bills its MiB/s every month, asleep or not."""
    efs_provisioned_mibps: int = 0
    """MiB/s to provision (with efs_throughput=provisioned only)."""

    def cluster_name(self, gpu_count: int) -> str:
        return f"{self.name}-gpu{gpu_count}"

    @property
    def network_stack_name(self) -> str:
        return f"{self.name}-network"

    @property
    def storage_stack_name(self) -> str:
        return f"{self.name}-storage"


LOG_RETENTION_CHOICES = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827)
"""The retention periods CloudWatch Logs accepts."""


def _split(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [part.strip() for part in str(value).split(",")]


def _int(setting: str, value: object, accepted: str) -> int:
    if isinstance(value, bool):
        raise SettingsError(setting, value, accepted)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise SettingsError(setting, value, accepted)
    return int(text)


def _bool(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise SettingsError(setting, value, "true or false")


def _choice(setting: str, value: object, choices: tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in choices:
        raise SettingsError(setting, value, "one of " + ", ".join(choices))
    return text


def _parse_gpus(value: object) -> tuple[int, ...]:
    accepted = "a comma-separated list of GPU counts per cluster, each 1, 4 or 8 (e.g. 1,4)"
    counts: list[int] = []
    for part in _split(value):
        count = _int("gpus", part, accepted) if part else None
        if count not in catalog.SUPPORTED_GPU_COUNTS:
            raise SettingsError("gpus", value, accepted)
        if count in counts:
            raise SettingsError("gpus", value, accepted + "; each count once")
        counts.append(count)
    return tuple(counts)


def _parse_gpu_types(setting: str, value: object, gpu_count: int) -> tuple[str, ...]:
    valid = [n for n in catalog.gpu_types() if catalog.INSTANCE_TYPES[n].gpus == gpu_count]
    accepted = f"comma-separated EC2 types with {gpu_count} GPU(s): " + ", ".join(valid)
    types = _split(value)
    if not types or any(t not in valid for t in types) or len(set(types)) != len(types):
        raise SettingsError(setting, value, accepted)
    return tuple(types)


def _parse_cpu_types(value: object) -> tuple[str, ...]:
    valid = catalog.cpu_types()
    accepted = "comma-separated EC2 types without GPUs: " + ", ".join(valid)
    types = _split(value)
    if not types or any(t not in valid for t in types) or len(set(types)) != len(types):
        raise SettingsError("cpu_types", value, accepted)
    return tuple(types)


def _bounded(setting: str, value: object, low: int, high: int) -> int:
    accepted = f"a whole number from {low} to {high}"
    number = _int(setting, value, accepted)
    if not low <= number <= high:
        raise SettingsError(setting, value, accepted)
    return number


def _pattern(setting: str, value: object, pattern: re.Pattern[str], accepted: str) -> str:
    text = str(value).strip()
    if not pattern.fullmatch(text):
        raise SettingsError(setting, value, accepted)
    return text


_GPU_TYPES_PREFIX = "gpu_types_"

_PARSERS: dict[str, Callable[[object], Any]] = {
    "name": lambda v: _pattern(
        "name",
        v,
        _NAME_RE,
        "2-20 characters: lowercase letters, digits and '-', starting "
        "with a letter (it prefixes stack names, Slurm cluster names and tags)",
    ),
    "region": lambda v: _pattern("region", v, _REGION_RE, "an AWS region name such as us-east-1"),
    "account": lambda v: _pattern("account", v, _ACCOUNT_RE, "a 12-digit AWS account id"),
    "azs": lambda v: tuple(_split(v)),
    "az_count": lambda v: _bounded("az_count", v, 2, 6),
    "gpus": _parse_gpus,
    "max_nodes": lambda v: _bounded("max_nodes", v, 1, MAX_NODES_LIMIT),
    "cpu_types": _parse_cpu_types,
    "cpu_max_nodes": lambda v: _bounded("cpu_max_nodes", v, 1, MAX_NODES_LIMIT),
    "keep_data": lambda v: _bool("keep_data", v),
    "controller_capacity": lambda v: _choice("controller_capacity", v, CONTROLLER_CAPACITIES),
    "egress": lambda v: _choice("egress", v, EGRESS_MODES),
    "project": lambda v: _pattern(
        "project", v, _TAG_VALUE_RE, "1-128 letters, digits, spaces or _ . : / = + - @"
    ),
    "node_idle_seconds": lambda v: _bounded("node_idle_seconds", v, 60, 86_400),
    "controller_idle_seconds": lambda v: _bounded("controller_idle_seconds", v, 300, 86_400),
    "log_retention_days": lambda v: _retention(v),
    "dashboard": lambda v: _bool("dashboard", v),
    "relion_image": lambda v: _pattern(
        "relion_image",
        v,
        _IMAGE_RE,
        "an image Apptainer can make: docker://registry/name:tag (also oras://, library://), "
        "docker-archive:/path.tar, oci-archive:/path.tar, /path/image.sif, or "
        "def:/path/recipe.def[:/path/build.args]",
    ),
    "monthly_budget_usd": lambda v: _budget(v),
    "notify_email": lambda v: _pattern(
        "notify_email", v, _EMAIL_RE, "one e-mail address such as lab@example.org"
    ),
    "stage_buckets": lambda v: _parse_buckets(v),
    "adopt_file_system_id": lambda v: _pattern(
        "adopt_file_system_id",
        v,
        _FILE_SYSTEM_ID_RE,
        "an EFS file system id, fs- and 8 or 17 lowercase hex digits (the FileSystemId output "
        "of the deployment that kept it, e.g. fs-0123456789abcdef0)",
    ),
    "efs_throughput": lambda v: _choice("efs_throughput", v, EFS_THROUGHPUTS),
    "efs_provisioned_mibps": lambda v: _bounded(
        "efs_provisioned_mibps", v, 1, MAX_PROVISIONED_MIBPS
    ),
}

SETTING_NAMES: tuple[str, ...] = (
    *_PARSERS,
    *(f"{_GPU_TYPES_PREFIX}{n}" for n in catalog.SUPPORTED_GPU_COUNTS),
)


def _parse_buckets(value: object) -> tuple[str, ...]:
    """S3 bucket names as S3 names them (3-63 characters; no IP address, no ``..``); never a
    wildcard, so the grant names each bucket."""
    accepted = (
        "comma-separated S3 bucket names, each 3-63 lowercase letters, digits, '.' or '-', "
        "starting and ending with a letter or digit (e.g. my-lab-data,my-lab-raw); "
        "no wildcards, each bucket once"
    )
    names = _split(value) if str(value).strip() else []
    for name in names:
        if not _BUCKET_RE.fullmatch(name) or ".." in name or _IPV4_RE.fullmatch(name):
            raise SettingsError("stage_buckets", value, accepted)
    if len(set(names)) != len(names):
        raise SettingsError("stage_buckets", value, accepted)
    return tuple(names)


def _retention(value: object) -> int:
    accepted = "one of " + ", ".join(str(d) for d in LOG_RETENTION_CHOICES)
    days = _int("log_retention_days", value, accepted)
    if days not in LOG_RETENTION_CHOICES:
        raise SettingsError("log_retention_days", value, accepted)
    return days


def _budget(value: object) -> float:
    accepted = (
        f"an amount in US dollars above 0 and at most {MAX_MONTHLY_BUDGET_USD:,}, "
        "with at most two decimals (e.g. 500 or 250.50)"
    )
    text = "" if isinstance(value, bool) else str(value).strip()
    if not re.fullmatch(r"\d+(\.\d{1,2})?", text):
        raise SettingsError("monthly_budget_usd", value, accepted)
    amount = float(text)
    if not 0 < amount <= MAX_MONTHLY_BUDGET_USD:
        raise SettingsError("monthly_budget_usd", value, accepted)
    return amount


def is_cdk_context_key(key: str) -> bool:
    """Keys the CDK itself puts in context (feature flags, CLI bookkeeping, lookups)."""
    return (
        key.startswith(("@aws-cdk", "aws:", "aws-cdk:", "cdk-", "availability-zones:"))
        or ":" in key
        or key in {"acknowledged-issue-numbers", "cli-telemetry", "assetOutputs"}
    )


def from_context(context: Mapping[str, object]) -> Settings:
    """Build validated settings from CDK context (``-c key=value`` and cdk.json)."""
    values: dict[str, Any] = {}
    gpu_type_overrides: dict[int, object] = {}
    for key, value in context.items():
        if is_cdk_context_key(key):
            continue
        if key.startswith(_GPU_TYPES_PREFIX) and key in SETTING_NAMES:
            gpu_type_overrides[int(key.removeprefix(_GPU_TYPES_PREFIX))] = value
        elif key in _PARSERS:
            values[key] = _PARSERS[key](value)
        else:
            close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SettingsError(
                key, value, f"no such setting; {hint}settings are: " + ", ".join(SETTING_NAMES)
            )

    region = values.get("region", Settings.region)
    if "azs" in values:
        values["azs"] = _validate_azs(values["azs"], region)

    _check_throughput(values, context)
    gpus = cast(tuple[int, ...], values.get("gpus", Settings.gpus))
    gpu_types = dict(catalog.DEFAULT_GPU_TYPES)
    for count, raw in gpu_type_overrides.items():
        gpu_types[count] = _parse_gpu_types(f"{_GPU_TYPES_PREFIX}{count}", raw, count)
    values["gpu_types"] = {count: gpu_types[count] for count in gpus}
    if values.get("adopt_file_system_id") and values.get("keep_data") is False:
        raise SettingsError(
            "keep_data",
            context["keep_data"],
            "true while adopt_file_system_id is set: an adopted file system is never deleted by "
            "cdk destroy (the stack does not own it); leave keep_data out",
        )
    return Settings(**values)


def _check_throughput(values: dict[str, Any], context: Mapping[str, object]) -> None:
    """A provisioned rate goes with provisioned throughput, and only with it."""
    mode = values.get("efs_throughput", Settings.efs_throughput)
    rate = values.get("efs_provisioned_mibps")
    if mode == "provisioned" and rate is None:
        raise SettingsError(
            "efs_provisioned_mibps",
            None,
            f"efs_throughput=provisioned needs a rate: 1 to {MAX_PROVISIONED_MIBPS} MiB/s",
        )
    if mode != "provisioned" and rate is not None:
        raise SettingsError(
            "efs_provisioned_mibps",
            context["efs_provisioned_mibps"],
            "only with efs_throughput=provisioned",
        )


def _validate_azs(azs: tuple[str, ...], region: str) -> tuple[str, ...]:
    accepted = (
        f"2 to 6 distinct availability zones of region {region}, comma-separated "
        f"(e.g. {region}a,{region}b)"
    )
    if not 2 <= len(azs) <= 6 or len(set(azs)) != len(azs):
        raise SettingsError("azs", ",".join(azs), accepted)
    for az in azs:
        if not re.fullmatch(re.escape(region) + r"[a-z]", az):
            raise SettingsError("azs", ",".join(azs), accepted)
    return azs
