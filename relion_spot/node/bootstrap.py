"""Fill the node bootstrap template (assets/slurm/node-bootstrap.sh) into user data.

The stack passes its values, CDK tokens included (they stay opaque strings until deploy); the
tag key comes from ``relion_spot.tags`` so the script never spells it. Values land inside single
quotes in the script, so a quote or a newline in one is refused rather than allowed to break it.

GPU nodes also start the CloudWatch agent with assets/slurm/cloudwatch-agent.json, its ``Cluster``
dimension filled in here: CloudWatch has no metric per tag, and the cluster dashboard finds its
GPUs by that dimension.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from .. import tags

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "slurm"
TEMPLATE_PATH = ASSETS / "node-bootstrap.sh"
AGENT_CONFIG_PATH = ASSETS / "cloudwatch-agent.json"
GPU_METRICS_NAMESPACE = "CWAgent"
"""Where the agent publishes; the node role may put metrics in this namespace only."""
CLUSTER_DIMENSION = "Cluster"
PLACEHOLDERS = (
    "cluster_name",
    "file_system_id",
    "data_access_point_id",
    "containers_access_point_id",
    "slurm_image",
    "controller",
    "key_parameter_arn",
    "spot_events_table",
    "intake_table",
    "stage_read_role",
    "exchange_role",
    "exchange_bucket",
)
"""What the stack must give ``render``; ``spot_events_table`` and ``stage_read_role`` may be
empty."""
OPTIONAL = frozenset({"spot_events_table", "stage_read_role"})
FILLED_HERE = ("node_tag_key", "partition_tag_key", "cloudwatch_agent_config")
"""Placeholders ``render`` fills itself."""


class BootstrapError(ValueError):
    pass


def render(**values: str) -> str:
    """The user-data script with every placeholder filled."""
    missing = sorted(set(PLACEHOLDERS) - set(values))
    unknown = sorted(set(values) - set(PLACEHOLDERS))
    if missing or unknown:
        raise BootstrapError(
            f"node bootstrap: missing {missing}, unknown {unknown}; expected {list(PLACEHOLDERS)}"
        )
    for name, value in values.items():
        if not isinstance(value, str) or (not value and name not in OPTIONAL):
            raise BootstrapError(f"node bootstrap: {name} = {value!r}, need a non-empty string")
        if "'" in value or "\n" in value:
            raise BootstrapError(f"node bootstrap: {name} = {value!r} contains a quote or newline")
    template = Template(TEMPLATE_PATH.read_text())
    return template.substitute(
        values,
        node_tag_key=tags.NODE,
        partition_tag_key=tags.PARTITION,
        cloudwatch_agent_config=agent_config(values["cluster_name"]),
    )


def agent_config(cluster_name: str) -> str:
    """The CloudWatch agent's config for a node of ``cluster_name`` (GPU metrics only)."""
    config = json.loads(AGENT_CONFIG_PATH.read_text())
    metrics = config["metrics"]
    if metrics.get("namespace") != GPU_METRICS_NAMESPACE:
        raise BootstrapError(f"{AGENT_CONFIG_PATH}: namespace must be {GPU_METRICS_NAMESPACE}")
    gpu = metrics["metrics_collected"]["nvidia_gpu"]
    if CLUSTER_DIMENSION not in gpu.get("append_dimensions", {}):
        raise BootstrapError(f"{AGENT_CONFIG_PATH}: nvidia_gpu needs a {CLUSTER_DIMENSION} slot")
    gpu["append_dimensions"][CLUSTER_DIMENSION] = cluster_name
    return json.dumps(config, indent=2)
