"""The embedded cloud's moto side, in-process: what prepare_cloud creates is what the power-save
programs accept and launch from, and the reconciler sees exactly the cluster's running nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from relion_spot import tags
from relion_spot.local.cloud import prepare_cloud
from relion_spot.local.reconciler import Reconciler
from relion_spot.powersave import ec2 as fleet
from relion_spot.powersave.config import PowerSaveConfig
from relion_spot.settings import Settings
from relion_spot.slurm.local import LocalSlurm
from relion_spot.slurm.spec import LOCAL_CLOUD, spec_from_settings

REGION = "us-east-1"


def _launch(ec2: Any, config: PowerSaveConfig, partition: str, cluster: str) -> str:
    group = config.groups[partition]
    outcome = fleet.create_fleet(
        ec2,
        fleet.fleet_request(
            cluster=cluster,
            group=group,
            instance_types=group.instance_types,
            subnets=config.subnets,
            count=1,
        ),
    )
    assert outcome.errors == []
    (launched,) = outcome.launched
    return launched.instance_id


@mock_aws
def test_prepared_cloud_launches_and_the_reconciler_sees_only_named_running_nodes(
    tmp_path: Path,
) -> None:
    spec = spec_from_settings(Settings(gpus=(4,)), 4, **LOCAL_CLOUD)
    ec2 = boto3.client("ec2", region_name=REGION)
    env = prepare_cloud(ec2, spec, endpoint="http://localhost:5000")
    config = PowerSaveConfig.from_env(env)
    assert config.cluster == spec.cluster_name
    assert config.region == REGION
    assert {name: g.gpus_per_node for name, g in config.groups.items()} == {"gpu": 4, "cpu": 0}
    assert config.groups["gpu"].instance_types == spec.partitions[0].instance_types
    assert env["AWS_ENDPOINT_URL"] == "http://localhost:5000"

    named = _launch(ec2, config, "gpu", spec.cluster_name)
    fleet.tag_node(ec2, fleet.Launched(named, "g5.12xlarge", ""), "gpu-2")
    _launch(ec2, config, "gpu", spec.cluster_name)  # never named: no node to play
    gone = _launch(ec2, config, "cpu", spec.cluster_name)
    fleet.tag_node(ec2, fleet.Launched(gone, "m6i.large", ""), "cpu-1")
    ec2.terminate_instances(InstanceIds=[gone])
    other = _launch(ec2, config, "gpu", "another-cluster")
    ec2.create_tags(Resources=[other], Tags=[{"Key": tags.NODE, "Value": "gpu-1"}])

    local = LocalSlurm(prefix="relion-spot-unit", spec=spec, key_file=None, state_dir=tmp_path)
    reconciler = Reconciler(local, ec2)
    assert reconciler.running_instances() == {"gpu-2": named}
    assert reconciler._gpus("gpu-2") == 4
    assert reconciler._gpus("cpu-1") == 0


@mock_aws
def test_a_reclaim_gives_notice_then_terminates_after_the_grace(tmp_path: Path) -> None:
    spec = spec_from_settings(Settings(gpus=(1,)), 1, **LOCAL_CLOUD)
    ec2 = boto3.client("ec2", region_name=REGION)
    config = PowerSaveConfig.from_env(prepare_cloud(ec2, spec))
    instance_id = _launch(ec2, config, "gpu", spec.cluster_name)
    local = LocalSlurm(prefix="relion-spot-unit", spec=spec, key_file=None, state_dir=tmp_path)
    reconciler = Reconciler(local, ec2)

    def state() -> str:
        (reservation,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservation["Instances"][0]["State"]["Name"])

    notice = reconciler.reclaim(instance_id, grace_seconds=3600)
    assert notice["action"] == "terminate"
    assert datetime.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    ) > datetime.now(UTC) + timedelta(minutes=59)
    assert reconciler.notices == {instance_id: notice}
    reconciler.poll()  # the instance has no node name: nothing to boot, nothing to remove
    assert state() == "running"

    reconciler.reclaim(instance_id, grace_seconds=0)
    reconciler.poll()
    assert state() in ("shutting-down", "terminated")
    reconciler.poll()  # done once only
