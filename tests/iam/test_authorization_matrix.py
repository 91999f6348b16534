"""Every AWS call the product makes, authorized against the synthesized role policies.

moto checks actions only, so a condition on a key an action never carries (the launch held to
``ec2:LaunchTemplate`` on CreateFleet, spot held to ``ec2:InstanceMarketType`` on CreateFleet)
passes every moto test and refuses every launch in a real account. Here each call is written from
the IAM Service Authorization Reference: the resource types the action authorizes and the context
the request carries (``Request.context``: what the call means; the simulator sends only the keys
the action's data lists for that resource type). The policies are those of the default synth's
1-GPU cluster; "another cluster" is its 4-GPU sibling from the same synth, a real neighbour in
the same account.

Where a call is made (read the module to see its parameters):
- resume program: relion_spot.powersave.ec2 (CreateFleet, an instant spot fleet from the group's
  launch template with type x subnet overrides; node-name CreateTags); EC2 authorizes the
  launch-template contents as RunInstances, with tag-on-create as CreateTags.
- suspend / resume-fail / teardown: relion_spot.powersave.ec2, relion_spot.teardown.sweep.
- job tags: relion_spot.node.job_tags; spot watcher: relion_spot.node.spot_watcher.
- drainer, idle watch, record writer: relion_spot.intake.drain/table, relion_spot.slurm.idle,
  relion_spot.cost.jobcomp; cost Lambda: relion_spot.cost.
- node bootstrap: assets/slurm/node-bootstrap.sh (ECR, the Slurm key, EFS with IAM).
- the node's report forwarder: relion_spot.intake.report (ReportPublisher.publish, one
  PutItem into its own instance's report item; its context here is read from the call the
  forwarder makes, not typed out); the controller's relay copies it (relion_spot.intake.relay).
- the Slurm key's custom resource: relion_spot.slurm_key (put and delete its parameter); every
  container reads the key with relion_spot.slurm.key (GetParameter, decrypted; the AWS managed
  key aws/ssm needs no identity-policy grant, so none is simulated).
- the results exchange (relion_spot.constructs.results_exchange): ``relion-spot stage`` uploads
  (PutObject, multipart included, and AbortMultipartUpload) a lab's folder under in/ as a lab
  member or admin; the CPU node's root broker (relion_spot.node.stage_credentials) assumes the
  exchange's job role for an import job, which reads (GetObject) under in/<its submission>/, or
  for an export job, whose uploads land under out/<its submission>/, each session narrowed by a
  session policy to that one prefix and direction; ``relion-spot pull`` lists (ListBucket,
  s3:prefix) and downloads (GetObject) them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from relion_spot import tags
from relion_spot.cost.store import COSTS_BY_START
from relion_spot.intake.table import CONTROLLER_ATTRIBUTES

from .resolver import ACCOUNT, PARTITION, RolePolicies, TemplateResolver
from .simulator import Decision, Request, simulate, tag_context

CLUSTER_STACK = "relion-spot-gpu1"
OTHER_STACK = "relion-spot-gpu4"
IMAGE_ID = "ami-0123456789abcdef0"
INSTANCE_ID = "i-0123456789abcdef0"
OTHER_INSTANCE_ID = "i-0fedcba9876543210"


@dataclass(frozen=True)
class Group:
    partition: str
    launch_template: str
    role_arn: str
    instance_types: tuple[str, ...]


@dataclass(frozen=True)
class World:
    """Concrete names of the resources the requests are about."""

    region: str
    cluster: str
    stack: str
    other_cluster: str
    vpc: str
    other_vpc: str
    subnet: str
    security_groups: tuple[str, ...]
    groups: dict[str, Group]
    other_launch_template: str
    queue: str
    other_queue: str
    dead_letters: str
    other_dead_letters: str
    controller_log_group: str
    other_controller_log_group: str
    admin_role: str
    other_admin_role: str
    intake_table: str
    other_intake_table: str
    records_table: str
    costs_table: str
    ecs_cluster: str
    service: str
    other_service: str
    slurm_key: str
    other_slurm_key: str
    file_system: str
    data_access_point: str
    containers_access_point: str
    state_access_point: str
    image_repository: str
    cost_log_group: str
    teardown_log_group: str
    drill_template: str
    other_drill_template: str
    topic: str
    other_topic: str
    other_costs_table: str
    exchange_bucket: str
    other_exchange_bucket: str
    exchange_role: str
    exchange_role_trust: dict[str, Any]

    def exchange_key(self, key: str, bucket: str | None = None) -> str:
        return f"{bucket or self.exchange_bucket}/{key}"

    def ec2(self, resource: str) -> str:
        return f"arn:{PARTITION}:ec2:{self.region}:{ACCOUNT}:{resource}"

    @property
    def image(self) -> str:
        return f"arn:{PARTITION}:ec2:{self.region}::image/{IMAGE_ID}"

    @property
    def instance(self) -> str:
        return self.ec2(f"instance/{INSTANCE_ID}")

    @property
    def other_instance(self) -> str:
        return self.ec2(f"instance/{OTHER_INSTANCE_ID}")

    def launch_tags(self, partition: str) -> dict[str, str]:
        """What the resume program puts on the fleet and its instances (ec2.launch_tags)."""
        return {tags.CLUSTER: self.cluster, tags.PARTITION: partition}

    def template_tags(self, partition: str) -> dict[str, str]:
        """What the launch template's tag specifications put on instance, volume, interface."""
        return {**self.launch_tags(partition), tags.STACK: self.stack}

    def own_instance_tags(self, partition: str = "gpu") -> dict[str, str]:
        return {**self.template_tags(partition), tags.NODE: f"{partition}-1"}


def _world(synth: Any) -> World:
    templates = {name: synth.template(name) for name in synth.template_names()}
    stack = synth.stacks[CLUSTER_STACK]
    other_stack = synth.stacks[OTHER_STACK]
    region = stack.region
    own = TemplateResolver(templates, CLUSTER_STACK, region)
    other = TemplateResolver(templates, OTHER_STACK, region)
    network = TemplateResolver(templates, "relion-spot-network", region)
    storage = TemplateResolver(templates, "relion-spot-storage", region)

    def ec2_arn(resource: str) -> str:
        return f"arn:{PARTITION}:ec2:{region}:{ACCOUNT}:{resource}"

    def launch_template(resolver: TemplateResolver, prefix: str) -> str:
        lt = resolver.ref(resolver.one("AWS::EC2::LaunchTemplate", prefix))
        return ec2_arn(f"launch-template/{lt}")

    def table(resolver: TemplateResolver, prefix: str) -> str:
        return resolver.get_att(resolver.one("AWS::DynamoDB::Table", prefix), "Arn")

    def queue(resolver: TemplateResolver, prefix: str = "IntakeQueue") -> str:
        return resolver.get_att(resolver.one("AWS::SQS::Queue", prefix), "Arn")

    def log_group(resolver: TemplateResolver) -> str:
        name = resolver.ref(resolver.one("AWS::Logs::LogGroup", "ControllerLogs"))
        return f"arn:{PARTITION}:logs:{region}:{ACCOUNT}:log-group:{name}"

    def admin_role(resolver: TemplateResolver) -> str:
        return resolver.get_att(resolver.one("AWS::IAM::Role", "LabAccessAdminRole"), "Arn")

    def drill_template(resolver: TemplateResolver) -> str:
        template = resolver.one("AWS::FIS::ExperimentTemplate", "SpotInterruptionDrill")
        return f"arn:{PARTITION}:fis:{region}:{ACCOUNT}:experiment-template/" + resolver.get_att(
            template, "Id"
        )

    def key_parameter(cluster_stack: Any) -> str:
        name = cluster_stack.slurm_key.parameter_name
        return f"arn:{PARTITION}:ssm:{region}:{ACCOUNT}:parameter{name}"

    def service(resolver: TemplateResolver, cluster: str) -> str:
        return f"arn:{PARTITION}:ecs:{region}:{ACCOUNT}:service/{cluster}/{cluster}-controller"

    groups = {
        group.partition: Group(
            partition=group.partition,
            launch_template=launch_template(own, f"{group.partition.title()}NodesLaunchTemplate"),
            role_arn=own.get_att(
                own.one("AWS::IAM::Role", f"{group.partition.title()}Nodes"), "Arn"
            ),
            instance_types=tuple(group.instance_types),
        )
        for group in (stack.gpu_nodes, stack.cpu_nodes)
    }
    vpc_id = network.ref(network.one("AWS::EC2::VPC", "NetworkVpc"))
    subnet_id = network.ref(network.logical_ids("AWS::EC2::Subnet")[0])
    return World(
        region=region,
        cluster=stack.cluster_name,
        stack=stack.stack_name,
        other_cluster=other_stack.cluster_name,
        vpc=ec2_arn(f"vpc/{vpc_id}"),
        other_vpc=ec2_arn("vpc/vpc-0aaaaaaaaaaaaaaaa"),
        subnet=ec2_arn(f"subnet/{subnet_id}"),
        security_groups=(
            ec2_arn(
                f"security-group/{own.ref(own.one('AWS::EC2::SecurityGroup', 'NodeSecurity'))}"
            ),
            ec2_arn(
                "security-group/"
                + storage.ref(storage.one("AWS::EC2::SecurityGroup", "StorageClientSecurity"))
            ),
        ),
        groups=groups,
        other_launch_template=launch_template(other, "GpuNodesLaunchTemplate"),
        queue=queue(own),
        other_queue=queue(other),
        dead_letters=queue(own, "IntakeDeadLetters"),
        other_dead_letters=queue(other, "IntakeDeadLetters"),
        controller_log_group=log_group(own),
        other_controller_log_group=log_group(other),
        admin_role=admin_role(own),
        other_admin_role=admin_role(other),
        intake_table=table(own, "IntakeSubmissions"),
        other_intake_table=table(other, "IntakeSubmissions"),
        records_table=table(own, "CostTrackerAttemptRecords"),
        costs_table=table(own, "CostTrackerJobCosts"),
        ecs_cluster=f"arn:{PARTITION}:ecs:{region}:{ACCOUNT}:cluster/{stack.cluster_name}",
        service=service(own, stack.cluster_name),
        other_service=service(other, other_stack.cluster_name),
        slurm_key=key_parameter(stack),
        other_slurm_key=key_parameter(other_stack),
        file_system=storage.get_att(storage.one("AWS::EFS::FileSystem", "DataFileSystem"), "Arn"),
        data_access_point=storage.get_att(
            storage.one("AWS::EFS::AccessPoint", "StorageFileSystemData"), "Arn"
        ),
        containers_access_point=storage.get_att(
            storage.one("AWS::EFS::AccessPoint", "StorageFileSystemContainerCache"), "Arn"
        ),
        state_access_point=own.get_att(own.one("AWS::EFS::AccessPoint", "SlurmState"), "Arn"),
        image_repository=(
            f"arn:{PARTITION}:ecr:{region}:{ACCOUNT}:repository/"
            f"cdk-hnb659fds-container-assets-{ACCOUNT}-{region}"
        ),
        cost_log_group=own.get_att(own.one("AWS::Logs::LogGroup", "CostTrackerLogs"), "Arn"),
        teardown_log_group=own.get_att(own.one("AWS::Logs::LogGroup", "TeardownLogs"), "Arn"),
        drill_template=drill_template(own),
        other_drill_template=drill_template(other),
        topic=own.ref(own.one("AWS::SNS::Topic", "NotificationsTopic")),
        other_topic=other.ref(other.one("AWS::SNS::Topic", "NotificationsTopic")),
        other_costs_table=table(other, "CostTrackerJobCosts"),
        exchange_bucket=own.get_att(own.one("AWS::S3::Bucket", "ResultsExchangeBucket"), "Arn"),
        other_exchange_bucket=other.get_att(
            other.one("AWS::S3::Bucket", "ResultsExchangeBucket"), "Arn"
        ),
        exchange_role=own.get_att(own.one("AWS::IAM::Role", "ResultsExchangeJobRole"), "Arn"),
        exchange_role_trust=own.resolve(
            own.resources[own.one("AWS::IAM::Role", "ResultsExchangeJobRole")]["Properties"][
                "AssumeRolePolicyDocument"
            ]
        ),
    )


PRINCIPALS = {
    "controller": "ControllerTaskTaskRole",
    "gpu-node": "GpuNodesRole",
    "lab-admin": "LabAccessAdminRole",
    "admins-group": "LabAccessAdmins",
    "cpu-node": "CpuNodesRole",
    "cost": "CostTrackerRole",
    "teardown": "TeardownRole",
    "ecs-role": "EcsServiceLinkedRole",
    "cli": "Users",
    "fis": "SpotInterruptionDrillRole",
    "fallback": "CapacityFallbackRole",
    "wake": "ControllerWakeRole",
    "slurm-key": "SlurmKeyRole",
    "exchange-role": "ResultsExchangeJobRole",
}


@dataclass(frozen=True)
class Case:
    id: str
    allowed: bool
    build: Callable[[World], Request]


CASES: list[Case] = []


def allow(case_id: str) -> Callable[[Callable[[World], Request]], Callable[[World], Request]]:
    def register(build: Callable[[World], Request]) -> Callable[[World], Request]:
        CASES.append(Case(case_id, True, build))
        return build

    return register


def deny(case_id: str) -> Callable[[Callable[[World], Request]], Callable[[World], Request]]:
    def register(build: Callable[[World], Request]) -> Callable[[World], Request]:
        CASES.append(Case(case_id, False, build))
        return build

    return register


# --- resume program: one instant spot fleet per node group ----------------------------------


def _instance_launch(w: World, partition: str, **changes: Any) -> dict[str, Any]:
    """What launching one node of ``partition`` means for the instance resource."""
    group = w.groups[partition]
    context: dict[str, Any] = {
        **tag_context("RequestTag", w.launch_tags(partition)),
        "ec2:InstanceType": group.instance_types[0],
        "ec2:InstanceMarketType": "spot",
        "ec2:LaunchTemplate": group.launch_template,
        "ec2:IsLaunchTemplateResource": "false",
        "ec2:MetadataHttpTokens": "required",
        "ec2:Region": w.region,
    }
    context.update(changes)
    return context


def _from_template(w: World, partition: str, **changes: Any) -> dict[str, Any]:
    """A resource the launch template names (image, security groups, root volume)."""
    context: dict[str, Any] = {
        "ec2:LaunchTemplate": w.groups[partition].launch_template,
        "ec2:IsLaunchTemplateResource": "true",
        "ec2:Vpc": w.vpc,
        "ec2:Region": w.region,
    }
    context.update(changes)
    return context


for _partition in ("gpu", "cpu"):

    def _cases(p: str) -> None:
        @allow(f"resume/{p}/CreateFleet/fleet")
        def fleet(w: World) -> Request:
            return Request(
                "controller",
                "ec2:CreateFleet",
                w.ec2("fleet/fleet-0123456789abcdef0"),
                tag_context("RequestTag", w.launch_tags(p)),
            )

        @allow(f"resume/{p}/CreateFleet/instance")
        def fleet_instance(w: World) -> Request:
            return Request("controller", "ec2:CreateFleet", w.instance, _instance_launch(w, p))

        @allow(f"resume/{p}/CreateFleet/launch-template")
        def fleet_template(w: World) -> Request:
            return Request(
                "controller",
                "ec2:CreateFleet",
                w.groups[p].launch_template,
                {
                    **tag_context("ResourceTag", {tags.CLUSTER: w.cluster}),
                    "ec2:LaunchTemplate": w.groups[p].launch_template,
                },
            )

        @allow(f"resume/{p}/CreateFleet/subnet")
        def fleet_subnet(w: World) -> Request:
            return Request(
                "controller",
                "ec2:CreateFleet",
                w.subnet,
                {"ec2:Vpc": w.vpc, "ec2:Region": w.region},
            )

        @allow(f"resume/{p}/RunInstances/instance")
        def run_instance(w: World) -> Request:
            return Request("controller", "ec2:RunInstances", w.instance, _instance_launch(w, p))

        @allow(f"resume/{p}/RunInstances/launch-template")
        def run_template(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.groups[p].launch_template,
                _from_template(w, p),
            )

        @allow(f"resume/{p}/RunInstances/image")
        def run_image(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.image,
                _from_template(w, p, **{"ec2:Owner": "amazon", "ec2:Public": "true"}),
            )

        @allow(f"resume/{p}/RunInstances/security-group-nodes")
        def run_node_sg(w: World) -> Request:
            return Request(
                "controller", "ec2:RunInstances", w.security_groups[0], _from_template(w, p)
            )

        @allow(f"resume/{p}/RunInstances/security-group-storage-client")
        def run_storage_sg(w: World) -> Request:
            return Request(
                "controller", "ec2:RunInstances", w.security_groups[1], _from_template(w, p)
            )

        @allow(f"resume/{p}/RunInstances/volume")
        def run_volume(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.ec2("volume/vol-0123456789abcdef0"),
                _from_template(
                    w,
                    p,
                    **tag_context("RequestTag", w.template_tags(p)),
                    **{"ec2:Encrypted": "true", "ec2:VolumeType": "gp3"},
                ),
            )

        @allow(f"resume/{p}/RunInstances/network-interface")
        def run_interface(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.ec2("network-interface/eni-0123456789abcdef0"),
                _from_template(
                    w,
                    p,
                    **tag_context("RequestTag", w.template_tags(p)),
                    **{"ec2:Subnet": w.subnet, "ec2:IsLaunchTemplateResource": "false"},
                ),
            )

        @allow(f"resume/{p}/RunInstances/subnet")
        def run_subnet(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.subnet,
                _from_template(w, p, **{"ec2:IsLaunchTemplateResource": "false"}),
            )

        @allow(f"resume/{p}/RunInstances/spot-instances-request")
        def run_spot_request(w: World) -> Request:
            return Request(
                "controller",
                "ec2:RunInstances",
                w.ec2("spot-instances-request/sir-0123456789"),
                {"ec2:Region": w.region},
            )

        @allow(f"resume/{p}/CreateTags/fleet-on-create")
        def tag_fleet(w: World) -> Request:
            return Request(
                "controller",
                "ec2:CreateTags",
                w.ec2("fleet/fleet-0123456789abcdef0"),
                {**tag_context("RequestTag", w.launch_tags(p)), "ec2:CreateAction": "CreateFleet"},
            )

        for kind, action in (
            ("instance", "CreateFleet"),
            ("instance", "RunInstances"),
            ("volume", "RunInstances"),
            ("network-interface", "RunInstances"),
        ):

            def tag_on_create(w: World, kind: str = kind, action: str = action) -> Request:
                request_tags = w.launch_tags(p) if action == "CreateFleet" else w.template_tags(p)
                return Request(
                    "controller",
                    "ec2:CreateTags",
                    w.ec2(f"{kind}/{kind[:3]}-0123456789abcdef0"),
                    {**tag_context("RequestTag", request_tags), "ec2:CreateAction": action},
                )

            allow(f"resume/{p}/CreateTags/{kind}-on-{action}")(tag_on_create)

        @allow(f"resume/{p}/PassRole/node-role")
        def pass_role(w: World) -> Request:
            return Request(
                "controller",
                "iam:PassRole",
                w.groups[p].role_arn,
                {
                    "iam:PassedToService": "ec2.amazonaws.com",
                    "iam:AssociatedResourceARN": w.instance,
                },
            )

        @allow(f"resume/{p}/CreateTags/node-name")
        def tag_node_name(w: World) -> Request:
            return Request(
                "controller",
                "ec2:CreateTags",
                w.instance,
                {
                    **tag_context("ResourceTag", w.template_tags(p)),
                    **tag_context(
                        "RequestTag",
                        {tags.NODE: f"{p}-1", tags.INSTANCE_TYPE: w.groups[p].instance_types[0]},
                    ),
                },
            )

    _cases(_partition)


@allow("resume/CreateServiceLinkedRole/spot")
def create_spot_role(w: World) -> Request:
    return Request(
        "controller",
        "iam:CreateServiceLinkedRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/"
        "AWSServiceRoleForEC2Spot",
        {"iam:AWSServiceName": "spot.amazonaws.com"},
    )


@allow("resume/CreateServiceLinkedRole/ec2fleet")
def create_fleet_role(w: World) -> Request:
    return Request(
        "controller",
        "iam:CreateServiceLinkedRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/ec2fleet.amazonaws.com/"
        "AWSServiceRoleForEC2Fleet",
        {"iam:AWSServiceName": "ec2fleet.amazonaws.com"},
    )


# Launches that must be refused.


@deny("resume/deny/CreateFleet/another-launch-template")
def deny_other_template(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.other_launch_template,
        tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
    )


@deny("resume/deny/RunInstances/instance-from-another-launch-template")
def deny_run_other_template(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.instance,
        _instance_launch(w, "gpu", **{"ec2:LaunchTemplate": w.other_launch_template}),
    )


@deny("resume/deny/RunInstances/instance-without-launch-template")
def deny_run_no_template(w: World) -> Request:
    context = _instance_launch(w, "gpu")
    del context["ec2:LaunchTemplate"]
    return Request("controller", "ec2:RunInstances", w.instance, context)


@deny("resume/deny/RunInstances/on-demand")
def deny_on_demand(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.instance,
        _instance_launch(w, "gpu", **{"ec2:InstanceMarketType": "on-demand"}),
    )


@deny("resume/deny/RunInstances/image-not-from-the-template")
def deny_other_image(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.image,
        _from_template(w, "gpu", **{"ec2:IsLaunchTemplateResource": "false"}),
    )


@deny("resume/deny/CreateFleet/image-override")
def deny_fleet_image(w: World) -> Request:
    """An ImageId in the fleet's overrides is authorized as CreateFleet on the image."""
    return Request("controller", "ec2:CreateFleet", w.image, {"ec2:Owner": "amazon"})


@deny("resume/deny/CreateFleet/instance-type-outside-every-group")
def deny_fleet_type(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.instance,
        _instance_launch(w, "gpu", **{"ec2:InstanceType": "p5.48xlarge"}),
    )


@deny("resume/deny/CreateFleet/gpu-type-in-the-cpu-partition")
def deny_fleet_cross_type(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.instance,
        _instance_launch(w, "cpu", **{"ec2:InstanceType": w.groups["gpu"].instance_types[0]}),
    )


@deny("resume/deny/RunInstances/gpu-type-through-the-cpu-template")
def deny_run_cross_template(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.instance,
        _instance_launch(w, "cpu", **{"ec2:InstanceType": w.groups["gpu"].instance_types[0]}),
    )


@deny("resume/deny/RunInstances/volume-from-another-launch-template")
def deny_other_template_volume(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.ec2("volume/vol-0aaaaaaaaaaaaaaaa"),
        _from_template(w, "gpu", **{"ec2:LaunchTemplate": w.other_launch_template}),
    )


@deny("resume/deny/RunInstances/instance-type-outside-the-group")
def deny_run_type(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.instance,
        _instance_launch(w, "gpu", **{"ec2:InstanceType": "p5.48xlarge"}),
    )


@deny("resume/deny/CreateFleet/fleet-tagged-for-another-cluster")
def deny_fleet_other_tag(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.ec2("fleet/fleet-0123456789abcdef0"),
        tag_context("RequestTag", {tags.CLUSTER: w.other_cluster, tags.PARTITION: "gpu"}),
    )


@deny("resume/deny/CreateFleet/instance-tagged-for-another-cluster")
def deny_instance_other_tag(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.instance,
        _instance_launch(
            w,
            "gpu",
            **tag_context("RequestTag", {tags.CLUSTER: w.other_cluster, tags.PARTITION: "gpu"}),
        ),
    )


@deny("resume/deny/RunInstances/security-group-of-another-vpc")
def deny_other_sg(w: World) -> Request:
    return Request(
        "controller",
        "ec2:RunInstances",
        w.ec2("security-group/sg-0aaaaaaaaaaaaaaaa"),
        _from_template(w, "gpu", **{"ec2:Vpc": w.other_vpc}),
    )


@deny("resume/deny/CreateFleet/subnet-of-another-vpc")
def deny_other_subnet(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateFleet",
        w.ec2("subnet/subnet-0aaaaaaaaaaaaaaaa"),
        {"ec2:Vpc": w.other_vpc},
    )


@deny("resume/deny/PassRole/another-role")
def deny_pass_other_role(w: World) -> Request:
    return Request(
        "controller",
        "iam:PassRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/Admin",
        {"iam:PassedToService": "ec2.amazonaws.com"},
    )


@deny("resume/deny/CreateTags/untagged-resource-not-on-create")
def deny_tag_anything(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateTags",
        w.ec2("volume/vol-0aaaaaaaaaaaaaaaa"),
        tag_context("RequestTag", {tags.CLUSTER: w.cluster}),
    )


@deny("resume/deny/CreateTags/node-name-on-another-clusters-instance")
def deny_tag_other_instance(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateTags",
        w.other_instance,
        {
            **tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
            **tag_context("RequestTag", {tags.NODE: "gpu-1"}),
        },
    )


@deny("resume/deny/CreateTags/move-an-instance-to-another-cluster")
def deny_retag_cluster(w: World) -> Request:
    return Request(
        "controller",
        "ec2:CreateTags",
        w.instance,
        {
            **tag_context("ResourceTag", w.own_instance_tags()),
            **tag_context("RequestTag", {tags.CLUSTER: w.other_cluster}),
        },
    )


@deny("resume/deny/CreateServiceLinkedRole/other-service")
def deny_other_service_role(w: World) -> Request:
    return Request(
        "controller",
        "iam:CreateServiceLinkedRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/ecs.amazonaws.com/"
        "AWSServiceRoleForECS",
        {"iam:AWSServiceName": "ecs.amazonaws.com"},
    )


# --- suspend, resume-fail, teardown: find and terminate this cluster's instances -----------

for _principal in ("controller", "teardown"):

    def _terminate_cases(who: str) -> None:
        @allow(f"{who}/DescribeInstances")
        def describe(w: World) -> Request:
            return Request(who, "ec2:DescribeInstances", "*", {"ec2:Region": w.region})

        @allow(f"{who}/TerminateInstances/own")
        def terminate_own(w: World) -> Request:
            return Request(
                who,
                "ec2:TerminateInstances",
                w.instance,
                tag_context("ResourceTag", w.own_instance_tags()),
            )

        @deny(f"{who}/deny/TerminateInstances/another-clusters-instance")
        def terminate_other(w: World) -> Request:
            return Request(
                who,
                "ec2:TerminateInstances",
                w.other_instance,
                tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
            )

        @deny(f"{who}/deny/TerminateInstances/untagged-instance")
        def terminate_untagged(w: World) -> Request:
            return Request(who, "ec2:TerminateInstances", w.other_instance, {})

    _terminate_cases(_principal)


@allow("teardown/logs")
def teardown_logs(w: World) -> Request:
    return Request(
        "teardown", "logs:PutLogEvents", w.teardown_log_group.removesuffix("*") + "log-stream:abc"
    )


# --- the controller's other work: drainer, idle watch, job records, its own start -----------

for _action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
    allow(f"controller/{_action}")(lambda w, a=_action: Request("controller", a, w.queue))
deny("controller/deny/sqs:ReceiveMessage/another-queue")(
    lambda w: Request("controller", "sqs:ReceiveMessage", w.other_queue)
)
for _action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"):
    allow(f"controller/{_action}/intake-table")(
        lambda w, a=_action: Request("controller", a, w.intake_table)
    )
    allow(f"controller/{_action}/records-table")(
        lambda w, a=_action: Request("controller", a, w.records_table)
    )
deny("controller/deny/dynamodb:PutItem/another-clusters-table")(
    lambda w: Request("controller", "dynamodb:PutItem", w.other_intake_table)
)
deny("controller/deny/dynamodb:PutItem/job-costs-table")(
    lambda w: Request("controller", "dynamodb:PutItem", w.costs_table)
)
# The budget cap (resume program, release loop): the month's priced jobs from the cost index.
allow("controller/budget/dynamodb:Query/costs-index")(
    lambda w: Request("controller", "dynamodb:Query", f"{w.costs_table}/index/{COSTS_BY_START}")
)
deny("controller/budget/deny/dynamodb:Query/another-clusters-costs-index")(
    lambda w: Request(
        "controller", "dynamodb:Query", f"{w.other_costs_table}/index/{COSTS_BY_START}"
    )
)
deny("controller/budget/deny/dynamodb:Scan/costs-table")(
    lambda w: Request("controller", "dynamodb:Scan", w.costs_table)
)
# Notifications (record writer: job done/failed/reclaimed; resume program: budget reached).
allow("controller/notify/sns:Publish/own-topic")(
    lambda w: Request("controller", "sns:Publish", w.topic)
)
deny("controller/notify/deny/sns:Publish/another-clusters-topic")(
    lambda w: Request("controller", "sns:Publish", w.other_topic)
)
deny("controller/notify/deny/sns:Subscribe/own-topic")(
    lambda w: Request("controller", "sns:Subscribe", w.topic)
)
deny("gpu-node/notify/deny/sns:Publish")(lambda w: Request("gpu-node", "sns:Publish", w.topic))
deny("cli/notify/deny/sns:Publish")(lambda w: Request("cli", "sns:Publish", w.topic))
for _action in ("ecs:UpdateService", "ecs:DescribeServices"):
    allow(f"controller/{_action}/own-service")(
        lambda w, a=_action: Request("controller", a, w.service, {"ecs:cluster": w.ecs_cluster})
    )
deny("controller/deny/ecs:UpdateService/another-service")(
    lambda w: Request("controller", "ecs:UpdateService", w.other_service)
)
allow("controller/ec2:DescribeVolumes")(lambda w: Request("controller", "ec2:DescribeVolumes", "*"))
allow("controller/slurm-key/ssm:GetParameter")(
    lambda w: Request("controller", "ssm:GetParameter", w.slurm_key)
)
deny("controller/deny/ssm:GetParameter/another-clusters-slurm-key")(
    lambda w: Request("controller", "ssm:GetParameter", w.other_slurm_key)
)
deny("controller/deny/ssm:PutParameter/slurm-key")(
    lambda w: Request("controller", "ssm:PutParameter", w.slurm_key)
)
for _action in ("elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"):
    allow(f"controller/{_action}/state")(
        lambda w, a=_action: Request(
            "controller",
            a,
            w.file_system,
            {"elasticfilesystem:AccessPointArn": w.state_access_point},
        )
    )
# The drainer's preflight reads the nodes' /data: mount it, never write it.
allow("controller/preflight/ClientMount/data-access-point")(
    lambda w: Request(
        "controller",
        "elasticfilesystem:ClientMount",
        w.file_system,
        {"elasticfilesystem:AccessPointArn": w.data_access_point},
    )
)
deny("controller/deny/ClientWrite/data-access-point")(
    lambda w: Request(
        "controller",
        "elasticfilesystem:ClientWrite",
        w.file_system,
        {"elasticfilesystem:AccessPointArn": w.data_access_point},
    )
)
# The drainer looks in the nodes' image cache for an image already checked: read, never write.
allow("controller/images/ClientMount/containers-access-point")(
    lambda w: Request(
        "controller",
        "elasticfilesystem:ClientMount",
        w.file_system,
        {"elasticfilesystem:AccessPointArn": w.containers_access_point},
    )
)
deny("controller/deny/ClientWrite/containers-access-point")(
    lambda w: Request(
        "controller",
        "elasticfilesystem:ClientWrite",
        w.file_system,
        {"elasticfilesystem:AccessPointArn": w.containers_access_point},
    )
)


# --- nodes: bootstrap, job tags, progress, metrics, spot watcher ----------------------------

for _node in ("gpu-node", "cpu-node"):

    def _node_cases(who: str) -> None:
        partition = who.removesuffix("-node")
        allow(f"{who}/ecr:GetAuthorizationToken")(
            lambda w: Request(who, "ecr:GetAuthorizationToken", "*")
        )
        for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
            allow(f"{who}/{action}")(lambda w, a=action: Request(who, a, w.image_repository))
        allow(f"{who}/slurm-key/ssm:GetParameter")(
            lambda w: Request(who, "ssm:GetParameter", w.slurm_key)
        )
        deny(f"{who}/deny/ssm:GetParameter/another-clusters-slurm-key")(
            lambda w: Request(who, "ssm:GetParameter", w.other_slurm_key)
        )
        for action in ("ssm:PutParameter", "ssm:DeleteParameter"):
            deny(f"{who}/deny/{action}/slurm-key")(lambda w, a=action: Request(who, a, w.slurm_key))
        for ap in ("data", "containers"):
            for action in ("elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"):
                allow(f"{who}/{action}/{ap}")(
                    lambda w, a=action, ap=ap: Request(
                        who,
                        a,
                        w.file_system,
                        {
                            "elasticfilesystem:AccessPointArn": getattr(w, f"{ap}_access_point"),
                        },
                    )
                )
        deny(f"{who}/deny/ClientMount/slurm-state")(
            lambda w: Request(
                who,
                "elasticfilesystem:ClientMount",
                w.file_system,
                {"elasticfilesystem:AccessPointArn": w.state_access_point},
            )
        )
        job = {tags.JOB_ID: "42", tags.JOB_USER: "ana", tags.JOB_NAME: "class3d"}
        allow(f"{who}/job-tags/CreateTags")(
            lambda w: Request(
                who,
                "ec2:CreateTags",
                w.instance,
                {
                    **tag_context("ResourceTag", w.own_instance_tags(partition)),
                    **tag_context("RequestTag", job),
                },
            )
        )
        allow(f"{who}/job-tags/DescribeTags")(lambda w: Request(who, "ec2:DescribeTags", "*"))
        allow(f"{who}/job-tags/DeleteTags")(
            lambda w: Request(
                who,
                "ec2:DeleteTags",
                w.instance,
                {
                    **tag_context("ResourceTag", w.own_instance_tags(partition)),
                    "aws:TagKeys": list(tags.JOB_TAG_KEYS),
                },
            )
        )
        deny(f"{who}/deny/job-tags/another-clusters-instance")(
            lambda w: Request(
                who,
                "ec2:CreateTags",
                w.other_instance,
                {
                    **tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
                    **tag_context("RequestTag", job),
                },
            )
        )
        deny(f"{who}/deny/job-tags/cluster-tag")(
            lambda w: Request(
                who,
                "ec2:CreateTags",
                w.instance,
                {
                    **tag_context("ResourceTag", w.own_instance_tags(partition)),
                    **tag_context("RequestTag", {tags.CLUSTER: w.other_cluster}),
                },
            )
        )
        # The spot watcher drains and requeues through Slurm; the deployed stack gives it no
        # events table, so it writes none.
        deny(f"{who}/deny/spot-watcher/dynamodb:PutItem")(
            lambda w: Request(who, "dynamodb:PutItem", w.intake_table)
        )
        # No stage_buckets in the default deployment: no S3 at all (tests/iam/test_stage_buckets
        # has the granted case).
        deny(f"{who}/deny/s3:GetObject")(
            lambda w: Request(who, "s3:GetObject", f"arn:{PARTITION}:s3:::lab-data/bench.tar.gz")
        )
        # An orphaned idle node ends itself (relion_spot.node.orphan); IAM cannot say "only
        # itself", so: this cluster's instances of its own partition.
        allow(f"{who}/orphan/TerminateInstances/own-partition")(
            lambda w: Request(
                who,
                "ec2:TerminateInstances",
                w.instance,
                tag_context("ResourceTag", w.own_instance_tags(partition)),
            )
        )
        other_partition = "cpu" if partition == "gpu" else "gpu"
        deny(f"{who}/deny/TerminateInstances/other-partition")(
            lambda w: Request(
                who,
                "ec2:TerminateInstances",
                w.instance,
                tag_context("ResourceTag", w.own_instance_tags(other_partition)),
            )
        )
        deny(f"{who}/deny/TerminateInstances/another-clusters-instance")(
            lambda w: Request(
                who,
                "ec2:TerminateInstances",
                w.other_instance,
                tag_context(
                    "ResourceTag", {tags.CLUSTER: w.other_cluster, tags.PARTITION: partition}
                ),
            )
        )
        deny(f"{who}/deny/TerminateInstances/untagged")(
            lambda w: Request(who, "ec2:TerminateInstances", w.other_instance)
        )

    _node_cases(_node)

for _node in ("gpu-node", "cpu-node"):  # the node's permission check at start, recorded
    allow(f"{_node}/node-check/dynamodb:PutItem")(
        lambda w, n=_node: Request(
            n,
            "dynamodb:PutItem",
            w.intake_table,
            {"dynamodb:LeadingKeys": ["selftest:permissions:node:i-0123456789abcdef0"]},
        )
    )
    for _key, _what in (
        ("3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b", "a-submission"),
        ("selftest:permissions:controller", "the-controllers-check"),
    ):
        deny(f"{_node}/deny/dynamodb:PutItem/{_what}")(
            lambda w, n=_node, k=_key: Request(
                n, "dynamodb:PutItem", w.intake_table, {"dynamodb:LeadingKeys": [k]}
            )
        )
    deny(f"{_node}/deny/node-check/another-clusters-table")(
        lambda w, n=_node: Request(
            n,
            "dynamodb:PutItem",
            w.other_intake_table,
            {"dynamodb:LeadingKeys": ["selftest:permissions:node:i-0123456789abcdef0"]},
        )
    )
REPORTED_SUBMISSION = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"
NODE_INSTANCE_ARN = f"arn:{PARTITION}:ec2:us-east-1:{ACCOUNT}:instance/{INSTANCE_ID}"
OTHER_NODE_INSTANCE_ARN = f"arn:{PARTITION}:ec2:us-east-1:{ACCOUNT}:instance/{OTHER_INSTANCE_ID}"


def forwarder_put() -> dict[str, Any]:
    """The PutItem the node's report forwarder makes, as its own code builds it."""
    from relion_spot.intake.report import JobReport, ReportPublisher, compact

    calls: list[dict[str, Any]] = []

    class Recorder:
        def put_item(self, **request: Any) -> dict[str, Any]:
            calls.append(request)
            return {}

    publisher = ReportPublisher(table="intake", instance_arn=NODE_INSTANCE_ARN, client=Recorder())
    report = JobReport(compact({"current_iteration": 3}, state="RUNNING"), "line 1\n")
    publisher.publish(REPORTED_SUBMISSION, "42", report)
    (request,) = calls
    return request


def put_context(request: dict[str, Any], source: str = NODE_INSTANCE_ARN) -> dict[str, Any]:
    """What a PutItem request made with instance ``source``'s role carries to IAM:
    ``dynamodb:Attributes`` (every top-level attribute of the item, the key's included),
    ``dynamodb:ReturnValues`` (NONE when not asked), ``dynamodb:LeadingKeys`` and the
    session's ``ec2:SourceInstanceARN``."""
    legacy = {"Expected", "ConditionalOperator"} & set(request)
    assert not legacy, f"legacy parameters name attributes outside the item: {legacy}"
    key = request["Item"]["submission_id"]["S"]
    return {
        "dynamodb:Attributes": sorted(request["Item"]),
        "dynamodb:ReturnValues": request.get("ReturnValues", "NONE"),
        "dynamodb:LeadingKeys": [key],
        "ec2:SourceInstanceARN": source,
    }


def test_the_forwarders_put_is_read_from_its_call() -> None:
    """The context the cases below send is the forwarder's own call, and the attributes they
    add are the controller's: the decision, its sender and parameters, a cancel, a hold."""
    context = put_context(forwarder_put())
    assert {"progress", "log_tail"} <= set(context["dynamodb:Attributes"])
    assert context["dynamodb:LeadingKeys"] == [f"report:{NODE_INSTANCE_ARN}:{REPORTED_SUBMISSION}"]
    assert not set(context["dynamodb:Attributes"]) & set(CONTROLLER_ATTRIBUTES)
    decision = {"state", "job_id", "user", "sender_id", "parameters", "cancel_state"}
    assert decision <= set(CONTROLLER_ATTRIBUTES)


def _with_attribute(context: dict[str, Any], attribute: str) -> dict[str, Any]:
    return context | {"dynamodb:Attributes": [*context["dynamodb:Attributes"], attribute]}


def _keyed(context: dict[str, Any], key: str) -> dict[str, Any]:
    return context | {"dynamodb:LeadingKeys": [key]}


# A GPU job's progress, a CPU job's last word: the node's forwarder puts the report into its own
# instance's item and nowhere else, names the report's attributes only and asks nothing back.
for _node in ("gpu-node", "cpu-node"):
    allow(f"{_node}/progress/dynamodb:PutItem/forwarder")(
        lambda w, n=_node: Request(
            n, "dynamodb:PutItem", w.intake_table, put_context(forwarder_put())
        )
    )
    deny(f"{_node}/deny/progress/another-clusters-table")(
        lambda w, n=_node: Request(
            n, "dynamodb:PutItem", w.other_intake_table, put_context(forwarder_put())
        )
    )
    for _key, _what in (
        (REPORTED_SUBMISSION, "a-submission"),
        (f"report:{OTHER_NODE_INSTANCE_ARN}:{REPORTED_SUBMISSION}", "another-nodes-report"),
        (f"report:{NODE_INSTANCE_ARN}", "a-key-past-its-own-prefix"),
        (f"report:{NODE_INSTANCE_ARN}0:{REPORTED_SUBMISSION}", "a-longer-instance-id"),
    ):
        deny(f"{_node}/deny/progress/dynamodb:PutItem/{_what}")(
            lambda w, n=_node, k=_key: Request(
                n, "dynamodb:PutItem", w.intake_table, _keyed(put_context(forwarder_put()), k)
            )
        )
    # Another instance's session puts this instance's report key: its ARN is not the key's.
    deny(f"{_node}/deny/progress/dynamodb:PutItem/from-another-instance")(
        lambda w, n=_node: Request(
            n,
            "dynamodb:PutItem",
            w.intake_table,
            put_context(forwarder_put(), source=OTHER_NODE_INSTANCE_ARN),
        )
    )
    deny(f"{_node}/deny/progress/dynamodb:PutItem/without-an-instance-session")(
        lambda w, n=_node: Request(
            n,
            "dynamodb:PutItem",
            w.intake_table,
            {c: v for c, v in put_context(forwarder_put()).items() if c != "ec2:SourceInstanceARN"},
        )
    )
    for _attribute in CONTROLLER_ATTRIBUTES:  # the decision, its sender, a cancel, a hold
        deny(f"{_node}/deny/progress/dynamodb:PutItem/{_attribute}")(
            lambda w, n=_node, a=_attribute: Request(
                n,
                "dynamodb:PutItem",
                w.intake_table,
                _with_attribute(put_context(forwarder_put()), a),
            )
        )
    deny(f"{_node}/deny/progress/dynamodb:PutItem/ReturnValues-ALL_OLD")(
        lambda w, n=_node: Request(
            n,
            "dynamodb:PutItem",
            w.intake_table,
            put_context(forwarder_put()) | {"dynamodb:ReturnValues": "ALL_OLD"},
        )
    )
    for _missing in ("dynamodb:Attributes", "dynamodb:ReturnValues", "dynamodb:LeadingKeys"):
        deny(f"{_node}/deny/progress/dynamodb:PutItem/without-{_missing}")(
            lambda w, n=_node, k=_missing: Request(
                n,
                "dynamodb:PutItem",
                w.intake_table,
                {c: v for c, v in put_context(forwarder_put()).items() if c != k},
            )
        )
    for _action in ("dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        deny(f"{_node}/deny/progress/{_action}")(
            lambda w, n=_node, a=_action: Request(
                n,
                a,
                w.intake_table,
                {
                    "dynamodb:LeadingKeys": [f"report:{NODE_INSTANCE_ARN}:{REPORTED_SUBMISSION}"],
                    "ec2:SourceInstanceARN": NODE_INSTANCE_ARN,
                },
            )
        )
for _namespace in ("CWAgent", "RelionSpot"):
    allow(f"gpu-node/cloudwatch:PutMetricData/{_namespace}")(
        lambda w, n=_namespace: Request(
            "gpu-node", "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": n}
        )
    )
deny("gpu-node/deny/cloudwatch:PutMetricData/other-namespace")(
    lambda w: Request(
        "gpu-node", "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "AWS/EC2"}
    )
)


# --- the cost Lambda --------------------------------------------------------------------------

for _action in (
    "ec2:DescribeInstances",
    "ec2:DescribeVolumes",
    "ec2:DescribeTags",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeSpotPriceHistory",
    "ce:GetCostAndUsage",
    "cloudwatch:GetMetricData",
):
    allow(f"cost/{_action}")(lambda w, a=_action: Request("cost", a, "*"))
for _action in ("dynamodb:BatchGetItem", "dynamodb:Query"):
    allow(f"cost/{_action}/records-table")(lambda w, a=_action: Request("cost", a, w.records_table))
for _action in (
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
):
    allow(f"cost/{_action}/costs-table")(lambda w, a=_action: Request("cost", a, w.costs_table))
for _action in ("dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream"):
    allow(f"cost/{_action}/records-stream")(
        lambda w, a=_action: Request("cost", a, f"{w.records_table}/stream/2026-01-01T00:00:00.000")
    )
deny("cost/deny/dynamodb:PutItem/intake-table")(
    lambda w: Request("cost", "dynamodb:PutItem", w.intake_table)
)
deny("cost/deny/dynamodb:BatchWriteItem/records-table")(
    lambda w: Request("cost", "dynamodb:BatchWriteItem", w.records_table)
)
allow("cost/cloudwatch:PutMetricData/RelionSpot")(
    lambda w: Request(
        "cost", "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "RelionSpot"}
    )
)
deny("cost/deny/cloudwatch:PutMetricData/other-namespace")(
    lambda w: Request("cost", "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "CWAgent"})
)
allow("cost/logs")(
    lambda w: Request(
        "cost", "logs:PutLogEvents", w.cost_log_group.removesuffix("*") + "log-stream:abc"
    )
)
allow("cost/repair-tags/own-instance")(
    lambda w: Request(
        "cost",
        "ec2:CreateTags",
        w.instance,
        {
            **tag_context("ResourceTag", {tags.CLUSTER: w.cluster}),
            **tag_context("RequestTag", {tags.INSTANCE_TYPE: "g5.xlarge"}),
        },
    )
)
allow("cost/repair-tags/claim-untagged-volume")(
    lambda w: Request(
        "cost",
        "ec2:CreateTags",
        w.ec2("volume/vol-0123456789abcdef0"),
        tag_context("RequestTag", {tags.CLUSTER: w.cluster, tags.STACK: w.stack}),
    )
)
deny("cost/deny/repair-tags/another-clusters-instance")(
    lambda w: Request(
        "cost",
        "ec2:CreateTags",
        w.other_instance,
        {
            **tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
            **tag_context("RequestTag", {tags.INSTANCE_TYPE: "g5.xlarge"}),
        },
    )
)
deny("cost/deny/repair-tags/job-tags")(
    lambda w: Request(
        "cost",
        "ec2:CreateTags",
        w.instance,
        {
            **tag_context("ResourceTag", {tags.CLUSTER: w.cluster}),
            **tag_context("RequestTag", {tags.JOB_ID: "42"}),
        },
    )
)
deny("cost/deny/TerminateInstances")(
    lambda w: Request(
        "cost",
        "ec2:TerminateInstances",
        w.instance,
        tag_context("ResourceTag", {tags.CLUSTER: w.cluster}),
    )
)


# --- the controller's on-demand fallback (relion_spot.controller_capacity) ----------------------

for _action in ("ecs:DescribeServices", "ecs:UpdateService"):
    allow(f"fallback/{_action}/own-service")(
        lambda w, a=_action: Request("fallback", a, w.service, {"ecs:cluster": w.ecs_cluster})
    )
deny("fallback/deny/ecs:UpdateService/another-service")(
    lambda w: Request("fallback", "ecs:UpdateService", w.other_service)
)
deny("fallback/deny/ec2:TerminateInstances")(
    lambda w: Request(
        "fallback",
        "ec2:TerminateInstances",
        w.instance,
        tag_context("ResourceTag", w.own_instance_tags()),
    )
)


# --- the scheduled wake of a sleeping controller (relion_spot.controller_wake) ----------------

allow("wake/sqs:GetQueueAttributes/own-queue")(
    lambda w: Request("wake", "sqs:GetQueueAttributes", w.queue)
)
deny("wake/deny/sqs:GetQueueAttributes/another-clusters-queue")(
    lambda w: Request("wake", "sqs:GetQueueAttributes", w.other_queue)
)
for _action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage", "sqs:PurgeQueue"):
    deny(f"wake/deny/{_action}/own-queue")(lambda w, a=_action: Request("wake", a, w.queue))
for _action in ("ecs:DescribeServices", "ecs:UpdateService"):
    allow(f"wake/{_action}/own-service")(
        lambda w, a=_action: Request("wake", a, w.service, {"ecs:cluster": w.ecs_cluster})
    )
deny("wake/deny/ecs:UpdateService/another-service")(
    lambda w: Request("wake", "ecs:UpdateService", w.other_service)
)


# --- the ECS service-linked role a new account lacks ------------------------------------------

allow("ecs-role/CreateServiceLinkedRole/ecs")(
    lambda w: Request(
        "ecs-role",
        "iam:CreateServiceLinkedRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/ecs.amazonaws.com/"
        "AWSServiceRoleForECS",
        {"iam:AWSServiceName": "ecs.amazonaws.com"},
    )
)
deny("ecs-role/deny/CreateServiceLinkedRole/another-service")(
    lambda w: Request(
        "ecs-role",
        "iam:CreateServiceLinkedRole",
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/"
        "AWSServiceRoleForEC2Spot",
        {"iam:AWSServiceName": "spot.amazonaws.com"},
    )
)


# --- the Slurm key's custom resource (relion_spot.slurm_key) ---------------------------------

for _action in ("ssm:PutParameter", "ssm:DeleteParameter"):
    allow(f"slurm-key/{_action}/own-key")(lambda w, a=_action: Request("slurm-key", a, w.slurm_key))
    deny(f"slurm-key/deny/{_action}/another-clusters-key")(
        lambda w, a=_action: Request("slurm-key", a, w.other_slurm_key)
    )
    deny(f"slurm-key/deny/{_action}/another-parameter")(
        lambda w, a=_action: Request(
            "slurm-key", a, w.slurm_key.rsplit(":", 1)[0] + ":parameter/relion-spot/other"
        )
    )
deny("slurm-key/deny/ssm:GetParameter/own-key")(
    lambda w: Request("slurm-key", "ssm:GetParameter", w.slurm_key)
)


# --- the lab's relion-spot commands (relion_spot.client), as a member of the users group -----


def _stack_arn(w: World, stack: str) -> str:
    return (
        f"arn:{PARTITION}:cloudformation:{w.region}:{ACCOUNT}:stack/{stack}/"
        "0a1b2c3d-0000-4000-8000-000000000000"
    )


allow("cli/cloudformation:DescribeStacks")(
    lambda w: Request("cli", "cloudformation:DescribeStacks", _stack_arn(w, w.stack))
)
deny("cli/deny/cloudformation:DescribeStacks/another-stack")(
    lambda w: Request("cli", "cloudformation:DescribeStacks", _stack_arn(w, "relion-spot-gpu4"))
)
allow("cli/submit-cancel/sqs:SendMessage")(lambda w: Request("cli", "sqs:SendMessage", w.queue))
deny("cli/deny/sqs:SendMessage/another-queue")(
    lambda w: Request("cli", "sqs:SendMessage", w.other_queue)
)
deny("cli/deny/sqs:ReceiveMessage")(lambda w: Request("cli", "sqs:ReceiveMessage", w.queue))
for _action in ("dynamodb:GetItem", "dynamodb:Scan"):
    allow(f"cli/status/{_action}/intake-table")(
        lambda w, a=_action: Request("cli", a, w.intake_table)
    )
deny("cli/deny/dynamodb:PutItem/intake-table")(
    lambda w: Request("cli", "dynamodb:PutItem", w.intake_table)
)
deny("cli/deny/dynamodb:GetItem/another-clusters-table")(
    lambda w: Request("cli", "dynamodb:GetItem", w.other_intake_table)
)
allow("cli/status/dynamodb:BatchGetItem/costs-table")(
    lambda w: Request("cli", "dynamodb:BatchGetItem", w.costs_table)
)
allow("cli/cost-report/dynamodb:Query/costs-index")(
    lambda w: Request("cli", "dynamodb:Query", f"{w.costs_table}/index/{COSTS_BY_START}")
)
deny("cli/deny/dynamodb:PutItem/costs-table")(
    lambda w: Request("cli", "dynamodb:PutItem", w.costs_table)
)
for _action in ("ecs:DescribeServices", "ecs:UpdateService"):
    allow(f"cli/wake/{_action}")(
        lambda w, a=_action: Request("cli", a, w.service, {"ecs:cluster": w.ecs_cluster})
    )
deny("cli/deny/ecs:UpdateService/another-service")(
    lambda w: Request("cli", "ecs:UpdateService", w.other_service)
)
deny("cli/deny/ssm:GetParameter/slurm-key")(
    lambda w: Request("cli", "ssm:GetParameter", w.slurm_key)
)
deny("cli/deny/ec2:TerminateInstances")(
    lambda w: Request(
        "cli",
        "ec2:TerminateInstances",
        w.instance,
        tag_context("ResourceTag", w.own_instance_tags()),
    )
)


# --- the spot interruption drill (AWS FIS), run by relion-spot selftest --interrupt ---------

allow("fis/ec2:SendSpotInstanceInterruptions/own")(
    lambda w: Request(
        "fis",
        "ec2:SendSpotInstanceInterruptions",
        w.instance,
        tag_context("ResourceTag", w.own_instance_tags()),
    )
)
deny("fis/deny/ec2:SendSpotInstanceInterruptions/another-clusters-instance")(
    lambda w: Request(
        "fis",
        "ec2:SendSpotInstanceInterruptions",
        w.other_instance,
        tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
    )
)
deny("fis/deny/ec2:SendSpotInstanceInterruptions/untagged-instance")(
    lambda w: Request("fis", "ec2:SendSpotInstanceInterruptions", w.other_instance, {})
)
allow("fis/ec2:DescribeInstances")(
    lambda w: Request("fis", "ec2:DescribeInstances", "*", {"ec2:Region": w.region})
)
deny("fis/deny/ec2:TerminateInstances/own")(
    lambda w: Request(
        "fis",
        "ec2:TerminateInstances",
        w.instance,
        tag_context("ResourceTag", w.own_instance_tags()),
    )
)
deny("fis/deny/ec2:StopInstances/own")(
    lambda w: Request(
        "fis", "ec2:StopInstances", w.instance, tag_context("ResourceTag", w.own_instance_tags())
    )
)


def _experiment(w: World) -> str:
    return f"arn:{PARTITION}:fis:{w.region}:{ACCOUNT}:experiment/EXPabcdef0123456"


allow("cli/selftest/fis:StartExperiment/template")(
    lambda w: Request("cli", "fis:StartExperiment", w.drill_template)
)
allow("cli/selftest/fis:StartExperiment/experiment")(
    lambda w: Request(
        "cli",
        "fis:StartExperiment",
        _experiment(w),
        {**tag_context("RequestTag", {tags.CLUSTER: w.cluster}), "aws:TagKeys": [tags.CLUSTER]},
    )
)
deny("cli/deny/fis:StartExperiment/another-clusters-template")(
    lambda w: Request("cli", "fis:StartExperiment", w.other_drill_template)
)
deny("cli/deny/fis:StartExperiment/experiment-without-the-cluster-tag")(
    lambda w: Request("cli", "fis:StartExperiment", _experiment(w), {})
)
allow("cli/selftest/fis:TagResource/experiment")(
    lambda w: Request(
        "cli",
        "fis:TagResource",
        _experiment(w),
        {**tag_context("RequestTag", {tags.CLUSTER: w.cluster}), "aws:TagKeys": [tags.CLUSTER]},
    )
)
deny("cli/deny/fis:TagResource/another-cluster")(
    lambda w: Request(
        "cli",
        "fis:TagResource",
        _experiment(w),
        {
            **tag_context("RequestTag", {tags.CLUSTER: w.other_cluster}),
            "aws:TagKeys": [tags.CLUSTER],
        },
    )
)
allow("cli/selftest/fis:GetExperiment/own-experiment")(
    lambda w: Request(
        "cli",
        "fis:GetExperiment",
        _experiment(w),
        tag_context("ResourceTag", {tags.CLUSTER: w.cluster}),
    )
)
deny("cli/deny/fis:GetExperiment/another-clusters-experiment")(
    lambda w: Request(
        "cli",
        "fis:GetExperiment",
        _experiment(w),
        tag_context("ResourceTag", {tags.CLUSTER: w.other_cluster}),
    )
)
allow("cli/selftest/ec2:DescribeInstances")(
    lambda w: Request("cli", "ec2:DescribeInstances", "*", {"ec2:Region": w.region})
)
deny("cli/deny/ec2:DescribeInstances/another-region")(
    lambda w: Request("cli", "ec2:DescribeInstances", "*", {"ec2:Region": "eu-west-1"})
)
allow("cli/selftest/servicequotas:GetServiceQuota/gvt-spot")(
    lambda w: Request(
        "cli",
        "servicequotas:GetServiceQuota",
        f"arn:{PARTITION}:servicequotas:{w.region}:{ACCOUNT}:ec2/L-3819A6DF",
        {"servicequotas:service": "ec2"},
    )
)
deny("cli/deny/servicequotas:GetServiceQuota/another-quota")(
    lambda w: Request(
        "cli",
        "servicequotas:GetServiceQuota",
        f"arn:{PARTITION}:servicequotas:{w.region}:{ACCOUNT}:ec2/L-1216C47A",
        {"servicequotas:service": "ec2"},
    )
)
allow("cli/selftest/servicequotas:GetAWSDefaultServiceQuota")(
    lambda w: Request("cli", "servicequotas:GetAWSDefaultServiceQuota", "*")
)
deny("cli/deny/servicequotas:RequestServiceQuotaIncrease")(
    lambda w: Request(
        "cli",
        "servicequotas:RequestServiceQuotaIncrease",
        f"arn:{PARTITION}:servicequotas:{w.region}:{ACCOUNT}:ec2/L-3819A6DF",
    )
)
# StopExperiment carries no condition key: any experiment may be stopped (it only ends a fault).
allow("cli/selftest/fis:StopExperiment")(
    lambda w: Request("cli", "fis:StopExperiment", _experiment(w))
)
deny("cli/deny/fis:DeleteExperimentTemplate")(
    lambda w: Request("cli", "fis:DeleteExperimentTemplate", w.drill_template)
)


# --- lab member (the users group, LabMember policy) and lab admin (the admin role, LabAdmin) ---
# relion_spot.constructs.lab_access; a member's cancel of another's job is refused by the drainer
# (the SenderId), not by IAM: both send to the same queue.

for _action in ("sqs:GetQueueAttributes", "sqs:ReceiveMessage"):
    allow(f"cli/status/{_action}/dead-letters")(
        lambda w, a=_action: Request("cli", a, w.dead_letters)
    )
deny("cli/deny/sqs:ReceiveMessage/another-clusters-dead-letters")(
    lambda w: Request("cli", "sqs:ReceiveMessage", w.other_dead_letters)
)
deny("cli/deny/sqs:DeleteMessage/dead-letters")(
    lambda w: Request("cli", "sqs:DeleteMessage", w.dead_letters)
)
deny("cli/deny/logs:FilterLogEvents/controller-logs")(
    lambda w: Request("cli", "logs:FilterLogEvents", w.controller_log_group)
)
deny("cli/deny/sts:AssumeRole/admin-role")(lambda w: Request("cli", "sts:AssumeRole", w.admin_role))
allow("lab-admin/submit-cancel/sqs:SendMessage")(
    lambda w: Request("lab-admin", "sqs:SendMessage", w.queue)
)
deny("lab-admin/deny/sqs:SendMessage/another-queue")(
    lambda w: Request("lab-admin", "sqs:SendMessage", w.other_queue)
)
for _action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:PurgeQueue"):
    deny(f"lab-admin/deny/{_action}/intake-queue")(
        lambda w, a=_action: Request("lab-admin", a, w.queue)
    )
for _action in ("dynamodb:GetItem", "dynamodb:Scan"):
    allow(f"lab-admin/status/{_action}/intake-table")(
        lambda w, a=_action: Request("lab-admin", a, w.intake_table)
    )
for _action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
    deny(f"lab-admin/deny/{_action}/intake-table")(
        lambda w, a=_action: Request("lab-admin", a, w.intake_table)
    )
deny("lab-admin/deny/dynamodb:GetItem/another-clusters-table")(
    lambda w: Request("lab-admin", "dynamodb:GetItem", w.other_intake_table)
)
for _action in ("sqs:ReceiveMessage", "sqs:DeleteMessage"):
    allow(f"lab-admin/dead-letters/{_action}")(
        lambda w, a=_action: Request("lab-admin", a, w.dead_letters)
    )
deny("lab-admin/deny/sqs:DeleteMessage/another-clusters-dead-letters")(
    lambda w: Request("lab-admin", "sqs:DeleteMessage", w.other_dead_letters)
)
for _action in ("logs:FilterLogEvents", "logs:DescribeLogStreams"):
    allow(f"lab-admin/logs/{_action}")(
        lambda w, a=_action: Request("lab-admin", a, w.controller_log_group)
    )
allow("lab-admin/logs/logs:GetLogEvents")(
    lambda w: Request(
        "lab-admin",
        "logs:GetLogEvents",
        f"{w.controller_log_group}:log-stream:slurmctld/slurmctld/0123456789abcdef",
    )
)
deny("lab-admin/deny/logs:FilterLogEvents/another-clusters-logs")(
    lambda w: Request("lab-admin", "logs:FilterLogEvents", w.other_controller_log_group)
)
allow("lab-admin/wake/ecs:UpdateService")(
    lambda w: Request("lab-admin", "ecs:UpdateService", w.service, {"ecs:cluster": w.ecs_cluster})
)
deny("lab-admin/deny/ssm:GetParameter/slurm-key")(
    lambda w: Request("lab-admin", "ssm:GetParameter", w.slurm_key)
)
deny("lab-admin/deny/ec2:TerminateInstances")(
    lambda w: Request(
        "lab-admin",
        "ec2:TerminateInstances",
        w.instance,
        tag_context("ResourceTag", w.own_instance_tags()),
    )
)
allow("admins-group/sts:AssumeRole/admin-role")(
    lambda w: Request("admins-group", "sts:AssumeRole", w.admin_role)
)
deny("admins-group/deny/sts:AssumeRole/another-clusters-admin-role")(
    lambda w: Request("admins-group", "sts:AssumeRole", w.other_admin_role)
)
allow("admins-group/submit-cancel/sqs:SendMessage")(
    lambda w: Request("admins-group", "sqs:SendMessage", w.queue)
)
deny("admins-group/deny/logs:FilterLogEvents/without-the-admin-role")(
    lambda w: Request("admins-group", "logs:FilterLogEvents", w.controller_log_group)
)


# --- the results exchange: the lab uploads under in/ and reads out/, jobs the reverse ----------

SID, OTHER_SID = "42", "420"
"""A submission, and another whose id starts with the same digits (``in/42/*`` must not match
``in/420/...``)."""
RESULT = f"out/{SID}/Class3D/job042/run_it025_class001.mrc"
"""A copy as an export job writes it and ``relion-spot pull`` fetches it."""
UPLOAD = f"in/{SID}/Movies/movie_0001.tiff"
"""A file of a folder as ``relion-spot stage`` uploads it and an import job reads it."""
ROLE = "exchange-role"


def _session(w: World, actions: list[str], prefix: str) -> dict[str, Any]:
    """A session policy as the broker narrows the job role to one submission's prefix
    (relion_spot.node.stage_credentials.session_policy; pinned against it below)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": actions[0] if len(actions) == 1 else actions,
                "Resource": w.exchange_key(f"{prefix}*"),
            }
        ],
    }


def import_session(w: World, sid: str = SID) -> dict[str, Any]:
    return _session(w, ["s3:GetObject"], f"in/{sid}/")


def export_session(w: World, sid: str = SID) -> dict[str, Any]:
    return _session(w, ["s3:PutObject", "s3:AbortMultipartUpload"], f"out/{sid}/")


# The job role: import jobs read under in/, export jobs write under out/; nothing else.
for _action in ("s3:PutObject", "s3:AbortMultipartUpload"):
    allow(f"{ROLE}/export/{_action}/out")(
        lambda w, a=_action: Request(ROLE, a, w.exchange_key(RESULT))
    )
    deny(f"{ROLE}/deny/{_action}/in")(lambda w, a=_action: Request(ROLE, a, w.exchange_key(UPLOAD)))
allow(f"{ROLE}/import/s3:GetObject/in")(
    lambda w: Request(ROLE, "s3:GetObject", w.exchange_key(UPLOAD))
)
deny(f"{ROLE}/deny/s3:GetObject/out")(
    lambda w: Request(ROLE, "s3:GetObject", w.exchange_key(RESULT))
)
for _key, _what in (("out", "the-bare-out-key"), ("in", "the-bare-in-key"), ("x/1", "outside")):
    for _action in ("s3:PutObject", "s3:GetObject"):
        deny(f"{ROLE}/deny/{_action}/{_what}")(
            lambda w, a=_action, k=_key: Request(ROLE, a, w.exchange_key(k))
        )
for _action, _key in (("s3:PutObject", RESULT), ("s3:GetObject", UPLOAD)):
    deny(f"{ROLE}/deny/{_action}/another-clusters-exchange")(
        lambda w, a=_action, k=_key: Request(ROLE, a, w.exchange_key(k, w.other_exchange_bucket))
    )
for _action in ("s3:DeleteObject", "s3:PutObjectAcl", "s3:PutObjectTagging"):
    for _key, _where in ((RESULT, "out"), (UPLOAD, "in")):
        deny(f"{ROLE}/deny/{_action}/{_where}")(
            lambda w, a=_action, k=_key: Request(ROLE, a, w.exchange_key(k))
        )
for _prefix in ("out/", "in/"):
    deny(f"{ROLE}/deny/s3:ListBucket/prefix-{_prefix}")(
        lambda w, p=_prefix: Request(ROLE, "s3:ListBucket", w.exchange_bucket, {"s3:prefix": p})
    )
deny(f"{ROLE}/deny/s3:PutBucketPolicy")(
    lambda w: Request(ROLE, "s3:PutBucketPolicy", w.exchange_bucket)
)

# The broker's sessions: one submission, one direction.
allow(f"{ROLE}/import-session/s3:GetObject/own-submission")(
    lambda w: Request(
        ROLE, "s3:GetObject", w.exchange_key(UPLOAD), session_policy=import_session(w)
    )
)
deny(f"{ROLE}/import-session/deny/s3:GetObject/another-submission")(
    lambda w: Request(
        ROLE,
        "s3:GetObject",
        w.exchange_key(f"in/{OTHER_SID}/Movies/movie_0001.tiff"),
        session_policy=import_session(w),
    )
)
deny(f"{ROLE}/import-session/deny/s3:PutObject/own-submissions-results")(
    lambda w: Request(
        ROLE, "s3:PutObject", w.exchange_key(RESULT), session_policy=import_session(w)
    )
)
for _action in ("s3:PutObject", "s3:AbortMultipartUpload"):
    allow(f"{ROLE}/export-session/{_action}/own-submission")(
        lambda w, a=_action: Request(
            ROLE, a, w.exchange_key(RESULT), session_policy=export_session(w)
        )
    )
    deny(f"{ROLE}/export-session/deny/{_action}/another-submission")(
        lambda w, a=_action: Request(
            ROLE,
            a,
            w.exchange_key(f"out/{OTHER_SID}/Class3D/job042/run_it025_class001.mrc"),
            session_policy=export_session(w),
        )
    )
deny(f"{ROLE}/export-session/deny/s3:GetObject/own-submissions-upload")(
    lambda w: Request(
        ROLE, "s3:GetObject", w.exchange_key(UPLOAD), session_policy=export_session(w)
    )
)

# Only the CPU node's broker may assume the job role: its policy and the role's trust, both.
allow(f"cpu-node/broker/sts:AssumeRole/{ROLE}")(
    lambda w: Request(
        "cpu-node", "sts:AssumeRole", w.exchange_role, resource_policy=w.exchange_role_trust
    )
)
for _who in ("gpu-node", "controller", "cli", "lab-admin", "any-assumer"):
    deny(f"{_who}/deny/sts:AssumeRole/{ROLE}")(
        lambda w, n=_who: Request(
            n, "sts:AssumeRole", w.exchange_role, resource_policy=w.exchange_role_trust
        )
    )
# The broker reads a submission's decision to know what the drainer accepted a job to do.
allow("cpu-node/broker/dynamodb:GetItem/intake-table")(
    lambda w: Request("cpu-node", "dynamodb:GetItem", w.intake_table)
)
deny("cpu-node/deny/broker/dynamodb:GetItem/another-clusters-table")(
    lambda w: Request("cpu-node", "dynamodb:GetItem", w.other_intake_table)
)
deny("gpu-node/deny/broker/dynamodb:GetItem/intake-table")(
    lambda w: Request("gpu-node", "dynamodb:GetItem", w.intake_table)
)
for _node in ("gpu-node", "cpu-node"):  # the nodes themselves write and read nothing there
    for _action in ("s3:PutObject", "s3:GetObject"):
        for _key, _where in ((RESULT, "out"), (UPLOAD, "in")):
            deny(f"{_node}/deny/{_action}/exchange-{_where}")(
                lambda w, n=_node, a=_action, k=_key: Request(n, a, w.exchange_key(k))
            )

# The lab, as a member and as the admin role: relion-spot stage and relion-spot pull.
for _who in ("cli", "lab-admin"):
    for _action in ("s3:PutObject", "s3:AbortMultipartUpload"):
        allow(f"{_who}/stage/{_action}/in")(
            lambda w, n=_who, a=_action: Request(n, a, w.exchange_key(UPLOAD))
        )
    allow(f"{_who}/pull/s3:GetObject/out")(
        lambda w, n=_who: Request(n, "s3:GetObject", w.exchange_key(RESULT))
    )
    for _prefix in ("out/", f"out/{SID}/", "in/", f"in/{SID}/"):
        allow(f"{_who}/list/s3:ListBucket/prefix-{_prefix}")(
            lambda w, n=_who, p=_prefix: Request(
                n, "s3:ListBucket", w.exchange_bucket, {"s3:prefix": p}
            )
        )
    for _prefix, _what in (("", "empty-prefix"), ("x/", "prefix-x/"), ("ou", "prefix-ou")):
        deny(f"{_who}/deny/s3:ListBucket/{_what}")(
            lambda w, n=_who, p=_prefix: Request(
                n, "s3:ListBucket", w.exchange_bucket, {"s3:prefix": p}
            )
        )
    deny(f"{_who}/deny/s3:ListBucket/no-prefix")(
        lambda w, n=_who: Request(n, "s3:ListBucket", w.exchange_bucket)
    )
    deny(f"{_who}/deny/s3:GetObject/in")(  # an upload is never read back through the exchange
        lambda w, n=_who: Request(n, "s3:GetObject", w.exchange_key(UPLOAD))
    )
    deny(f"{_who}/deny/s3:PutObject/out")(  # results are the export job's to write
        lambda w, n=_who: Request(n, "s3:PutObject", w.exchange_key(RESULT))
    )
    deny(f"{_who}/deny/s3:PutObject/outside")(
        lambda w, n=_who: Request(n, "s3:PutObject", w.exchange_key("x/1"))
    )
    for _key, _where in ((RESULT, "out"), (UPLOAD, "in")):
        deny(f"{_who}/deny/s3:DeleteObject/{_where}")(
            lambda w, n=_who, k=_key: Request(n, "s3:DeleteObject", w.exchange_key(k))
        )
    for _action, _key in (("s3:GetObject", RESULT), ("s3:PutObject", UPLOAD)):
        deny(f"{_who}/deny/{_action}/another-clusters-exchange")(
            lambda w, n=_who, a=_action, k=_key: Request(
                n, a, w.exchange_key(k, w.other_exchange_bucket)
            )
        )


ANY_ASSUMER = RolePolicies(
    logical_id="AnyAssumer",
    arn=f"arn:{PARTITION}:iam::{ACCOUNT}:role/any-assumer",
    policies=[
        {
            "name": "assume-anything",
            "policy": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            },
        }
    ],
    managed_policy_arns=[],
)
"""A role of the same account whose own policy allows sts:AssumeRole on every role: the
exchange job role's trust, naming the CPU node role alone, must still refuse it."""


# --- running the matrix -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(default_synth: Any) -> World:
    return _world(default_synth)


@pytest.fixture(scope="module")
def decisions(default_synth: Any, world: World) -> dict[str, Decision]:
    """One simulator process for the whole matrix."""
    templates = {name: default_synth.template(name) for name in default_synth.template_names()}
    roles = TemplateResolver(templates, CLUSTER_STACK, world.region).role_policies()
    principals = {}
    for name, prefix in PRINCIPALS.items():
        (role,) = [r for logical_id, r in roles.items() if logical_id.startswith(prefix)]
        principals[name] = role
    principals["any-assumer"] = ANY_ASSUMER
    return simulate(principals, {case.id: case.build(world) for case in CASES})


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_authorization(case: Case, decisions: dict[str, Decision]) -> None:
    decision = decisions[case.id]
    assert decision.decision != "Error", decision.errors
    assert decision.ignored == [], "sent a context key the action does not carry"
    assert decision.allowed == case.allowed, (
        f"{case.id}: expected {'Allowed' if case.allowed else 'denied'}, got "
        f"{decision.decision} (resource type {decision.resource_type}; context sent "
        f"{decision.sent}, not carried by the action {decision.dropped})"
    )


def test_create_fleet_carries_neither_launch_template_nor_market_type(
    decisions: dict[str, Decision],
) -> None:
    """The finding behind this matrix, pinned to the action data: what holds a fleet launch to the
    template and to spot cannot be a condition on CreateFleet itself."""
    dropped = decisions["resume/gpu/CreateFleet/instance"].dropped
    assert "ec2:LaunchTemplate" in dropped
    assert "ec2:InstanceMarketType" in dropped
    assert "ec2:InstanceMarketType" in decisions["resume/gpu/RunInstances/instance"].sent


@pytest.mark.parametrize("access", ["import", "export"])
def test_the_simulated_sessions_are_the_brokers(world: World, access: str) -> None:
    """The session policies simulated above are the ones the broker asks STS for."""
    from relion_spot.node import stage_credentials as broker

    bucket = world.exchange_bucket.split(":::", 1)[1]
    if access == "import":
        approved = broker.Approved("7", bucket, f"{broker.UPLOADS_PREFIX}{SID}/", broker.IMPORT)
        simulated = import_session(world)
    else:
        approved = broker.Approved("7", bucket, f"{broker.RESULTS_PREFIX}{SID}/", broker.WRITE)
        simulated = export_session(world)
    assert json.loads(broker.session_policy(approved, PARTITION)) == simulated
