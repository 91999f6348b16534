"""Fine-grained assertions on the synthesized templates (shared synths, see conftest)."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk import RemovalPolicy
from aws_cdk.assertions import Capture, Match, Template

from relion_spot import tags
from relion_spot.constructs.storage import FILE_SYSTEM_LOGICAL_ID
from relion_spot.stacks.cluster import ClusterStack

CLUSTERS = {"relion-spot-gpu1": 1, "relion-spot-gpu4": 4, "relion-spot-gpu8": 8}
EXPECTED_TYPES = {
    1: "g5.xlarge,g6.xlarge",
    4: "g5.12xlarge,g6.12xlarge",
    8: "g5.48xlarge,g6.48xlarge",
}
MUTATING_EC2 = {
    "ec2:RunInstances",
    "ec2:CreateFleet",
    "ec2:TerminateInstances",
    "ec2:CreateTags",
    "ec2:DeleteTags",
}


def _resources(template: dict, type_name: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_name}


def _statements(template: dict):
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy":
            yield from resource["Properties"]["PolicyDocument"]["Statement"]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_one_stack_per_gpu_count_side_by_side(default_synth) -> None:
    assert default_synth.template_names() == sorted(
        ["relion-spot-network", "relion-spot-storage", *CLUSTERS]
    )


@pytest.mark.parametrize("stack", CLUSTERS)
def test_node_launch_templates_require_imdsv2_and_encrypted_root(default_synth, stack: str) -> None:
    template = Template.from_json(default_synth.template(stack))
    template.resource_count_is("AWS::EC2::LaunchTemplate", 2)
    template.all_resources_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "MetadataOptions": {
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 2,
                        "InstanceMetadataTags": "enabled",
                    },
                    "BlockDeviceMappings": [
                        Match.object_like(
                            {
                                "Ebs": Match.object_like(
                                    {
                                        "Encrypted": True,
                                        "VolumeType": "gp3",
                                        "DeleteOnTermination": True,
                                    }
                                )
                            }
                        )
                    ],
                    "IamInstanceProfile": Match.any_value(),
                    "UserData": Match.any_value(),
                    "InstanceMarketOptions": Match.absent(),
                }
            ),
        },
    )


@pytest.mark.parametrize("stack", CLUSTERS)
def test_nodes_can_only_ever_be_spot(default_synth, stack: str) -> None:
    """Spot is enforced by IAM on every launch path (EC2 Fleet refuses launch templates that
    carry market options, so the template cannot be where spot is decided)."""
    template = default_synth.template(stack)
    launches = [
        s
        for s in _statements(template)
        if "ec2:RunInstances" in _as_list(s["Action"])
        and any(":instance/" in json.dumps(r) for r in _as_list(s["Resource"]))
    ]
    assert len(launches) == 2  # one per node group
    for statement in launches:
        assert statement["Condition"]["StringEquals"]["ec2:InstanceMarketType"] == "spot"


def test_nodes_boot_into_the_cluster(default_synth) -> None:
    template = default_synth.template("relion-spot-gpu1")
    for lt in _resources(template, "AWS::EC2::LaunchTemplate").values():
        user_data = json.dumps(lt["Properties"]["LaunchTemplateData"]["UserData"])
        assert "relion-spot-gpu1-ctld.relion-spot.internal:6817" in user_data
        assert "readonly CLUSTER_NAME='relion-spot-gpu1'" in user_data
    pulls = [s for s in _statements(template) if "ecr:BatchGetImage" in _as_list(s["Action"])]
    assert len(pulls) >= 2, "both node roles pull the Slurm image"


@pytest.mark.parametrize(("stack", "gpus"), CLUSTERS.items())
def test_instance_types_per_gpu_count(default_synth, stack: str, gpus: int) -> None:
    template = Template.from_json(default_synth.template(stack))
    template.has_output("GpuInstanceTypes", {"Value": EXPECTED_TYPES[gpus]})
    template.has_output("GpusPerNode", {"Value": str(gpus)})
    template.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "InstanceType": EXPECTED_TYPES[gpus].split(",")[0],
                    "ImageId": {"Ref": Match.string_like_regexp("deeplearning")},
                }
            )
        },
    )


def test_gpu_ami_comes_from_a_public_ssm_parameter(default_synth) -> None:
    parameters = default_synth.template("relion-spot-gpu1")["Parameters"]
    ami = [
        p
        for p in parameters.values()
        if p.get("Type") == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    ]
    defaults = sorted(p["Default"] for p in ami)
    assert any("deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu" in d for d in defaults)
    assert any("al2023-ami-kernel-default-x86_64" in d for d in defaults)


def test_instances_and_volumes_are_tagged_at_launch(default_synth) -> None:
    template = default_synth.template("relion-spot-gpu4")
    for lt in _resources(template, "AWS::EC2::LaunchTemplate").values():
        specs = {
            s["ResourceType"]: {t["Key"]: t["Value"] for t in s["Tags"]}
            for s in lt["Properties"]["LaunchTemplateData"]["TagSpecifications"]
        }
        for kind in ("instance", "volume", "network-interface"):
            assert specs[kind][tags.CLUSTER] == "relion-spot-gpu4"
            assert specs[kind][tags.PARTITION] in ("gpu", "cpu")
        for kind in ("instance", "volume"):
            assert specs[kind][tags.PROJECT] == "relion-spot"


def test_efs_encrypted_tls_only_and_retained_by_default(default_synth) -> None:
    template = default_synth.template("relion-spot-storage")
    fs = template["Resources"][FILE_SYSTEM_LOGICAL_ID]
    assert fs["Type"] == "AWS::EFS::FileSystem"
    assert fs["Properties"]["Encrypted"] is True
    assert fs["DeletionPolicy"] == "Retain"
    assert fs["UpdateReplacePolicy"] == "Retain"
    deny = [s for s in fs["Properties"]["FileSystemPolicy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny == [Match.any_value()] or len(deny) == 1
    assert deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny[0]["Action"] == "*"


def test_efs_deleted_on_destroy_when_data_not_kept(alternate_synth) -> None:
    fs = alternate_synth.template("lab-b-storage")["Resources"][FILE_SYSTEM_LOGICAL_ID]
    assert fs["DeletionPolicy"] == "Delete"
    assert fs["UpdateReplacePolicy"] == "Delete"


def test_efs_access_points_and_mount_target_per_az(default_synth) -> None:
    storage = Template.from_json(default_synth.template("relion-spot-storage"))
    storage.resource_count_is("AWS::EFS::MountTarget", 3)
    for path, uid in (("/data", "1000"), ("/containers", "1000")):
        storage.has_resource_properties(
            "AWS::EFS::AccessPoint",
            {
                "RootDirectory": Match.object_like({"Path": path}),
                "PosixUser": {"Uid": uid, "Gid": uid},
            },
        )
    for stack in CLUSTERS:
        Template.from_json(default_synth.template(stack)).has_resource_properties(
            "AWS::EFS::AccessPoint",
            {
                "RootDirectory": Match.object_like({"Path": f"/slurm/{stack}/state"}),
                "PosixUser": {"Uid": "64030", "Gid": "64030"},
            },
        )


def test_stateful_resources_have_explicit_removal_policies(default_synth, alternate_synth) -> None:
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            for logical_id, resource in synth.template(name)["Resources"].items():
                if resource["Type"] in (
                    "AWS::EFS::FileSystem",
                    "AWS::DynamoDB::Table",
                    "AWS::Logs::LogGroup",
                    "AWS::S3::Bucket",
                    "Custom::SlurmKey",
                ):
                    assert "DeletionPolicy" in resource, f"{name}/{logical_id}"


def test_no_ingress_from_the_internet_anywhere(
    default_synth, alternate_synth, nat_gateway_synth
) -> None:
    for synth in (default_synth, alternate_synth, nat_gateway_synth):
        for name in synth.template_names():
            template = synth.template(name)
            rules = []
            for sg in _resources(template, "AWS::EC2::SecurityGroup").values():
                rules += sg["Properties"].get("SecurityGroupIngress", [])
            rules += [
                r["Properties"]
                for r in _resources(template, "AWS::EC2::SecurityGroupIngress").values()
            ]
            for rule in rules:
                assert rule.get("CidrIp") != "0.0.0.0/0", (name, rule)
                assert rule.get("CidrIpv6") != "::/0", (name, rule)
                assert "CidrIp" not in rule or rule["CidrIp"].startswith("10.42."), (name, rule)


def test_mutating_ec2_actions_are_never_unconditioned(default_synth, alternate_synth) -> None:
    checked = 0
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            for statement in _statements(synth.template(name)):
                actions = set(_as_list(statement["Action"]))
                if not actions & MUTATING_EC2:
                    continue
                checked += 1
                resources = _as_list(statement["Resource"])
                # A spot request carries no key but request tags, which nothing sets; it is
                # only launched with an instance, which the SpotInstances* statements hold.
                specific = all(
                    "launch-template/" in json.dumps(r)
                    or (
                        "spot-instances-request/" in json.dumps(r)
                        and _as_list(statement["Action"]) == ["ec2:RunInstances"]
                    )
                    for r in resources
                )
                assert specific or statement.get("Condition"), (name, statement)
                assert "*" not in resources, (name, statement)
    assert checked >= 10


def test_launch_is_held_to_this_clusters_templates_and_tag(default_synth) -> None:
    """The shape of the launch grants; tests/iam evaluates them request by request."""
    template = default_synth.template("relion-spot-gpu1")
    by_sid = {s.get("Sid"): s for s in _statements(template) if s.get("Sid")}
    request_tags = {
        f"aws:RequestTag/{tags.CLUSTER}": "relion-spot-gpu1",
        f"aws:RequestTag/{tags.PARTITION}": "gpu",
    }
    gpu_types = EXPECTED_TYPES[1].split(",")
    fleet_instances = by_sid["FleetInstancesGpu"]
    assert fleet_instances["Action"] == "ec2:CreateFleet"
    assert fleet_instances["Condition"] == {
        "StringEquals": {**request_tags, "ec2:InstanceType": gpu_types}
    }
    spot_instances = by_sid["SpotInstancesGpu"]
    assert spot_instances["Action"] == "ec2:RunInstances"
    assert spot_instances["Condition"]["StringEquals"] == {
        **request_tags,
        "ec2:InstanceType": gpu_types,
        "ec2:InstanceMarketType": "spot",
    }
    assert "ec2:LaunchTemplate" in spot_instances["Condition"]["ArnEquals"]
    image = by_sid["TemplateImages"]
    assert image["Condition"]["Bool"] == {"ec2:IsLaunchTemplateResource": "true"}
    assert "ec2:LaunchTemplate" in image["Condition"]["ArnEquals"]
    for sid in ("TemplateVolumes", "TemplateNetwork"):
        assert "ec2:LaunchTemplate" in by_sid[sid]["Condition"]["ArnEquals"]
    assert "ec2:Vpc" in by_sid["TemplateNetwork"]["Condition"]["ArnEquals"]
    assert "ec2:Vpc" in by_sid["FleetSubnets"]["Condition"]["ArnEquals"]
    terminate = by_sid["TerminateClusterInstances"]
    assert terminate["Condition"] == {
        "StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": "relion-spot-gpu1"}
    }
    fleet = by_sid["CreateClusterFleets"]
    assert fleet["Condition"]["StringEquals"] == {
        f"aws:RequestTag/{tags.CLUSTER}": "relion-spot-gpu1"
    }
    # CreateFleet carries neither key: a condition on them would refuse every fleet.
    for statement in _statements(template):
        if "ec2:CreateFleet" in _as_list(statement["Action"]):
            conditions = json.dumps(statement.get("Condition", {}))
            assert "ec2:LaunchTemplate" not in conditions, statement
            assert "ec2:InstanceMarketType" not in conditions, statement


def test_teardown_runs_after_controller_and_before_network_resources(default_synth) -> None:
    template = default_synth.template("relion-spot-gpu1")
    ((sweep_id, sweep),) = _resources(template, "Custom::ClusterTeardown").items()
    depends = set(sweep["DependsOn"])
    for type_name in (
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::LaunchTemplate",
        "AWS::IAM::InstanceProfile",
    ):
        for logical_id in _resources(template, type_name):
            assert logical_id in depends, f"teardown must run before {logical_id} is deleted"
    ((_, service),) = _resources(template, "AWS::ECS::Service").items()
    assert sweep_id in service["DependsOn"], "controller must stop before the sweep"
    function = template["Resources"][sweep["Properties"]["ServiceToken"]["Fn::GetAtt"][0]]
    assert function["Properties"]["Timeout"] == 900
    assert function["Properties"]["Handler"] == "relion_spot.teardown.handler.on_event"


def test_no_function_reserves_concurrency(default_synth, alternate_synth) -> None:
    """A new account's Lambda quota is 10 concurrent executions, all unreserved: a function that
    reserves any makes the stack fail to create."""
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            for logical_id, function in _resources(
                synth.template(name), "AWS::Lambda::Function"
            ).items():
                assert "ReservedConcurrentExecutions" not in function["Properties"], (
                    name,
                    logical_id,
                )


def test_role_policies_stay_inline(default_synth, alternate_synth) -> None:
    """CDK moves a role's policy past IAM's inline size (10,240 characters per role, resolved
    ARNs counted) into extra managed policies. The managed policies are the lab member's and the
    lab admin's of each cluster, and the one overflow of the controller's role, which carries
    the most grants; no other role comes near the limit."""
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            managed = sorted(_resources(synth.template(name), "AWS::IAM::ManagedPolicy"))
            cluster = isinstance(synth.stacks[name], ClusterStack)
            expected = (
                ["ControllerTaskTaskRoleOverflowPolicy1", "LabAccessLabAdmin", "LabAccessLabMember"]
                if cluster
                else []
            )
            assert [m[: -len("ABCDEF12")] for m in managed] == expected, name


def test_ecs_service_linked_role_exists_before_the_controller(default_synth) -> None:
    """A new account has no ECS service-linked role; the cluster's capacity providers and the
    service wait for the custom resource that creates it."""
    template = default_synth.template("relion-spot-gpu1")
    (ensure,) = _resources(template, "Custom::ServiceLinkedRole")
    assert template["Resources"][ensure]["Properties"]["AWSServiceName"] == "ecs.amazonaws.com"
    ecs_resources = [
        *_resources(template, "AWS::ECS::Cluster"),
        *_resources(template, "AWS::ECS::ClusterCapacityProviderAssociations"),
        *_resources(template, "AWS::ECS::Service"),
    ]
    assert len(ecs_resources) == 3
    for logical_id in ecs_resources:
        assert ensure in template["Resources"][logical_id].get("DependsOn", []), logical_id


def test_every_log_group_has_retention(default_synth, alternate_synth) -> None:
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            for logical_id, group in _resources(
                synth.template(name), "AWS::Logs::LogGroup"
            ).items():
                assert group["Properties"].get("RetentionInDays") == 30, (name, logical_id)


def test_controller_is_one_spot_fargate_task_with_state_on_efs(
    default_synth, alternate_synth
) -> None:
    template = Template.from_json(default_synth.template("relion-spot-gpu1"))
    template.has_resource_properties(
        "AWS::ECS::Service",
        {
            "DesiredCount": 1,
            "DeploymentConfiguration": Match.object_like(
                {"MaximumPercent": 100, "MinimumHealthyPercent": 0}
            ),
            "CapacityProviderStrategy": [{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}],
            "ServiceRegistries": Match.any_value(),
            "NetworkConfiguration": {
                "AwsvpcConfiguration": Match.object_like({"AssignPublicIp": "ENABLED"})
            },
        },
    )
    state_volume, data_volume, containers_volume = Capture(), Capture(), Capture()
    template.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "Volumes": [state_volume, data_volume, containers_volume],
            "ContainerDefinitions": [
                Match.object_like(
                    {
                        "Command": ["controller"],
                        "MountPoints": [
                            {
                                "ContainerPath": "/var/spool/slurmctld",
                                "SourceVolume": "slurm-state",
                                "ReadOnly": False,
                            },
                            {"ContainerPath": "/data", "SourceVolume": "data", "ReadOnly": True},
                            {
                                "ContainerPath": "/containers",
                                "SourceVolume": "containers",
                                "ReadOnly": True,
                            },
                        ],
                    }
                )
            ],
        },
    )
    for volume in (state_volume, data_volume, containers_volume):
        efs_config = volume.as_object()["EFSVolumeConfiguration"]
        assert efs_config["TransitEncryption"] == "ENABLED"
        assert efs_config["AuthorizationConfig"]["IAM"] == "ENABLED"
    assert data_volume.as_object()["Name"] == "data"
    # The nodes' /data, through the same access point the nodes mount.
    data_ap = data_volume.as_object()["EFSVolumeConfiguration"]["AuthorizationConfig"]
    assert "StorageFileSystemData" in json.dumps(data_ap["AccessPointId"])
    # The nodes' image cache, where the drainer finds an image already checked.
    cache_ap = containers_volume.as_object()["EFSVolumeConfiguration"]["AuthorizationConfig"]
    assert "ContainerCache" in json.dumps(cache_ap["AccessPointId"])
    Template.from_json(alternate_synth.template("lab-b-gpu4")).has_resource_properties(
        "AWS::ECS::Service",
        {
            "CapacityProviderStrategy": [{"CapacityProvider": "FARGATE", "Weight": 1}],
            "NetworkConfiguration": {
                "AwsvpcConfiguration": Match.object_like({"AssignPublicIp": "DISABLED"})
            },
        },
    )


def test_network_egress_modes(default_synth, alternate_synth, nat_gateway_synth) -> None:
    public = Template.from_json(default_synth.template("relion-spot-network"))
    public.resource_count_is("AWS::EC2::NatGateway", 0)
    public.resource_count_is("AWS::EC2::Instance", 0)
    public.resource_count_is("AWS::EC2::Subnet", 3)
    public.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL"})
    for synth, name in (
        (default_synth, "relion-spot"),
        (alternate_synth, "lab-b"),
        (nat_gateway_synth, "lab-c"),
    ):
        endpoints = _resources(synth.template(f"{name}-network"), "AWS::EC2::VPCEndpoint")
        names = [json.dumps(e["Properties"]["ServiceName"]) for e in endpoints.values()]
        assert sorted(n.rsplit(".", 1)[-1].rstrip('"]}') for n in names) == ["dynamodb", "s3"]
        assert {e["Properties"]["VpcEndpointType"] for e in endpoints.values()} == {"Gateway"}
    nat_instance = Template.from_json(alternate_synth.template("lab-b-network"))
    nat_instance.resource_count_is("AWS::EC2::NatGateway", 0)
    nat_instance.has_resource_properties("AWS::EC2::Instance", {"InstanceType": "t4g.nano"})
    Template.from_json(nat_gateway_synth.template("lab-c-network")).resource_count_is(
        "AWS::EC2::NatGateway", 1
    )


CLUSTER_OUTPUTS = (
    "ClusterName",
    "Version",
    "GpusPerNode",
    "GpuInstanceTypes",
    "MaxGpuNodes",
    "GpuLaunchTemplateId",
    "CpuLaunchTemplateId",
    "EcsClusterName",
    "ControllerServiceName",
    "ControllerDnsName",
    "ControllerLogGroup",
)


def test_outputs_a_cli_can_find_the_cluster_by(default_synth) -> None:
    for stack in CLUSTERS:
        outputs = default_synth.template(stack)["Outputs"]
        assert set(CLUSTER_OUTPUTS) <= set(outputs)
        assert outputs["ClusterName"]["Value"] == stack
    storage = default_synth.template("relion-spot-storage")["Outputs"]
    assert {"FileSystemId", "DataAccessPointId", "DataKeptOnDestroy"} <= set(storage)


def test_templates_fit_cloudformation_limits(default_synth, alternate_synth) -> None:
    for synth in (default_synth, alternate_synth):
        for name in synth.template_names():
            template = synth.template(name)
            assert len(template["Resources"]) < 500, name
            assert len(json.dumps(template)) < 1_000_000, name


def test_cost_tables_follow_the_keep_data_setting(default_synth, alternate_synth) -> None:
    for synth, stack, policy in (
        (default_synth, "relion-spot-gpu1", "Retain"),
        (alternate_synth, "lab-b-gpu4", "Delete"),
    ):
        tables = {
            logical_id: table
            for logical_id, table in _resources(
                synth.template(stack), "AWS::DynamoDB::Table"
            ).items()
            if logical_id.startswith("CostTracker")
        }
        assert len(tables) == 2
        assert {t["DeletionPolicy"] for t in tables.values()} == {policy}


def test_controller_gets_its_spec_key_and_address(default_synth) -> None:
    from relion_spot.slurm.entrypoint import CONTROLLER_ADDR_ENV
    from relion_spot.slurm.key import KEY_PARAMETER_ARN_ENV
    from relion_spot.slurm.spec import SPEC_ENV, ClusterSpec

    template = default_synth.template("relion-spot-gpu4")
    (task,) = _resources(template, "AWS::ECS::TaskDefinition").values()
    env = {
        e["Name"]: e["Value"] for e in task["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    spec = ClusterSpec.from_json(env[SPEC_ENV])
    assert spec.cluster_name == "relion-spot-gpu4"
    assert spec.default_partition.gpus == 4
    assert env[CONTROLLER_ADDR_ENV] == "relion-spot-gpu4-ctld.relion-spot.internal"
    assert _text(env[KEY_PARAMETER_ARN_ENV]).endswith(
        ":parameter/relion-spot/relion-spot-gpu4/slurm-key"
    )


def _text(value) -> str:
    """A string or a Fn::Join of strings and references, references shown as ``<Name>``;
    any other intrinsic as its JSON."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_text(p) for p in parts)
    return json.dumps(value)


KEY_READERS = ("GpuNodesRole", "CpuNodesRole", "ControllerTaskTaskRole")


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_slurm_key_is_a_free_secure_string_only_its_cluster_reads(
    default_synth, stack: str
) -> None:
    """Made and deleted by its own custom resource, never in the template; its function may
    put and delete that one parameter, and the nodes and the controller may read it, no other.
    No KMS grant: the AWS managed key aws/ssm lets the account's principals use it through
    Parameter Store."""
    template = default_synth.template(stack)
    assert not _resources(template, "AWS::SecretsManager::Secret"), "no $0.40/month secret"
    ((key_id, key),) = _resources(template, "Custom::SlurmKey").items()
    name = f"/relion-spot/{stack}/slurm-key"
    assert set(key["Properties"]) == {"ServiceToken", "ParameterName"}, "no key in the template"
    assert key["Properties"]["ParameterName"] == name
    assert (key["DeletionPolicy"], key["UpdateReplacePolicy"]) == ("Delete", "Delete")
    function = template["Resources"][key["Properties"]["ServiceToken"]["Fn::GetAtt"][0]]
    assert function["Properties"]["Handler"] == "relion_spot.slurm_key.handler.on_event"
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]

    grants: dict[str, list[tuple[list[str], list[str]]]] = {}
    for policy in _resources(template, "AWS::IAM::Policy").values():
        for role in policy["Properties"].get("Roles", []):
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                grants.setdefault(role["Ref"], []).append(
                    (
                        sorted(_as_list(statement["Action"])),
                        [_text(r) for r in _as_list(statement["Resource"])],
                    )
                )
    key_grants = {
        role: [g for g in role_grants if any(a.startswith(("ssm:", "kms:")) for a in g[0])]
        for role, role_grants in grants.items()
    }
    ((actions, (arn,)),) = key_grants[role_id]
    assert actions == ["ssm:DeleteParameter", "ssm:PutParameter"]
    assert re.fullmatch(rf"arn:[^:]+:ssm:[^:]+:<AWS::AccountId>:parameter{name}", arn), arn
    readers = {r for r in key_grants if r.startswith(KEY_READERS)}
    assert len(readers) == len(KEY_READERS)
    for reader in readers:
        assert key_grants[reader] == [(["ssm:GetParameter"], [arn])], reader
    others = {r: g for r, g in key_grants.items() if g and r != role_id and r not in readers}
    assert others == {}, "nothing else reads or writes a parameter or uses a KMS key"
    assert not any(
        a.startswith("secretsmanager:")
        for role_grants in grants.values()
        for g in role_grants
        for a in g[0]
    )
    ((_, service),) = _resources(template, "AWS::ECS::Service").items()
    assert key_id in service["DependsOn"], "slurmctld starts after its key exists"
    assert "slurm-key" not in json.dumps(template.get("Outputs", {}))


def _dashboard_body(template: dict) -> tuple[str, dict]:
    """The dashboard's logical id and its body, references shown as ``<LogicalId>``."""
    ((logical_id, dashboard),) = _resources(template, "AWS::CloudWatch::Dashboard").items()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)
    return logical_id, json.loads(text)


def _expressions(widget: dict) -> list[str]:
    return [m[-1]["expression"] for m in widget["properties"].get("metrics", []) if len(m) == 1]


@pytest.mark.parametrize("stack", CLUSTERS)
def test_one_dashboard_per_cluster_that_finds_everything_by_its_cluster(
    default_synth, stack: str
) -> None:
    from relion_spot.constructs.dashboard import JOB_COST_PATTERN

    raw = default_synth.template(stack)
    template = Template.from_json(raw)
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    template.has_resource_properties(
        "AWS::CloudWatch::Dashboard", {"DashboardName": f"{stack}-us-east-1"}
    )
    _, body = _dashboard_body(raw)
    widgets = {w["properties"].get("title", w["type"]): w for w in body["widgets"]}
    by_cluster = f'Cluster="{stack}"'
    nodes = _expressions(widgets["Nodes running, by instance type and market"])
    assert nodes == [
        'FILL(SEARCH(\'{RelionSpot,Cluster,InstanceType,Market} MetricName="NodesRunning" '
        f"{by_cluster}', 'Maximum', 300), 0)"
    ]
    gpu = [
        *_expressions(widgets["GPU utilization (%), per GPU"]),
        *_expressions(widgets["GPU memory used and total (MB), per GPU"]),
    ]
    assert [e.split('MetricName="')[1].split('"')[0] for e in gpu] == [
        "nvidia_smi_utilization_gpu",
        "nvidia_smi_memory_used",
        "nvidia_smi_memory_total",
    ]
    assert all(e.startswith('SEARCH(\'Namespace="CWAgent"') and by_cluster in e for e in gpu)
    (resolution,) = _expressions(widgets["Resolution per iteration (Å, lower is better), per job"])
    assert 'MetricName="ResolutionAngstrom"' in resolution and by_cluster in resolution
    daily = widgets["Job cost per day (USD, estimate) and the part lost to spot reclaims"]
    assert [m[:4] for m in daily["properties"]["metrics"]] == [
        ["RelionSpot", "JobCostUSD", "Cluster", stack],
        ["RelionSpot", "ReclaimedCostUSD", "Cluster", stack],
    ]
    assert {m[4]["stat"] for m in daily["properties"]["metrics"]} == {"Sum"}
    assert daily["properties"]["period"] == 86400

    (log,) = [w for w in body["widgets"] if w["type"] == "log"]
    query = log["properties"]["query"]
    assert f"parse @message /{JOB_COST_PATTERN}/" in query
    cost_logs = Capture()
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "relion_spot.cost.handler.main",
            "LoggingConfig": {"LogGroup": {"Ref": cost_logs}},
        },
    )
    assert query.startswith(f"SOURCE '<{cost_logs.as_string()}>'"), "the cost function's logs"
    others = [name for name in CLUSTERS if name != stack]
    assert not any(f'"{other}' in json.dumps(body) for other in others)


def test_dashboard_url_is_an_output(default_synth) -> None:
    raw = default_synth.template("relion-spot-gpu4")
    logical_id, _ = _dashboard_body(raw)
    Template.from_json(raw).has_output(
        "DashboardUrl",
        {
            "Value": {
                "Fn::Join": [
                    "",
                    [
                        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
                        "#dashboards/dashboard/",
                        {"Ref": logical_id},
                    ],
                ]
            }
        },
    )


def test_metrics_are_published_only_into_their_own_namespaces(default_synth) -> None:
    """GPU nodes may put CWAgent metrics (their agent) and RelionSpot ones (their jobs'
    resolution), the cost function RelionSpot ones;
    PutMetricData has no resource scope, so the namespace condition is the whole fence."""
    template = default_synth.template("relion-spot-gpu1")
    granted: dict[str, str] = {}
    for policy in _resources(template, "AWS::IAM::Policy").values():
        (role,) = policy["Properties"].get("Roles") or policy["Properties"]["Groups"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "cloudwatch:PutMetricData" in _as_list(statement["Action"]):
                assert _as_list(statement["Action"]) == ["cloudwatch:PutMetricData"]
                namespace = statement["Condition"]["StringEquals"]["cloudwatch:namespace"]
                granted[role["Ref"]] = ",".join(_as_list(namespace))
    by_namespaces = {namespaces: role for role, namespaces in granted.items()}
    assert sorted(by_namespaces) == ["CWAgent,RelionSpot", "RelionSpot"]
    # GPU nodes: their agent's GPU metrics and their jobs' resolution per iteration.
    assert by_namespaces["CWAgent,RelionSpot"].startswith("GpuNodesRole")
    assert by_namespaces["RelionSpot"].startswith("CostTrackerRole")


def test_controller_may_put_only_its_own_service_to_sleep(default_synth) -> None:
    template = Template.from_json(default_synth.template("relion-spot-gpu4"))
    template.has_resource_properties(
        "AWS::ECS::Service", {"ServiceName": "relion-spot-gpu4-controller"}
    )
    template.has_resource_properties("AWS::ECS::Cluster", {"ClusterName": "relion-spot-gpu4"})
    template.has_resource_properties(
        "AWS::ECS::TaskDefinition",
        {
            "ContainerDefinitions": Match.array_with(
                [
                    Match.object_like(
                        {
                            "Environment": Match.array_with(
                                [
                                    {"Name": "RELION_SPOT_ECS_SERVICE",
                                     "Value": "relion-spot-gpu4-controller"},
                                    {"Name": "RELION_SPOT_CONTROLLER_IDLE_SECONDS",
                                     "Value": "1800"},
                                ]
                            )
                        }
                    )
                ]
            )
        },
    )  # fmt: skip
    resource = Capture()
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": ["ecs:DescribeServices", "ecs:UpdateService"],
                                "Resource": resource,
                            }
                        )
                    ]
                )
            }
        },
    )
    arn = json.dumps(resource.as_object())
    assert "service/relion-spot-gpu4/relion-spot-gpu4-controller" in arn


def test_a_schedule_wakes_the_controller_for_whatever_waits_in_its_queue(default_synth) -> None:
    template = default_synth.template("relion-spot-gpu1")
    (rule,) = [
        r
        for r in _resources(template, "AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0].startswith("ControllerWake")
    ]
    assert rule["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    (target,) = rule["Properties"]["Targets"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 0}
    (rule_id,) = [k for k, r in template["Resources"].items() if r is rule]
    function_id = target["Arn"]["Fn::GetAtt"][0]
    function = template["Resources"][function_id]["Properties"]
    assert function["Handler"] == "relion_spot.controller_wake.handler.on_schedule"
    (queue_id,) = [
        k for k in _resources(template, "AWS::SQS::Queue") if k.startswith("IntakeQueue")
    ]
    assert function["Environment"]["Variables"] == {
        "RELION_SPOT_INTAKE_QUEUE_URL": {"Ref": queue_id},
        "RELION_SPOT_ECS_CLUSTER": "relion-spot-gpu1",
        "RELION_SPOT_ECS_SERVICE": "relion-spot-gpu1-controller",
    }
    (permission,) = [
        p["Properties"]
        for p in _resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}
    ]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": [rule_id, "Arn"]}
    (service_id,) = _resources(template, "AWS::ECS::Service")
    assert service_id in template["Resources"][function_id]["DependsOn"]
    role_id = function["Role"]["Fn::GetAtt"][0]
    statements = [
        statement
        for policy in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"].get("Roles", [])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    by_action = {",".join(_as_list(st["Action"])): st for st in statements}
    assert sorted(by_action) == [
        "ecs:DescribeServices,ecs:UpdateService",
        "logs:CreateLogStream,logs:PutLogEvents",
        "sqs:GetQueueAttributes",
    ]
    assert by_action["sqs:GetQueueAttributes"]["Resource"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    service = json.dumps(by_action["ecs:DescribeServices,ecs:UpdateService"]["Resource"])
    assert "service/relion-spot-gpu1/relion-spot-gpu1-controller" in service


@pytest.mark.parametrize(
    ("synth", "storage", "cluster", "mode", "rates"),
    [
        ("default_synth", "relion-spot-storage", "relion-spot-gpu1", "elastic", ("0.03", "0.06")),
        ("alternate_synth", "lab-b-storage", "lab-b-gpu4", "bursting", ("0.0", "0.0")),
    ],
)
def test_efs_throughput_mode_and_the_rates_the_cost_function_prices_io_at(
    request, synth: str, storage: str, cluster: str, mode: str, rates: tuple[str, str]
) -> None:
    """Elastic bills each GiB read and written (the dated price table's rates reach the cost
    function); Bursting bills none, so the same meter readings price at zero."""
    from relion_spot.cost import config

    synthesized = request.getfixturevalue(synth)
    Template.from_json(synthesized.template(storage)).has_resource_properties(
        "AWS::EFS::FileSystem", {"ThroughputMode": mode}
    )
    Template.from_json(synthesized.template(cluster)).has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "relion_spot.cost.handler.main",
            "Environment": {
                "Variables": Match.object_like(
                    {config.STORAGE_READ_RATE: rates[0], config.STORAGE_WRITE_RATE: rates[1]}
                )
            },
        },
    )


def test_the_dashboard_can_be_left_out(alternate_synth) -> None:
    template = Template.from_json(alternate_synth.template("lab-b-gpu4"))
    template.resource_count_is("AWS::CloudWatch::Dashboard", 0)
    assert "DashboardUrl" not in template.to_json()["Outputs"]


def test_the_benchmark_job_template_is_published_per_cluster(default_synth) -> None:
    from relion_spot.jobs.class3d import render
    from relion_spot.settings import Settings

    template = Template.from_json(default_synth.template("relion-spot-gpu8"))
    template.has_resource_properties(
        "AWS::SSM::Parameter",
        {
            "Name": "/relion-spot/relion-spot-gpu8/class3d.sbatch",
            "Type": "String",
            "Tier": "Standard",
            "Value": render(Settings(gpus=(1, 4, 8)), gpus=8),
        },
    )
    outputs = template.to_json()["Outputs"]
    assert "Class3dTemplateParameter" in outputs


def test_a_stage_reader_no_node_role_was_allowed_to_assume_fails_synth() -> None:
    """Its placeholder trust would be the whole account: synth refuses rather than deploy it."""
    from aws_cdk import App
    from aws_cdk import Stack as CdkStack

    from relion_spot.constructs.stage_reader import StageReader

    app = App()
    StageReader(CdkStack(app, "Lone"), "Reader", cluster_name="lab", buckets=["lab-raw"])
    with pytest.raises(RuntimeError, match="allow_nodes was never called"):
        app.synth()


def test_stage_buckets_are_read_through_a_role_only_the_node_groups_assume(
    default_synth, alternate_synth
) -> None:
    def s3_statements(template: dict, role_prefix: str) -> list[dict]:
        found = []
        for resource in _resources(template, "AWS::IAM::Policy").values():
            roles = json.dumps(resource["Properties"].get("Roles", []))
            if role_prefix not in roles:
                continue
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                if any(a.startswith(("s3:", "sts:")) for a in _as_list(statement["Action"])):
                    found.append(statement)
        return found

    lab_b = alternate_synth.template("lab-b-gpu4")
    by_sid = {s["Sid"]: s for s in s3_statements(lab_b, "StageReaderRole")}
    assert set(by_sid) == {"StageReadObjects", "StageListBuckets"}
    assert by_sid["StageReadObjects"]["Action"] == "s3:GetObject"
    assert by_sid["StageListBuckets"]["Action"] == "s3:ListBucket"
    objects = json.dumps(by_sid["StageReadObjects"]["Resource"])
    assert ":s3:::lab-b-raw/*" in objects and ":s3:::lab-b.archive/*" in objects
    (reader_id,) = [k for k in _resources(lab_b, "AWS::IAM::Role") if k.startswith("StageReader")]
    reader = _resources(lab_b, "AWS::IAM::Role")[reader_id]["Properties"]
    (trust,) = reader["AssumeRolePolicyDocument"]["Statement"]
    trusted = sorted(p["Fn::GetAtt"][0] for p in trust["Principal"]["AWS"])
    assert [t[:12] for t in trusted] == ["CpuNodesRole", "GpuNodesRole"]
    assert reader["MaxSessionDuration"] == 3600

    def stage_statements(template: dict, role_prefix: str) -> list[dict]:
        """The node role's S3 and STS grants but the exchange job role's (tested below)."""
        return [
            s
            for s in s3_statements(template, role_prefix)
            if s.get("Sid") != "AssumeExchangeJobRole"
        ]

    for group in ("CpuNodesRole", "GpuNodesRole"):  # staging jobs; Class3D data sets
        (assume,) = stage_statements(lab_b, group)
        assert assume["Action"] == "sts:AssumeRole"
        assert assume["Resource"] == {"Fn::GetAtt": [reader_id, "Arn"]}
    for name in CLUSTERS:
        assert stage_statements(default_synth.template(name), "NodesRole") == []
        assert not [
            k
            for k in _resources(default_synth.template(name), "AWS::IAM::Role")
            if k.startswith("StageReader")
        ]

    def drainer_env(template: dict) -> dict[str, str]:
        (task,) = _resources(template, "AWS::ECS::TaskDefinition").values()
        (container,) = task["Properties"]["ContainerDefinitions"]
        return {e["Name"]: e["Value"] for e in container["Environment"]}

    assert drainer_env(lab_b)["RELION_SPOT_INTAKE_STAGE_BUCKETS"] == "lab-b-raw,lab-b.archive"
    assert (
        drainer_env(default_synth.template("relion-spot-gpu1"))["RELION_SPOT_INTAKE_STAGE_BUCKETS"]
        == ""
    )


ADOPTED_FS = "fs-0123456789abcdef0"


@pytest.fixture(scope="module")
def adopted_synth(synth_factory):
    """A deployment that takes back the file system an earlier one kept on destroy."""
    return synth_factory(adopt_file_system_id=ADOPTED_FS, name="lab-d")


def test_an_adopted_file_system_gets_mount_targets_and_access_points_not_a_new_one(
    adopted_synth,
) -> None:
    storage = adopted_synth.template("lab-d-storage")
    assert _resources(storage, "AWS::EFS::FileSystem") == {}
    subnets = _resources(adopted_synth.template("lab-d-network"), "AWS::EC2::Subnet")
    mount_targets = _resources(storage, "AWS::EFS::MountTarget")
    assert len(mount_targets) == len(subnets) == 3
    subnet_refs = set()
    for target in mount_targets.values():
        props = target["Properties"]
        assert props["FileSystemId"] == ADOPTED_FS
        assert target["DeletionPolicy"] == "Delete"
        (sg,) = props["SecurityGroups"]
        assert sg["Fn::GetAtt"][0].startswith("StorageMountTargetSecurityGroup")
        subnet_refs.add(json.dumps(props["SubnetId"]))
    assert len(subnet_refs) == 3, "one mount target per subnet"
    access_points = _resources(storage, "AWS::EFS::AccessPoint")
    assert {ap["Properties"]["RootDirectory"]["Path"] for ap in access_points.values()} == {
        "/data",
        "/containers",
    }
    assert {ap["Properties"]["FileSystemId"] for ap in access_points.values()} == {ADOPTED_FS}
    outputs = storage["Outputs"]
    assert outputs["FileSystemId"]["Value"] == ADOPTED_FS
    assert outputs["DataKeptOnDestroy"]["Value"] == "true"
    assert outputs["FileSystemAdopted"]["Value"] == "true"

    cluster = adopted_synth.template("lab-d-gpu1")
    (state_ap,) = _resources(cluster, "AWS::EFS::AccessPoint").values()
    assert state_ap["Properties"]["FileSystemId"] == ADOPTED_FS
    (task,) = _resources(cluster, "AWS::ECS::TaskDefinition").values()
    assert {v["EFSVolumeConfiguration"]["FilesystemId"] for v in task["Properties"]["Volumes"]} == {
        ADOPTED_FS
    }
    mounts = [
        json.dumps(s["Resource"])
        for s in _statements(cluster)
        if "elasticfilesystem:ClientMount" in _as_list(s["Action"])
    ]
    assert mounts and all(f"file-system/{ADOPTED_FS}" in m for m in mounts)


def test_a_new_file_system_is_still_created_and_pinned_without_adoption(default_synth) -> None:
    storage = default_synth.template("relion-spot-storage")
    assert list(_resources(storage, "AWS::EFS::FileSystem")) == [FILE_SYSTEM_LOGICAL_ID]
    assert storage["Outputs"]["FileSystemAdopted"]["Value"] == "false"


def test_a_spot_shortage_of_the_controller_invokes_the_on_demand_fallback(
    default_synth, alternate_synth
) -> None:
    template = default_synth.template("relion-spot-gpu1")
    (service_id,) = _resources(template, "AWS::ECS::Service")
    (rule,) = [
        r
        for r in _resources(template, "AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("source") == ["aws.ecs"]
    ]
    assert rule["Properties"]["EventPattern"] == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Service Action"],
        "resources": [{"Ref": service_id}],
        "detail": {
            "eventName": ["SERVICE_TASK_PLACEMENT_FAILURE"],
            "reason": ["RESOURCE:FARGATE"],
        },
    }
    (target,) = rule["Properties"]["Targets"]
    function_id = target["Arn"]["Fn::GetAtt"][0]
    function = template["Resources"][function_id]["Properties"]
    assert function["Handler"] == "relion_spot.controller_capacity.handler.on_event"
    assert function["Environment"]["Variables"] == {
        "RELION_SPOT_ECS_CLUSTER": "relion-spot-gpu1",
        "RELION_SPOT_ECS_SERVICE": "relion-spot-gpu1-controller",
    }
    (task,) = _resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["RELION_SPOT_CONTROLLER_CAPACITY_PROVIDER"] == "FARGATE_SPOT"

    on_demand = alternate_synth.template("lab-b-gpu4")
    assert not [
        r
        for r in _resources(on_demand, "AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("source") == ["aws.ecs"]
    ]
    (task,) = _resources(on_demand, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["RELION_SPOT_CONTROLLER_CAPACITY_PROVIDER"] == "FARGATE"


def _one_resource(template: dict, kind: str, prefix: str) -> tuple[str, dict]:
    (found,) = [(k, v) for k, v in _resources(template, kind).items() if k.startswith(prefix)]
    return found


def _policies_of(template: dict, key: str, logical_id: str) -> list[dict]:
    """The standalone policies (AWS::IAM::Policy) attached to one role or group."""
    return [
        p
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": logical_id} in p["Properties"].get(key, [])
    ]


def test_every_cluster_has_a_results_exchange_that_keeps_nothing(
    default_synth, alternate_synth
) -> None:
    """Private, TLS only, encrypted, no ACLs; every copy (results under out/, the lab's uploads
    under in/) gone after EXPIRY_DAYS and every unfinished upload after a day; deleted with the
    stack whatever keep_data says (the results themselves stay on EFS)."""
    from relion_spot.constructs.results_exchange import EXPIRY_DAYS, RESULTS_PREFIX, UPLOADS_PREFIX

    assert (EXPIRY_DAYS, RESULTS_PREFIX, UPLOADS_PREFIX) == (7, "out/", "in/")
    for synth, names in ((default_synth, CLUSTERS), (alternate_synth, ["lab-b-gpu4"])):
        for name in names:
            template = Template.from_json(synth.template(name))
            template.resource_count_is("AWS::S3::Bucket", 1)
            template.has_resource(
                "AWS::S3::Bucket",
                {
                    "Properties": {
                        "PublicAccessBlockConfiguration": {
                            "BlockPublicAcls": True,
                            "BlockPublicPolicy": True,
                            "IgnorePublicAcls": True,
                            "RestrictPublicBuckets": True,
                        },
                        "BucketEncryption": {
                            "ServerSideEncryptionConfiguration": [
                                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                            ]
                        },
                        "OwnershipControls": {
                            "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]
                        },
                        "LifecycleConfiguration": {
                            "Rules": [
                                {
                                    "Id": "ExpireCopies",
                                    "Status": "Enabled",
                                    "ExpirationInDays": EXPIRY_DAYS,
                                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                                }
                            ]
                        },
                        "Tags": Match.array_with(
                            [{"Key": "aws-cdk:auto-delete-objects", "Value": "true"}]
                        ),
                    },
                    "DeletionPolicy": "Delete",
                    "UpdateReplacePolicy": "Delete",
                },
            )


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_exchange_bucket_takes_tls_only_and_only_cdks_emptier_besides(
    default_synth, stack: str
) -> None:
    """The bucket policy: deny every request without TLS; allow the auto-delete function (and
    nothing else) to empty the bucket so the stack's delete can remove it. That function and
    its role are CDK's, made as raw CfnResources cdk-nag does not check: its role holds the
    basic Lambda execution policy only, and its logs go to a group of the cluster's retention
    that goes with the stack."""
    template = default_synth.template(stack)
    bucket_id, _ = _one_resource(template, "AWS::S3::Bucket", "ResultsExchangeBucket")
    (policy,) = _resources(template, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    deny, empty = policy["Properties"]["PolicyDocument"]["Statement"]
    bucket_and_objects = [
        {"Fn::GetAtt": [bucket_id, "Arn"]},
        {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/*"]]},
    ]
    assert deny == {
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "s3:*",
        "Resource": bucket_and_objects,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    provider_role_id, provider_role = _one_resource(
        template, "AWS::IAM::Role", "CustomS3AutoDeleteObjectsCustomResourceProviderRole"
    )
    assert empty["Effect"] == "Allow"
    assert empty["Principal"] == {"AWS": {"Fn::GetAtt": [provider_role_id, "Arn"]}}
    assert empty["Resource"] == bucket_and_objects
    assert empty["Action"] == [
        "s3:DeleteObject*",
        "s3:GetBucket*",
        "s3:List*",
        "s3:PutBucketPolicy",
    ]
    basic_execution = (
        "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    )
    assert provider_role["Properties"]["ManagedPolicyArns"] == [{"Fn::Sub": basic_execution}]
    assert "Policies" not in provider_role["Properties"]
    assert _policies_of(template, "Roles", provider_role_id) == []

    (deleter,) = _resources(template, "Custom::S3AutoDeleteObjects").values()
    assert deleter["Properties"]["BucketName"] == {"Ref": bucket_id}
    handler_id = deleter["Properties"]["ServiceToken"]["Fn::GetAtt"][0]
    handler = template["Resources"][handler_id]["Properties"]
    logs_id = handler["LoggingConfig"]["LogGroup"]["Ref"]
    assert logs_id.startswith("ResultsExchangeAutoDeleteLogs")
    logs = template["Resources"][logs_id]
    assert logs["Properties"]["RetentionInDays"] == 30
    assert logs["DeletionPolicy"] == "Delete"


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_exchange_job_role_is_assumed_by_the_cpu_nodes_and_writes_out_reads_in(
    default_synth, stack: str
) -> None:
    """Export jobs write results under out/, import jobs read the lab's uploads under in/: the
    one role for both, and nothing else (no list, no delete, no read of out/, no write of in/)."""
    template = default_synth.template(stack)
    bucket_id, _ = _one_resource(template, "AWS::S3::Bucket", "ResultsExchangeBucket")
    role_id, role = _one_resource(template, "AWS::IAM::Role", "ResultsExchangeJobRole")
    cpu_id, _ = _one_resource(template, "AWS::IAM::Role", "CpuNodesRole")
    gpu_id, _ = _one_resource(template, "AWS::IAM::Role", "GpuNodesRole")
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Principal": {"AWS": {"Fn::GetAtt": [cpu_id, "Arn"]}},
        }
    ]
    assert role["Properties"]["MaxSessionDuration"] == 3600
    assert "Policies" not in role["Properties"]
    assert "ManagedPolicyArns" not in role["Properties"]
    (policy,) = _policies_of(template, "Roles", role_id)
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [
        {
            "Sid": "WriteResults",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:PutObject"],
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/out/*"]]},
        },
        {
            "Sid": "ReadUploads",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/in/*"]]},
        },
    ]

    def assumes(role_id: str) -> list[dict]:
        return [
            s
            for p in _policies_of(template, "Roles", role_id)
            for s in p["Properties"]["PolicyDocument"]["Statement"]
            if "sts:AssumeRole" in _as_list(s["Action"])
        ]

    assert assumes(cpu_id) == [
        {
            "Sid": "AssumeExchangeJobRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": {"Fn::GetAtt": [role_id, "Arn"]},
        }
    ]
    assert assumes(gpu_id) == []


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_lab_uploads_under_in_and_reads_under_out_only(default_synth, stack: str) -> None:
    """``relion-spot stage`` uploads under in/ (never reading it back or deleting it),
    ``relion-spot pull`` reads under out/, and either lists only keys under those two."""
    template = default_synth.template(stack)
    bucket_id, _ = _one_resource(template, "AWS::S3::Bucket", "ResultsExchangeBucket")
    expected = [
        {
            "Sid": "PullResults",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/out/*"]]},
        },
        {
            "Sid": "UploadInputs",
            "Effect": "Allow",
            "Action": ["s3:AbortMultipartUpload", "s3:PutObject"],
            "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/in/*"]]},
        },
        {
            "Sid": "ListExchange",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": {"Fn::GetAtt": [bucket_id, "Arn"]},
            "Condition": {"StringLike": {"s3:prefix": ["out/*", "in/*"]}},
        },
    ]
    for prefix in ("LabAccessLabMember", "LabAccessLabAdmin"):
        _, policy = _one_resource(template, "AWS::IAM::ManagedPolicy", prefix)
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        s3 = [s for s in statements if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
        assert s3 == expected, prefix


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_cpu_nodes_and_the_cli_are_told_the_exchange(default_synth, stack: str) -> None:
    """Both node groups boot from the one user data, which passes the job role and the bucket
    into the node container on CPU nodes only (tests/node/test_bootstrap.py runs that block);
    the CLI finds the bucket in the stack's outputs."""
    template = default_synth.template(stack)
    bucket_id, _ = _one_resource(template, "AWS::S3::Bucket", "ResultsExchangeBucket")
    role_id, _ = _one_resource(template, "AWS::IAM::Role", "ResultsExchangeJobRole")
    for lt in _resources(template, "AWS::EC2::LaunchTemplate").values():
        parts = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
        for placeholder, value in (
            ("EXCHANGE_ROLE", {"Fn::GetAtt": [role_id, "Arn"]}),
            ("EXCHANGE_BUCKET", {"Ref": bucket_id}),
        ):
            at = parts.index(value)
            assert str(parts[at - 1]).endswith(f"readonly {placeholder}='"), placeholder
    assert template["Outputs"]["ExchangeBucket"]["Value"] == {"Ref": bucket_id}


def test_a_results_exchange_no_node_role_was_allowed_to_assume_fails_synth() -> None:
    """Its placeholder trust would be the whole account: synth refuses rather than deploy it."""
    from aws_cdk import App
    from aws_cdk import Stack as CdkStack

    from relion_spot.constructs.results_exchange import ResultsExchange

    app = App()
    ResultsExchange(
        CdkStack(app, "Lone"), "Exchange", cluster_name="lab", removal_policy=RemovalPolicy.DESTROY
    )
    with pytest.raises(RuntimeError, match="allow_node was never called"):
        app.synth()


def test_a_retained_exchange_is_not_emptied_on_delete() -> None:
    """Only a bucket that goes with the stack gets the auto-delete function and its logs."""
    from aws_cdk import App
    from aws_cdk import Stack as CdkStack
    from aws_cdk import aws_iam as iam

    from relion_spot.constructs.results_exchange import ResultsExchange

    app = App()
    stack = CdkStack(app, "Kept")
    exchange = ResultsExchange(
        stack, "Exchange", cluster_name="lab", removal_policy=RemovalPolicy.RETAIN
    )
    exchange.allow_node(iam.Role(stack, "Node", assumed_by=iam.ServicePrincipal("ec2")))
    template = Template.from_stack(stack)
    template.has_resource("AWS::S3::Bucket", {"DeletionPolicy": "Retain"})
    template.resource_count_is("Custom::S3AutoDeleteObjects", 0)
    template.resource_count_is("AWS::Logs::LogGroup", 0)
