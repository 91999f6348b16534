"""The power-save programs' settings, read once from the environment and validated.

slurmctld gives these programs an environment of its own; the wrappers in assets/slurm/bin load
what the controller entrypoint saved (every ``AWS_*`` and ``RELION_SPOT_*`` variable of the
container) before Python starts, so everything here arrives as environment variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..slurm.spec import SPEC_ENV, ClusterSpec, SpecError

CLUSTER_ENV = "RELION_SPOT_CLUSTER"
NODE_GROUPS_ENV = "RELION_SPOT_NODE_GROUPS"
SUBNETS_ENV = "RELION_SPOT_SUBNETS"
STATE_DIR_ENV = "RELION_SPOT_POWERSAVE_STATE_DIR"
"""Where the capacity memory lives. Default: ``relion-spot`` under the spec's StateSaveLocation
(EFS in the cloud), so a replaced controller remembers which types just ran out."""
LOG_FILE_ENV = "RELION_SPOT_POWERSAVE_LOG"
"""Log file besides stderr (slurmctld discards the programs' output). Empty: stderr only."""
BACKOFF_ENV = "RELION_SPOT_CAPACITY_BACKOFF_SECONDS"
SCONTROL_ENV = "RELION_SPOT_SCONTROL"
SQUEUE_ENV = "RELION_SPOT_SQUEUE"
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")

DEFAULT_LOG_FILE = "/var/log/slurm/relion-spot-powersave.log"
DEFAULT_STATE_SAVE_LOCATION = "/var/spool/slurmctld"
DEFAULT_BACKOFF_SECONDS = 900
"""How long an instance type that ran out of spot capacity is left out of launches. Long enough
that the requeued job's next launch attempt (SuspendTimeout later) goes elsewhere; short enough
that a pool that refills is used again within the hour."""
LAUNCH_TEMPLATE_VERSION = "$Latest"
"""A stack update adds a template version; launches follow it without a controller restart."""


class ConfigError(ValueError):
    """A missing or malformed setting; the message names it and what is accepted."""


@dataclass(frozen=True)
class NodeGroup:
    """One partition's launch settings; its nodes are ``<partition>-1`` .. ``-<max_nodes>``."""

    partition: str
    launch_template_id: str
    instance_types: tuple[str, ...]
    max_nodes: int
    gpus_per_node: int = 0


@dataclass(frozen=True)
class PowerSaveConfig:
    cluster: str
    groups: dict[str, NodeGroup]
    subnets: tuple[str, ...]
    region: str
    state_dir: Path
    backoff_seconds: int = DEFAULT_BACKOFF_SECONDS
    scontrol: str = "scontrol"
    squeue: str = "squeue"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PowerSaveConfig:
        env = os.environ if environ is None else environ
        cluster = env.get(CLUSTER_ENV, "").strip()
        if not cluster:
            raise ConfigError(f"{CLUSTER_ENV} is not set; it must name the cluster (its tag value)")
        region = next((env[name].strip() for name in REGION_ENVS if env.get(name, "").strip()), "")
        if not region:
            raise ConfigError("AWS_DEFAULT_REGION is not set; it must name the cluster's region")
        return cls(
            cluster=cluster,
            groups=parse_node_groups(env.get(NODE_GROUPS_ENV, "")),
            subnets=parse_subnets(env.get(SUBNETS_ENV, "")),
            region=region,
            state_dir=_state_dir(env),
            backoff_seconds=_backoff(env.get(BACKOFF_ENV, "")),
            scontrol=env.get(SCONTROL_ENV, "").strip() or "scontrol",
            squeue=env.get(SQUEUE_ENV, "").strip() or "squeue",
        )


_GROUPS_ACCEPTED = (
    'a JSON object {"<partition>": {"launch_template_id": "lt-...", "instance_types": '
    '["g5.xlarge", ...], "max_nodes": N, "gpus_per_node": N}, ...}'
)


def parse_node_groups(raw: str) -> dict[str, NodeGroup]:
    if not raw.strip():
        raise ConfigError(f"{NODE_GROUPS_ENV} is not set; it must be {_GROUPS_ACCEPTED}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{NODE_GROUPS_ENV} is not JSON ({err.msg} at char {err.pos}); expected "
            f"{_GROUPS_ACCEPTED}"
        ) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{NODE_GROUPS_ENV} = {raw!r}: expected {_GROUPS_ACCEPTED}")
    return {str(name): _group(str(name), value) for name, value in data.items()}


def _group(partition: str, value: Any) -> NodeGroup:
    where = f"{NODE_GROUPS_ENV}[{partition!r}]"
    if not partition or not all(c.isalnum() or c in "-_" for c in partition):
        raise ConfigError(f"{where}: partition names use letters, digits, '-' and '_'")
    if not isinstance(value, dict):
        raise ConfigError(f"{where} = {value!r}: expected an object")
    template = value.get("launch_template_id")
    types = value.get("instance_types")
    max_nodes = value.get("max_nodes")
    gpus = value.get("gpus_per_node", 0)
    if not isinstance(template, str) or not template.startswith("lt-"):
        raise ConfigError(f"{where}.launch_template_id = {template!r}: expected 'lt-...'")
    if (
        not isinstance(types, list)
        or not types
        or not all(isinstance(t, str) and "." in t for t in types)
    ):
        raise ConfigError(
            f"{where}.instance_types = {types!r}: expected a non-empty list like ['g5.xlarge']"
        )
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ConfigError(f"{where}.max_nodes = {max_nodes!r}: expected a whole number above 0")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ConfigError(f"{where}.gpus_per_node = {gpus!r}: expected 0 or more")
    return NodeGroup(
        partition=partition,
        launch_template_id=template,
        instance_types=tuple(dict.fromkeys(types)),
        max_nodes=max_nodes,
        gpus_per_node=gpus,
    )


def parse_subnets(raw: str) -> tuple[str, ...]:
    subnets = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    if not subnets:
        raise ConfigError(
            f"{SUBNETS_ENV} is not set; it must list the node subnets, comma-separated "
            "(subnet-...,subnet-...)"
        )
    bad = [s for s in subnets if not s.startswith("subnet-")]
    if bad:
        raise ConfigError(f"{SUBNETS_ENV}: {bad} are not subnet ids (subnet-...)")
    return subnets


def _backoff(raw: str) -> int:
    if not raw.strip():
        return DEFAULT_BACKOFF_SECONDS
    if not raw.strip().isdigit():
        raise ConfigError(f"{BACKOFF_ENV} = {raw!r}: expected whole seconds (0 or more)")
    return int(raw)


def _state_dir(env: Mapping[str, str]) -> Path:
    explicit = env.get(STATE_DIR_ENV, "").strip()
    if explicit:
        if not explicit.startswith("/"):
            raise ConfigError(f"{STATE_DIR_ENV} = {explicit!r}: expected an absolute path")
        return Path(explicit)
    location = DEFAULT_STATE_SAVE_LOCATION
    raw_spec = env.get(SPEC_ENV, "").strip()
    if raw_spec:
        try:
            location = ClusterSpec.from_json(raw_spec).state_save_location
        except SpecError as err:
            raise ConfigError(f"{SPEC_ENV}: {err}") from None
    return Path(location) / "relion-spot"
