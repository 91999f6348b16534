"""Tag repair: a launch that missed its tags gets them; other clusters are left alone."""

from __future__ import annotations

import json

from relion_spot import tags
from relion_spot.cost import config
from relion_spot.cost.handler import CostService, handle
from relion_spot.cost.instances import LAUNCH_TEMPLATE_ID_TAG

from .conftest import AMI, CLUSTER, Account


def tags_of(account: Account, resource_id: str) -> dict[str, str]:
    response = account.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])
    return {t["Key"]: t["Value"] for t in response["Tags"]}


def node_group_template(account: Account) -> str:
    launch_tags = {tags.CLUSTER: CLUSTER, tags.STACK: "RelionSpot-gpu1", tags.PARTITION: "gpu"}
    return account.ec2.create_launch_template(
        LaunchTemplateName="gpu1-nodes",
        LaunchTemplateData={
            "ImageId": AMI,
            "TagSpecifications": [
                {
                    "ResourceType": kind,
                    "Tags": [{"Key": k, "Value": v} for k, v in launch_tags.items()],
                }
                for kind in ("instance", "volume")
            ],
        },
    )["LaunchTemplate"]["LaunchTemplateId"]


def test_launch_that_missed_its_tags_is_repaired_and_others_untouched(account: Account):
    template = node_group_template(account)
    untagged = account.launch(node="gpu-1", launch_template_id=template)
    # The launch lost its tags (as when tagging at launch fails): only AWS's own remain.
    account.ec2.delete_tags(
        Resources=[untagged],
        Tags=[{"Key": k} for k in tags_of(account, untagged) if k.startswith(tags.PREFIX)],
    )
    assert tags.CLUSTER not in tags_of(account, untagged)
    assert LAUNCH_TEMPLATE_ID_TAG in tags_of(account, untagged)

    other = account.launch(node="gpu-1", cluster="gpu4", instance_type="g5.12xlarge")
    borrowed = account.launch(node="gpu-2", launch_template_id=template)
    account.ec2.create_tags(Resources=[borrowed], Tags=[{"Key": tags.CLUSTER, "Value": "gpu4"}])
    stranger = account.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    before = {i: tags_of(account, i) for i in (other, borrowed, stranger)}

    environ = {
        **account.environ,
        config.LAUNCH_TEMPLATES: json.dumps(
            [{"launch_template_id": template, "tags": {tags.PROJECT: "cryo-lab"}}]
        ),
    }
    service = CostService(config.CostConfig.from_env(environ), account.clients)
    outcome = handle({"action": "schedule"}, service)

    assert outcome["instances_tagged"] == [untagged]
    repaired = tags_of(account, untagged)
    assert repaired[tags.CLUSTER] == CLUSTER
    assert repaired[tags.STACK] == "RelionSpot-gpu1"
    assert repaired[tags.PARTITION] == "gpu"
    assert repaired[tags.INSTANCE_TYPE] == "g5.xlarge"
    assert repaired[tags.PROJECT] == "cryo-lab"
    volume = account.ec2.describe_instances(InstanceIds=[untagged])["Reservations"][0]["Instances"][
        0
    ]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert tags_of(account, volume)[tags.CLUSTER] == CLUSTER
    assert {i: tags_of(account, i) for i in (other, borrowed, stranger)} == before

    assert handle({"action": "schedule"}, service)["instances_tagged"] == []
