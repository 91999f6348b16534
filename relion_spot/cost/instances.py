"""EC2 side of the cost tracker: which instance played which Slurm node, its volumes, and
repairing launch tags that did not stick.

Only instances carrying this cluster's tag (or launched from one of its launch templates and
carrying no cluster tag at all) are ever looked at or tagged; another cluster's instances are
left alone even when they share a launch template.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relion_spot import tags
from relion_spot.cost.pricing import NodeUse, Volume

log = logging.getLogger(__name__)

LAUNCH_TEMPLATE_ID_TAG = "aws:ec2launchtemplate:id"
LAUNCH_TEMPLATE_VERSION_TAG = "aws:ec2launchtemplate:version"
REPAIRABLE_TAG_KEYS = (
    tags.CLUSTER,
    tags.STACK,
    tags.PARTITION,
    tags.NODE,
    tags.INSTANCE_TYPE,
    tags.PROJECT,
)
"""The launch tags the repair restores; the IAM policy allows setting exactly these."""
FILTER_CHUNK = 200
ALIVE_STATES = ("pending", "running")


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    instance_id: str
    instance_type: str
    availability_zone: str
    launch_time: float
    state: str
    tags: dict[str, str] = field(hash=False)
    volume_ids: tuple[str, ...] = ()
    network_interface_ids: tuple[str, ...] = ()
    market: str = "on-demand"
    """``spot`` or ``on-demand`` (EC2 names only the exception: ``InstanceLifecycle``)."""

    @property
    def node(self) -> str:
        return self.tags.get(tags.NODE, "")


def _info(raw: dict[str, Any]) -> InstanceInfo:
    return InstanceInfo(
        instance_id=raw["InstanceId"],
        instance_type=raw.get("InstanceType", ""),
        availability_zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
        launch_time=raw["LaunchTime"].timestamp() if raw.get("LaunchTime") else 0.0,
        state=raw.get("State", {}).get("Name", ""),
        tags={t["Key"]: t["Value"] for t in raw.get("Tags") or []},
        volume_ids=tuple(
            m["Ebs"]["VolumeId"]
            for m in raw.get("BlockDeviceMappings") or []
            if m.get("Ebs", {}).get("VolumeId")
        ),
        network_interface_ids=tuple(
            n["NetworkInterfaceId"]
            for n in raw.get("NetworkInterfaces") or []
            if n.get("NetworkInterfaceId")
        ),
        market=raw.get("InstanceLifecycle") or "on-demand",
    )


def describe(ec2: Any, filters: list[dict[str, Any]]) -> list[InstanceInfo]:
    found: list[InstanceInfo] = []
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=filters, PaginationConfig={"PageSize": 1000}
    ):
        for reservation in page["Reservations"]:
            found.extend(_info(raw) for raw in reservation["Instances"])
    return found


def cluster_instances(
    ec2: Any, cluster: str, *, node_names: Sequence[str] | None = None
) -> list[InstanceInfo]:
    """Every instance tagged with the cluster (any state EC2 still reports), optionally only
    those playing the given nodes."""
    cluster_filter = {"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]}
    if node_names is None:
        return describe(ec2, [cluster_filter])
    found: list[InstanceInfo] = []
    names = list(dict.fromkeys(node_names))
    for offset in range(0, len(names), FILTER_CHUNK):
        chunk = names[offset : offset + FILTER_CHUNK]
        found.extend(describe(ec2, [cluster_filter, {"Name": f"tag:{tags.NODE}", "Values": chunk}]))
    return found


def running_cluster_instances(ec2: Any, cluster: str) -> list[InstanceInfo]:
    """This cluster's instances in the running state (the ones billed by the second now)."""
    return describe(
        ec2,
        [
            {"Name": f"tag:{tags.CLUSTER}", "Values": [cluster]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ],
    )


def resolve_nodes(
    node_names: Iterable[str], instances: Iterable[InstanceInfo], start: float, end: float
) -> dict[str, InstanceInfo]:
    """The instance that played each node during [start, end].

    Node names are reused by successive instances; the one that played the attempt is the
    latest launched at or before its start (a node boots before its job starts). An instance
    launched during the attempt is used only when none was launched before (clock skew).
    """
    by_node: dict[str, list[InstanceInfo]] = {}
    for info in instances:
        by_node.setdefault(info.node, []).append(info)
    resolved: dict[str, InstanceInfo] = {}
    for name in node_names:
        candidates = [i for i in by_node.get(name, []) if i.launch_time <= end]
        before = [i for i in candidates if i.launch_time <= start]
        if before:
            resolved[name] = max(before, key=lambda i: (i.launch_time, i.instance_id))
        elif candidates:
            resolved[name] = min(candidates, key=lambda i: (i.launch_time, i.instance_id))
    return resolved


def volumes(ec2: Any, volume_ids: Iterable[str]) -> dict[str, Volume]:
    ids = sorted(set(volume_ids))
    found: dict[str, Volume] = {}
    for offset in range(0, len(ids), FILTER_CHUNK):
        pages = ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "volume-id", "Values": ids[offset : offset + FILTER_CHUNK]}]
        )
        for page in pages:
            for raw in page["Volumes"]:
                found[raw["VolumeId"]] = Volume(
                    size_gb=int(raw.get("Size", 0)), volume_type=raw.get("VolumeType", "gp3")
                )
    return found


def node_uses(
    ec2: Any,
    node_names: Sequence[str],
    instances: Iterable[InstanceInfo],
    start: float,
    end: float,
) -> tuple[NodeUse, ...]:
    """NodeUse per node, with instance details and EBS volumes; unresolved nodes keep only
    their name so the pricing flags them instead of dropping them."""
    resolved = resolve_nodes(node_names, instances, start, end)
    sizes = volumes(ec2, [v for info in resolved.values() for v in info.volume_ids])
    uses = []
    for name in node_names:
        info = resolved.get(name)
        if info is None:
            uses.append(NodeUse(node=name))
            continue
        uses.append(
            NodeUse(
                node=name,
                instance_id=info.instance_id,
                instance_type=info.instance_type,
                availability_zone=info.availability_zone,
                launch_time=info.launch_time,
                volumes=tuple(sizes[v] for v in info.volume_ids if v in sizes),
            )
        )
    return tuple(uses)


@dataclass
class TagRepair:
    instances_tagged: list[str] = field(default_factory=list)
    resources_tagged: int = 0
    skipped_other_cluster: list[str] = field(default_factory=list)


def _template_tags(ec2: Any, template_id: str, version: str) -> dict[str, dict[str, str]]:
    """Tag specifications of a launch template version, by resource type."""
    response = ec2.describe_launch_template_versions(
        LaunchTemplateId=template_id, Versions=[version or "$Default"]
    )
    by_type: dict[str, dict[str, str]] = {}
    for version_data in response.get("LaunchTemplateVersions", []):
        data = version_data.get("LaunchTemplateData", {})
        for spec in data.get("TagSpecifications", []):
            target = by_type.setdefault(spec.get("ResourceType", ""), {})
            target.update({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
    return by_type


def instance_tags(
    ec2: Any, keys: Sequence[str], *, values: Sequence[str] | None = None
) -> dict[str, dict[str, str]]:
    """Tags with the given keys of every instance EC2 still lists, by instance id.

    DescribeTags returns a few fields per tag where DescribeInstances returns the whole
    instance: at 10,000 instances this is what keeps a pricing run inside its time budget.
    """
    filters = [
        {"Name": "resource-type", "Values": ["instance"]},
        {"Name": "key", "Values": list(keys)},
    ]
    if values is not None:
        filters.append({"Name": "value", "Values": list(values)})
    found: dict[str, dict[str, str]] = {}
    for page in ec2.get_paginator("describe_tags").paginate(
        Filters=filters, PaginationConfig={"PageSize": 1000}
    ):
        for tag in page["Tags"]:
            found.setdefault(tag["ResourceId"], {})[tag["Key"]] = tag["Value"]
    return found


def listed_cluster_instances(ec2: Any, cluster: str) -> set[str]:
    """Ids of this cluster's instances EC2 still lists (terminated ones drop out after ~1 h)."""
    tagged = instance_tags(ec2, [tags.CLUSTER], values=[cluster])
    return {i for i, t in tagged.items() if t.get(tags.CLUSTER) == cluster}


def repair_tags(
    ec2: Any, cluster: str, launch_templates: Mapping[str, Mapping[str, str]]
) -> TagRepair:
    """Give running instances of this cluster (and their volumes and network interfaces) the
    launch tags they are missing. ``launch_templates`` maps each node group's launch template
    to the tags its launches carry (its own tag specifications count too). Existing values are
    never changed.

    Launch tags are applied in one request for the instance and its volumes and interfaces, so
    an instance that kept its tags is taken to have kept them everywhere; only instances missing
    tags are described and have their attachments checked.
    """
    report = TagRepair()
    keys = [*REPAIRABLE_TAG_KEYS, LAUNCH_TEMPLATE_ID_TAG, LAUNCH_TEMPLATE_VERSION_TAG]
    template_cache: dict[tuple[str, str], dict[str, dict[str, str]]] = {}

    def template_tags(template_id: str, version: str) -> dict[str, dict[str, str]]:
        if not template_id:
            return {}
        cache_key = (template_id, version)
        if cache_key not in template_cache:
            try:
                template_cache[cache_key] = _template_tags(ec2, template_id, version)
            except ec2.exceptions.ClientError as err:
                log.warning("launch template %s unreadable: %s", template_id, err)
                template_cache[cache_key] = {}
        return template_cache[cache_key]

    def wanted_keys(current: dict[str, str]) -> set[str]:
        template_id = current.get(LAUNCH_TEMPLATE_ID_TAG, "")
        by_type = template_tags(template_id, current.get(LAUNCH_TEMPLATE_VERSION_TAG, ""))
        wanted = {
            *by_type.get("instance", {}),
            *launch_templates.get(template_id, {}),
            tags.CLUSTER,
            tags.INSTANCE_TYPE,
        }
        return wanted & set(REPAIRABLE_TAG_KEYS)

    needing: list[str] = []
    for instance_id, current in instance_tags(ec2, keys).items():
        owner = current.get(tags.CLUSTER)
        ours = owner == cluster or (
            owner is None and current.get(LAUNCH_TEMPLATE_ID_TAG) in launch_templates
        )
        if owner is not None and owner != cluster:
            if current.get(LAUNCH_TEMPLATE_ID_TAG) in launch_templates:
                report.skipped_other_cluster.append(instance_id)
            continue
        if ours and wanted_keys(current) - set(current):
            needing.append(instance_id)
    alive = {"Name": "instance-state-name", "Values": list(ALIVE_STATES)}
    for offset in range(0, len(needing), FILTER_CHUNK):
        chunk = needing[offset : offset + FILTER_CHUNK]
        for info in describe(ec2, [alive, {"Name": "instance-id", "Values": chunk}]):
            _repair_instance(ec2, cluster, info, launch_templates, template_tags, report)
    return report


def _repair_instance(
    ec2: Any,
    cluster: str,
    info: InstanceInfo,
    launch_templates: Mapping[str, Mapping[str, str]],
    template_tags: Any,
    report: TagRepair,
) -> None:
    template_id = info.tags.get(LAUNCH_TEMPLATE_ID_TAG, "")
    by_type = template_tags(template_id, info.tags.get(LAUNCH_TEMPLATE_VERSION_TAG, ""))
    wanted = {
        **by_type.get("instance", {}),
        **launch_templates.get(template_id, {}),
        tags.CLUSTER: cluster,
        tags.INSTANCE_TYPE: info.instance_type,
    }
    wanted = {k: v for k, v in wanted.items() if k in REPAIRABLE_TAG_KEYS and v}
    missing = {k: v for k, v in wanted.items() if k not in info.tags}
    if missing:
        _create_tags(ec2, [info.instance_id], missing)
        report.instances_tagged.append(info.instance_id)
        report.resources_tagged += 1
    if tags.NODE not in info.tags and tags.NODE not in wanted:
        log.warning(
            "instance %s of %s has no node-name tag; Slurm cannot map it",
            info.instance_id,
            cluster,
        )
    instance_values = {**info.tags, **missing}
    shared = {k: v for k, v in instance_values.items() if k in REPAIRABLE_TAG_KEYS}
    report.resources_tagged += _repair_attached(
        ec2, info.volume_ids, {**shared, **by_type.get("volume", {})}
    )
    report.resources_tagged += _repair_attached(
        ec2, info.network_interface_ids, {**shared, **by_type.get("network-interface", {})}
    )


def _repair_attached(ec2: Any, resource_ids: Sequence[str], wanted: dict[str, str]) -> int:
    wanted = {k: v for k, v in wanted.items() if k in REPAIRABLE_TAG_KEYS and v}
    if not resource_ids or not wanted:
        return 0
    response = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": list(resource_ids)}])
    present: dict[str, dict[str, str]] = {r: {} for r in resource_ids}
    for tag in response.get("Tags", []):
        present.setdefault(tag["ResourceId"], {})[tag["Key"]] = tag["Value"]
    repaired = 0
    for resource_id, current in present.items():
        if current.get(tags.CLUSTER, wanted.get(tags.CLUSTER)) != wanted.get(tags.CLUSTER):
            continue
        missing = {k: v for k, v in wanted.items() if k not in current}
        if missing:
            _create_tags(ec2, [resource_id], missing)
            repaired += 1
    return repaired


def _create_tags(ec2: Any, resource_ids: list[str], values: dict[str, str]) -> None:
    ec2.create_tags(
        Resources=resource_ids, Tags=[{"Key": k, "Value": v} for k, v in sorted(values.items())]
    )
