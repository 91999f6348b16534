"""What the controller's power-save programs need from "AWS", created in moto.

The programs (relion_spot.powersave) run unchanged against moto's server: they learn the launch
templates, subnets, cluster tag and endpoint from environment variables, exactly as in the cloud
where the cluster stack writes them. This module creates the moto side and writes those
variables.
"""

from __future__ import annotations

import json
from typing import Any

from ..powersave.config import CLUSTER_ENV, NODE_GROUPS_ENV, SUBNETS_ENV
from ..slurm.spec import ClusterSpec

VPC_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.1.0/24"
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
"""moto accepts any credentials; these placeholders keep real ones out of the containers."""


def prepare_cloud(ec2: Any, spec: ClusterSpec, *, endpoint: str | None = None) -> dict[str, str]:
    """Create a VPC, a subnet and one launch template per partition of ``spec`` in moto (through
    the ``ec2`` client), and return the controller's environment for them.

    ``endpoint``: moto's address as the containers reach it; default: the client's own."""
    region = ec2.meta.region_name
    endpoint = endpoint or ec2.meta.endpoint_url
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET_CIDR, AvailabilityZone=f"{region}a")[
        "Subnet"
    ]["SubnetId"]
    image = _an_image(ec2)
    groups: dict[str, dict[str, Any]] = {}
    for part in spec.partitions:
        template = ec2.create_launch_template(
            LaunchTemplateName=f"{spec.cluster_name}-{part.name}",
            LaunchTemplateData={
                "ImageId": image,
                "MetadataOptions": {"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
            },
        )["LaunchTemplate"]["LaunchTemplateId"]
        groups[part.name] = {
            "launch_template_id": template,
            "instance_types": list(part.instance_types),
            "max_nodes": part.max_nodes,
            "gpus_per_node": part.gpus,
        }
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        **MOTO_CREDENTIALS,
        CLUSTER_ENV: spec.cluster_name,
        NODE_GROUPS_ENV: json.dumps(groups, sort_keys=True),
        SUBNETS_ENV: subnet,
    }


def _an_image(ec2: Any) -> str:
    """An AMI moto knows (it ships a set of placeholder images); the node image is what runs."""
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    if not images:
        raise RuntimeError("moto lists no images to put in the launch templates")
    return str(sorted(images, key=lambda i: i["ImageId"])[0]["ImageId"])
