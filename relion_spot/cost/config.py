"""Where the cost code finds its tables, cluster and tuning: environment variables, optionally
seeded from a KEY=VALUE file.

The file exists for the Slurm controller: ``jobcomp/script`` runs its program with an
environment of Slurm's making (job fields and PATH only), so the table name, region and the
container's credential endpoint (``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` on ECS) reach the
record writer through ``RELION_SPOT_COST_CONFIG`` or the default file below.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE_VARIABLE = "RELION_SPOT_COST_CONFIG"
DEFAULT_CONFIG_FILE = Path("/etc/relion-spot/cost.env")

CLUSTER = "RELION_SPOT_CLUSTER"
RECORDS_TABLE = "RELION_SPOT_RECORDS_TABLE"
COSTS_TABLE = "RELION_SPOT_COSTS_TABLE"
LAUNCH_TEMPLATES = "RELION_SPOT_LAUNCH_TEMPLATES"
"""JSON list of {"launch_template_id": ..., "tags": {...}}: the node groups whose launches the
tag repair watches, and the launch tags each one's instances must carry."""
WINDOW_HOURS = "RELION_SPOT_PRICING_WINDOW_HOURS"
LOOKBACK_HOURS = "RELION_SPOT_JOB_LOOKBACK_HOURS"
RECONCILE_DAYS = "RELION_SPOT_RECONCILE_DAYS"
METRIC_NAMESPACE = "RELION_SPOT_METRIC_NAMESPACE"
STORAGE_READ_RATE = "RELION_SPOT_STORAGE_READ_USD_PER_GIB"
STORAGE_WRITE_RATE = "RELION_SPOT_STORAGE_WRITE_USD_PER_GIB"
"""What the shared file system bills per GiB read and written in its throughput mode (zero
outside Elastic); the cluster stack fills them from the dated price table."""

DEFAULT_NAMESPACE = "RelionSpot"


class ConfigError(ValueError):
    """A missing or malformed setting; the message names it and what is accepted."""


def load_env_file(path: Path, environ: MutableMapping[str, str]) -> None:
    """Add KEY=VALUE lines of ``path`` to ``environ`` without overriding what is already set."""
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        environ.setdefault(key, value.strip().strip("'\""))


def seed_environment(environ: MutableMapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    explicit = environ.get(CONFIG_FILE_VARIABLE)
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if path.is_file():
        load_env_file(path, environ)
    elif explicit:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={explicit!r}: no such file")


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive number")
    return value


def _rate(environ: Mapping[str, str], name: str) -> float:
    raw = environ.get(name, "")
    if not raw.strip():
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={raw!r}: expected dollars per GiB, zero or more")
    return value


def _required(environ: Mapping[str, str], name: str, what: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; it must name {what}")
    return value


def _launch_templates(raw: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    if not raw.strip():
        return ()
    accepted = 'a JSON list of {"launch_template_id": "lt-...", "tags": {"key": "value"}}'
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        raise ConfigError(f"{LAUNCH_TEMPLATES}={raw!r}: expected {accepted}") from None
    parsed = []
    for entry in entries if isinstance(entries, list) else [None]:
        template = entry.get("launch_template_id") if isinstance(entry, dict) else None
        launch_tags = entry.get("tags", {}) if isinstance(entry, dict) else None
        if (
            not isinstance(template, str)
            or not template
            or not isinstance(launch_tags, dict)
            or not all(isinstance(v, str) for v in launch_tags.values())
        ):
            raise ConfigError(f"{LAUNCH_TEMPLATES}: entry {entry!r} is not {accepted}")
        parsed.append((template, tuple(sorted(launch_tags.items()))))
    return tuple(parsed)


@dataclass(frozen=True)
class CostConfig:
    cluster: str
    records_table: str
    costs_table: str = ""
    launch_templates: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    """(launch template id, launch tags) per watched node group."""
    window_hours: float = 24.0
    lookback_hours: float = 168.0
    reconcile_days: int = 3
    metric_namespace: str = DEFAULT_NAMESPACE
    storage_read_usd_per_gib: float = 0.0
    storage_write_usd_per_gib: float = 0.0

    @property
    def launch_template_tags(self) -> dict[str, dict[str, str]]:
        return {template: dict(values) for template, values in self.launch_templates}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, need_costs: bool = True):
        environ = os.environ if environ is None else environ
        return cls(
            cluster=_required(environ, CLUSTER, "the cluster (its tag value)"),
            records_table=_required(environ, RECORDS_TABLE, "the job-attempt records table"),
            costs_table=(
                _required(environ, COSTS_TABLE, "the job cost table") if need_costs else ""
            ),
            launch_templates=_launch_templates(environ.get(LAUNCH_TEMPLATES, "")),
            window_hours=_positive(environ, WINDOW_HOURS, 24.0),
            lookback_hours=_positive(environ, LOOKBACK_HOURS, 168.0),
            reconcile_days=int(_positive(environ, RECONCILE_DAYS, 3)),
            metric_namespace=environ.get(METRIC_NAMESPACE, "") or DEFAULT_NAMESPACE,
            storage_read_usd_per_gib=_rate(environ, STORAGE_READ_RATE),
            storage_write_usd_per_gib=_rate(environ, STORAGE_WRITE_RATE),
        )
