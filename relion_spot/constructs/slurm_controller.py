"""slurmctld as one Fargate task, its state on EFS, findable by a stable private DNS name."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from ..controller_capacity.fallback import ON_DEMAND, SPOT
from ..settings import ControllerCapacity
from ..slurm import idle
from ..slurm.entrypoint import CONTROLLER_ADDR_ENV
from ..slurm.key import KEY_PARAMETER_ARN_ENV
from ..slurm.spec import SLURMCTLD_PORT
from .slurm_key import SlurmKey

STATE_DIR = "/var/spool/slurmctld"
DATA_DIR = "/data"
"""Where the controller sees the nodes' /data (read-only), so the drainer can preflight jobs."""
CONTAINERS_DIR = "/containers"
"""Where the controller sees the nodes' image cache (read-only), so the drainer knows an image
already made and checked and submits no image job for it (relion_spot.intake.images)."""
TASK_CPU = 256
TASK_MEMORY_MIB = 1024
"""slurmctld for a few dozen cloud nodes idles at a few percent of a quarter vCPU; the memory
headroom is for the power-save programs it spawns (boto3 in Python)."""


class SlurmController(Construct):
    """The cluster's single slurmctld, reachable at ``dns_name`` (a name in ``namespace``).

    Exactly one task ever runs (max 100 % during deployments, min 0 %): two slurmctld on one
    StateSaveLocation would corrupt it. A replaced or reclaimed task comes back on the same EFS
    state and the same DNS name, so no job is lost and nodes find it again.

    With nothing to do for ``idle_seconds`` the controller sets its own service to 0 tasks
    (relion_spot.slurm.idle); a submission sets it back to 1 (relion_spot.controller_wake). Cluster
    and service have fixed names so the task can be told them without a reference cycle.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        auth_key: SlurmKey,
        dns_name: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        assign_public_ip: bool,
        security_groups: list[ec2.ISecurityGroup],
        namespace: servicediscovery.IPrivateDnsNamespace,
        image: ecs.ContainerImage,
        state_file_system: efs.IFileSystem,
        state_access_point: efs.IAccessPoint,
        data_access_point: efs.IAccessPoint,
        containers_access_point: efs.IAccessPoint,
        capacity: ControllerCapacity,
        log_retention: logs.RetentionDays,
        environment: dict[str, str],
        idle_seconds: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.auth_key = auth_key
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.cluster_name = cluster_name
        self.capacity_provider = SPOT if capacity == "spot" else ON_DEMAND
        self.service_name = f"{cluster_name}-controller"
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=cluster_name,
            vpc=vpc,
            enable_fargate_capacity_providers=True,
            container_insights_v2=ecs.ContainerInsights.DISABLED,
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=TASK_CPU,
            memory_limit_mib=TASK_MEMORY_MIB,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
            volumes=[
                _efs_volume("slurm-state", state_file_system, state_access_point),
                _efs_volume("data", state_file_system, data_access_point),
                _efs_volume("containers", state_file_system, containers_access_point),
            ],
        )
        self.dns_name = dns_name
        container = self.task_definition.add_container(
            "slurmctld",
            image=image,
            command=["controller"],
            environment={
                **environment,
                KEY_PARAMETER_ARN_ENV: self.auth_key.parameter_arn,
                CONTROLLER_ADDR_ENV: self.dns_name,
                idle.CLUSTER_ENV: self.cluster_name,
                idle.SERVICE_ENV: self.service_name,
                idle.IDLE_SECONDS_ENV: str(idle_seconds),
                idle.CAPACITY_PROVIDER_ENV: self.capacity_provider,
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="slurmctld", log_group=self.log_group),
            port_mappings=[ecs.PortMapping(container_port=SLURMCTLD_PORT)],
            stop_timeout=Duration.seconds(120),
            essential=True,
        )
        container.add_mount_points(
            ecs.MountPoint(container_path=STATE_DIR, source_volume="slurm-state", read_only=False),
            # The drainer's preflight reads STAR and MRC headers of submitted projects; it never
            # writes there (the jobs do, on the nodes).
            ecs.MountPoint(container_path=DATA_DIR, source_volume="data", read_only=True),
            # The drainer looks for an image's check record; the nodes make and check images.
            ecs.MountPoint(
                container_path=CONTAINERS_DIR, source_volume="containers", read_only=True
            ),
        )
        self.auth_key.grant_read(self.task_definition.task_role)
        self.service = ecs.FargateService(
            self,
            "Service",
            service_name=self.service_name,
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=1,
            min_healthy_percent=0,
            max_healthy_percent=100,
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(capacity_provider=self.capacity_provider, weight=1)
            ],
            vpc_subnets=subnets,
            assign_public_ip=assign_public_ip,
            security_groups=security_groups,
            cloud_map_options=ecs.CloudMapOptions(
                cloud_map_namespace=namespace,
                name=dns_name.split(".", 1)[0],
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
            ),
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
        )
        # slurmctld reads the key at start: never before the key exists, and it stops first.
        self.auth_key.required_by(self.service)
        # Only its own service, and only its task count (to sleep); waking is the submitter's.
        self.grant_scale(self.task_definition.task_role)

    def grant_scale(self, grantee: iam.IGrantable) -> None:
        """Read and set this controller service's task count (sleep and wake), no other."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecs:UpdateService", "ecs:DescribeServices"],
                resources=[
                    Stack.of(self).format_arn(
                        service="ecs",
                        resource="service",
                        resource_name=f"{self.cluster_name}/{self.service_name}",
                    )
                ],
            )
        )

    @property
    def task_role(self) -> iam.IRole:
        """The identity slurmctld and its power-save programs act as."""
        return self.task_definition.task_role


def _efs_volume(
    name: str, file_system: efs.IFileSystem, access_point: efs.IAccessPoint
) -> ecs.Volume:
    """A task volume through one EFS access point, over TLS, mounted as the task's role."""
    return ecs.Volume(
        name=name,
        efs_volume_configuration=ecs.EfsVolumeConfiguration(
            file_system_id=file_system.file_system_id,
            transit_encryption="ENABLED",
            authorization_config=ecs.AuthorizationConfig(
                access_point_id=access_point.access_point_id, iam="ENABLED"
            ),
        ),
    )
