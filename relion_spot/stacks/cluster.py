from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from constructs import Construct

from .. import __version__, tags
from ..budget.config import BUDGET_ENV
from ..constructs.controller_capacity import ControllerCapacityFallback
from ..constructs.controller_wake import ControllerWake
from ..constructs.cost_tracker import CostTracker
from ..constructs.dashboard import ClusterDashboard
from ..constructs.intake import JobIntake
from ..constructs.job_template import Class3dJobTemplate
from ..constructs.lab_access import LabAccess
from ..constructs.log_retention import retention
from ..constructs.network import ClusterNetwork
from ..constructs.node_group import NodeGroup, grant_launch, grant_power_saving
from ..constructs.notifications import ClusterNotifications
from ..constructs.results_exchange import ResultsExchange
from ..constructs.service_linked_role import ServiceLinkedRole
from ..constructs.slurm_controller import CONTAINERS_DIR, STATE_DIR, SlurmController
from ..constructs.slurm_key import SlurmKey
from ..constructs.spot_interruption_drill import SpotInterruptionDrill
from ..constructs.stage_reader import StageReader
from ..constructs.storage import SharedStorage
from ..constructs.teardown import ClusterTeardown
from ..cost.config import COSTS_TABLE as COSTS_TABLE_ENV
from ..cost.jobcomp import SPOOL_VARIABLE as JOBCOMP_SPOOL_ENV
from ..estimate.idle import load_prices
from ..estimate.storage import storage_io_rates
from ..intake.config import (
    ADMIN_IDS_ENV,
    CONTAINER_CACHE_ENV,
    INSTANCE_ARN_PREFIX_ENV,
    RELION_IMAGE_ENV,
    STAGE_BUCKETS_ENV,
)
from ..jobs.class3d import DEFAULT_IMAGE
from ..node import bootstrap
from ..settings import Settings
from ..slurm.spec import SLURMCTLD_PORT, SLURMD_PORT, SPEC_ENV, spec_from_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SRUN_PORTS = (60001, 63000)
GPU_ROOT_VOLUME_GIB = 150
"""The Deep Learning Base AMI's root snapshot needs ~100 GiB; the rest is image cache headroom."""
CPU_ROOT_VOLUME_GIB = 40
IMAGE_BUILD_EXCLUDES = [
    ".git",
    ".venv",
    "node_modules",
    "cdk.out",
    ".local",
    "tests",
    "benchmarks",
    "**/__pycache__",
]


class ClusterStack(Stack):
    """One Slurm cluster of a given GPU count: controller, GPU and CPU node groups, teardown."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        gpu_count: int,
        network: ClusterNetwork,
        storage: SharedStorage,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cluster_name = settings.cluster_name(gpu_count)
        self.cluster_name = cluster_name
        Tags.of(self).add(tags.CLUSTER, cluster_name)
        Tags.of(self).add(tags.STACK, self.stack_name)
        log_retention = retention(settings.log_retention_days)
        vpc = network.vpc

        node_sg = ec2.SecurityGroup(
            self,
            "NodeSecurityGroup",
            vpc=vpc,
            allow_all_outbound=True,
            description=f"Slurm nodes of {cluster_name}: Slurm traffic from the cluster only",
        )
        controller_sg = ec2.SecurityGroup(
            self,
            "ControllerSecurityGroup",
            vpc=vpc,
            allow_all_outbound=True,
            description=f"slurmctld of {cluster_name}: reachable from its nodes only",
        )
        controller_sg.add_ingress_rule(node_sg, ec2.Port.tcp(SLURMCTLD_PORT), "slurmd to slurmctld")
        node_sg.add_ingress_rule(controller_sg, ec2.Port.tcp(SLURMD_PORT), "slurmctld to slurmd")
        node_sg.add_ingress_rule(node_sg, ec2.Port.tcp(SLURMD_PORT), "slurmd message fan-out")
        node_sg.add_ingress_rule(
            node_sg, ec2.Port.tcp_range(*SRUN_PORTS), "srun and job steps between nodes"
        )

        image = ecr_assets.DockerImageAsset(
            self,
            "SlurmImage",
            directory=str(REPO_ROOT),
            file="assets/slurm/Dockerfile",
            target="slurm",
            platform=ecr_assets.Platform.LINUX_AMD64,
            exclude=IMAGE_BUILD_EXCLUDES,
        )
        # A free SecureString, not a Secrets Manager secret ($0.40/month): asleep, the cluster
        # bills nothing.
        self.slurm_key = auth_key = SlurmKey(
            self, "SlurmKey", cluster_name=cluster_name, log_retention=log_retention
        )
        self.intake = JobIntake(
            self,
            "Intake",
            cluster_name=cluster_name,
            removal_policy=RemovalPolicy.RETAIN if settings.keep_data else RemovalPolicy.DESTROY,
        )
        controller_dns_name = f"{cluster_name}-ctld.{network.namespace.namespace_name}"
        # Staging from s3:// (relion_spot.jobs.stage) reads through this role, never the node's.
        self.stage_reader = (
            StageReader(
                self, "StageReader", cluster_name=cluster_name, buckets=settings.stage_buckets
            )
            if settings.stage_buckets
            else None
        )
        # `relion-spot stage` uploads a lab's folder here for an import job to read into /data,
        # and `relion-spot pull` fetches a finished job's results that an export job copied here:
        # both jobs go through this exchange's job role, never the node's. The bucket holds
        # copies only (the lab keeps its folder, the results stay on EFS), so it goes with the
        # stack whatever keep_data says.
        self.results_exchange = ResultsExchange(
            self,
            "ResultsExchange",
            cluster_name=cluster_name,
            removal_policy=RemovalPolicy.DESTROY,
            log_retention=log_retention,
        )
        user_data = ec2.UserData.custom(
            bootstrap.render(
                cluster_name=cluster_name,
                file_system_id=storage.file_system.file_system_id,
                data_access_point_id=storage.data_access_point.access_point_id,
                containers_access_point_id=storage.container_cache_access_point.access_point_id,
                slurm_image=image.image_uri,
                controller=f"{controller_dns_name}:{SLURMCTLD_PORT}",
                key_parameter_arn=auth_key.parameter_arn,
                spot_events_table="",
                intake_table=self.intake.table_name,
                stage_read_role=self.stage_reader.role_arn if self.stage_reader else "",
                exchange_role=self.results_exchange.job_role_arn,
                exchange_bucket=self.results_exchange.bucket_name,
            )
        )

        node_sgs: list[ec2.ISecurityGroup] = [node_sg, storage.client_security_group]
        self.gpu_nodes = NodeGroup(
            self,
            "GpuNodes",
            cluster_name=cluster_name,
            partition="gpu",
            instance_types=settings.gpu_types[gpu_count],
            max_nodes=settings.max_nodes,
            security_groups=node_sgs,
            root_volume_gib=GPU_ROOT_VOLUME_GIB,
            user_data=user_data,
        )
        self.cpu_nodes = NodeGroup(
            self,
            "CpuNodes",
            cluster_name=cluster_name,
            partition="cpu",
            instance_types=settings.cpu_types,
            max_nodes=settings.cpu_max_nodes,
            security_groups=node_sgs,
            root_volume_gib=CPU_ROOT_VOLUME_GIB,
            user_data=user_data,
        )
        node_groups = (self.gpu_nodes, self.cpu_nodes)
        for group in node_groups:
            storage.grant_mount(
                group.role, storage.data_access_point, storage.container_cache_access_point
            )
            image.repository.grant_pull(group.role)
            auth_key.grant_read(group.role)

        # Staging, import and export run on the CPU partition; a Class3D with a dataset copies
        # it from a stage bucket on its GPU node. Only those nodes' brokers may assume the stage
        # reader (both) and the exchange's job role (CPU), and each reads what the drainer
        # accepted a job to do before it hands the job a session.
        if self.stage_reader:
            self.stage_reader.allow_nodes(self.cpu_nodes.role, self.gpu_nodes.role)
            self.intake.grant_read_decisions(self.gpu_nodes.role)
        self.results_exchange.allow_node(self.cpu_nodes.role)
        self.intake.grant_read_decisions(self.cpu_nodes.role)

        self.cost_tracker = CostTracker(
            self,
            "CostTracker",
            cluster_name=cluster_name,
            log_retention=log_retention,
            removal_policy=RemovalPolicy.RETAIN if settings.keep_data else RemovalPolicy.DESTROY,
            storage_usd_per_gib=storage_io_rates(settings.efs_throughput, load_prices()),
        )
        for group in node_groups:
            self.cost_tracker.watch_launch_template(
                group.launch_template_id,
                launch_tags={tags.STACK: self.stack_name, tags.PARTITION: group.partition},
            )

        self.notifications = ClusterNotifications(
            self, "Notifications", cluster_name=cluster_name, email=settings.notify_email
        )

        state_access_point = storage.slurm_state_access_point(self, cluster_name)
        subnets = vpc.select_subnets(subnet_type=network.node_subnets.subnet_type)
        self.controller = SlurmController(
            self,
            "Controller",
            cluster_name=cluster_name,
            auth_key=auth_key,
            dns_name=controller_dns_name,
            vpc=vpc,
            subnets=network.node_subnets,
            assign_public_ip=network.assign_public_ip,
            security_groups=[controller_sg, storage.client_security_group],
            namespace=network.namespace,
            image=ecs.ContainerImage.from_docker_image_asset(image),
            state_file_system=storage.file_system,
            state_access_point=state_access_point,
            data_access_point=storage.data_access_point,
            containers_access_point=storage.container_cache_access_point,
            capacity=settings.controller_capacity,
            log_retention=log_retention,
            idle_seconds=settings.controller_idle_seconds,
            environment={
                **self.cost_tracker.record_writer_environment(),
                **self.intake.drainer_environment(),
                **self.notifications.publisher_environment(),
                # Always present (empty: no cap), so the release loop runs and a removed cap
                # releases the jobs held for it.
                BUDGET_ENV: _amount(settings.monthly_budget_usd),
                COSTS_TABLE_ENV: self.cost_tracker.costs_table_name,
                STAGE_BUCKETS_ENV: ",".join(settings.stage_buckets),
                SPEC_ENV: spec_from_settings(settings, gpu_count).to_json(),
                "AWS_DEFAULT_REGION": self.region,
                INSTANCE_ARN_PREFIX_ENV: f"arn:{self.partition}:ec2:{self.region}:"
                f"{self.account}:instance/",
                "RELION_SPOT_CLUSTER": cluster_name,
                "RELION_SPOT_NODE_GROUPS": self.to_json_string(
                    {
                        group.partition: {
                            "launch_template_id": group.launch_template_id,
                            "instance_types": list(group.instance_types),
                            "max_nodes": group.max_nodes,
                            "gpus_per_node": group.gpus_per_node,
                        }
                        for group in node_groups
                    }
                ),
                "RELION_SPOT_SUBNETS": ",".join(subnets.subnet_ids),
                "RELION_SPOT_NODE_IDLE_SECONDS": str(settings.node_idle_seconds),
                RELION_IMAGE_ENV: settings.relion_image or DEFAULT_IMAGE,
                CONTAINER_CACHE_ENV: CONTAINERS_DIR,
                # Job records that cannot reach DynamoDB wait on the state volume for the next.
                JOBCOMP_SPOOL_ENV: f"{STATE_DIR}/relion-spot/jobcomp-spool",
            },
        )
        # A new account has no ECS service-linked role yet; the cluster's capacity providers
        # and the service need it.
        self.ecs_service_role = ServiceLinkedRole(
            self, "EcsServiceLinkedRole", service="ecs.amazonaws.com", log_retention=log_retention
        )
        self.ecs_service_role.required_by(self.controller.cluster, self.controller.service)
        if settings.controller_capacity == "spot":
            self.capacity_fallback: ControllerCapacityFallback | None = ControllerCapacityFallback(
                self, "CapacityFallback", controller=self.controller, log_retention=log_retention
            )
        else:
            self.capacity_fallback = None
        self.controller_wake = ControllerWake(
            self,
            "ControllerWake",
            controller=self.controller,
            queue=self.intake.queue,
            log_retention=log_retention,
        )
        storage.grant_mount(self.controller.task_role, state_access_point)
        storage.grant_mount(
            self.controller.task_role,
            storage.data_access_point,
            storage.container_cache_access_point,
            read_only=True,
        )
        grant_launch(self.controller.task_role, node_groups, vpc=vpc)
        grant_power_saving(
            self.controller.task_role, cluster_name=cluster_name, vpc=vpc, scope=self
        )
        self.cost_tracker.grant_record_writer(self.controller.task_role)
        self.intake.grant_drain(self.controller.task_role)
        self.cost_tracker.grant_spend_reader(self.controller.task_role)  # the budget cap
        self.notifications.grant_publish(self.controller.task_role)
        for nodes in (self.gpu_nodes, self.cpu_nodes):
            self.intake.grant_progress(nodes.role)  # jobs' reports, into the node's own items
            self.intake.grant_node_checks(nodes.role)  # the node's permission check at start

        self.drill = SpotInterruptionDrill(
            self,
            "SpotInterruptionDrill",
            cluster_name=cluster_name,
            partition=self.gpu_nodes.partition,
        )
        self.lab_access = LabAccess(
            self,
            "LabAccess",
            cluster_name=cluster_name,
            queue=self.intake.queue,
            dead_letter_queue=self.intake.dead_letter_queue,
            intake_table=self.intake.table,
            costs_table=self.cost_tracker.costs_table,
            ecs_cluster_name=self.controller.cluster_name,
            controller_service_name=self.controller.service_name,
            controller_log_group=self.controller.log_group,
            results_exchange=self.results_exchange,
        )
        self.users = iam.Group(self, "Users")
        self.lab_access.member_policy.attach_to_group(self.users)
        self.drill.grant_run(self.users, cluster_name=cluster_name)
        drainer = self.controller.task_definition.default_container
        assert drainer is not None
        drainer.add_environment(ADMIN_IDS_ENV, self.lab_access.admin_role_id)

        self.teardown = ClusterTeardown(
            self, "Teardown", cluster_name=cluster_name, log_retention=log_retention
        )
        self.teardown.run_before_deleting(node_sg, controller_sg, *node_groups)
        self.teardown.stop_launches_first(self.controller.service)

        self.dashboard: ClusterDashboard | None = None
        if settings.dashboard:
            self.dashboard = ClusterDashboard(
                self,
                "Dashboard",
                cluster_name=cluster_name,
                metric_namespace=self.cost_tracker.metric_namespace,
                cost_log_group=self.cost_tracker.log_group,
            )

        self.class3d_template = Class3dJobTemplate(
            self,
            "Class3dTemplate",
            settings=settings,
            gpu_count=gpu_count,
            image=settings.relion_image or DEFAULT_IMAGE,
        )

        outputs: dict[str, str] = {
            "ClusterName": cluster_name,
            "Version": __version__,
            "GpusPerNode": str(gpu_count),
            "GpuInstanceTypes": ",".join(self.gpu_nodes.instance_types),
            "MaxGpuNodes": str(settings.max_nodes),
            "GpuLaunchTemplateId": self.gpu_nodes.launch_template_id,
            "CpuLaunchTemplateId": self.cpu_nodes.launch_template_id,
            "EcsClusterName": self.controller.cluster.cluster_name,
            "ControllerServiceName": self.controller.service.service_name,
            "ControllerDnsName": self.controller.dns_name,
            "ControllerLogGroup": self.controller.log_group.log_group_name,
            "JobCostsTable": self.cost_tracker.costs_table_name,
            "JobRecordsTable": self.cost_tracker.records_table_name,
            "IntakeQueueUrl": self.intake.queue_url,
            "IntakeTable": self.intake.table_name,
            "IntakeDeadLetterQueueUrl": self.intake.dead_letter_queue.queue_url,
            "Class3dTemplateParameter": self.class3d_template.parameter.parameter_name,
            "UsersGroup": self.users.group_name,
            "SpotInterruptionTemplateId": self.drill.template_id,
            "NotificationTopicArn": self.notifications.topic_arn,
            "MonthlyBudgetUsd": _amount(settings.monthly_budget_usd) or "none",
            "AdminsGroup": self.lab_access.admins.group_name,
            "LabMemberPolicyArn": self.lab_access.member_policy.managed_policy_arn,
            "LabAdminPolicyArn": self.lab_access.admin_policy.managed_policy_arn,
            "AdminRoleArn": self.lab_access.admin_role.role_arn,
            "ExchangeBucket": self.results_exchange.bucket_name,
        }
        if self.dashboard is not None:
            outputs["DashboardUrl"] = self.dashboard.console_url
        for key, value in outputs.items():
            CfnOutput(self, key, value=value)


def _amount(usd: float | None) -> str:
    """A cap as the controller and the CLI read it; empty for none."""
    return "" if usd is None else f"{usd:.2f}"
