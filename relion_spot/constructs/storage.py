"""The lab's shared EFS: data, container image cache, and each cluster's Slurm state."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Size
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from constructs import Construct

JOB_UID = 1000
"""The Unix user RELION jobs run as on every node (the ``relion`` user of the image)."""
SLURM_UID = 64030
"""The ``slurm`` user of the image; owns StateSaveLocation."""

FILE_SYSTEM_LOGICAL_ID = "DataFileSystem"
"""Pinned: a changed logical ID would make CloudFormation replace the file system (and, when
the data is not retained, delete it)."""

THROUGHPUT_MODES = {
    "bursting": efs.ThroughputMode.BURSTING,
    "elastic": efs.ThroughputMode.ELASTIC,
    "provisioned": efs.ThroughputMode.PROVISIONED,
}
"""The settings' names for EFS throughput modes (relion_spot.estimate.storage compares them)."""


class SharedStorage(Construct):
    """EFS, encrypted at rest, reachable only over TLS with IAM, from holders of one client SG."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        keep_data: bool,
        adopt_file_system_id: str | None = None,
        throughput: str = "elastic",
        provisioned_mibps: int = 0,
    ) -> None:
        super().__init__(scope, construct_id)
        self.client_security_group = ec2.SecurityGroup(
            self,
            "ClientSecurityGroup",
            vpc=vpc,
            allow_all_outbound=True,
            description="Holders of this group may mount the shared file system",
        )
        mount_target_sg = ec2.SecurityGroup(
            self,
            "MountTargetSecurityGroup",
            vpc=vpc,
            allow_all_outbound=False,
            description="EFS mount targets: NFS from file-system clients only",
        )
        mount_target_sg.add_ingress_rule(
            self.client_security_group, ec2.Port.tcp(2049), "NFS from file-system clients"
        )
        self.adopted = adopt_file_system_id is not None
        self.file_system: efs.IFileSystem
        if adopt_file_system_id is None:
            self.file_system = self._new_file_system(
                vpc,
                subnets,
                mount_target_sg,
                keep_data,
                throughput=throughput,
                provisioned_mibps=provisioned_mibps,
            )
        else:
            self.file_system = self._adopted_file_system(
                adopt_file_system_id, vpc, subnets, mount_target_sg
            )
        self.data_access_point = self._access_point("Data", "/data", JOB_UID, "0755")
        self.container_cache_access_point = self._access_point(
            "ContainerCache", "/containers", JOB_UID, "0755"
        )

    def _new_file_system(
        self,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        mount_target_sg: ec2.ISecurityGroup,
        keep_data: bool,
        *,
        throughput: str,
        provisioned_mibps: int,
    ) -> efs.FileSystem:
        removal = RemovalPolicy.RETAIN if keep_data else RemovalPolicy.DESTROY
        file_system = efs.FileSystem(
            self,
            "FileSystem",
            vpc=vpc,
            vpc_subnets=subnets,
            security_group=mount_target_sg,
            encrypted=True,
            performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
            throughput_mode=THROUGHPUT_MODES[throughput],
            provisioned_throughput_per_second=(
                Size.mebibytes(provisioned_mibps) if throughput == "provisioned" else None
            ),
            lifecycle_policy=efs.LifecyclePolicy.AFTER_30_DAYS,
            out_of_infrequent_access_policy=efs.OutOfInfrequentAccessPolicy.AFTER_1_ACCESS,
            enable_automatic_backups=False,
            removal_policy=removal,
        )
        file_system.add_to_resource_policy(
            iam.PolicyStatement(
                sid="RefuseClientsWithoutTls",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["*"],
                resources=["*"],
                conditions={"Bool": {"aws:SecureTransport": "false"}},
            )
        )
        cfn_fs = file_system.node.default_child
        assert isinstance(cfn_fs, efs.CfnFileSystem)
        cfn_fs.override_logical_id(FILE_SYSTEM_LOGICAL_ID)
        return file_system

    def _adopted_file_system(
        self,
        file_system_id: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        mount_target_sg: ec2.ISecurityGroup,
    ) -> efs.IFileSystem:
        """A file system an earlier deployment kept (keep_data) and ``cdk destroy`` left behind:
        its data, encryption and file system policy are as that deployment made them; what the
        destroy removed (mount targets, access points) is made again here. CloudFormation never
        owns it, so no destroy of this stack can delete it."""
        file_system = efs.FileSystem.from_file_system_attributes(
            self, "FileSystem", file_system_id=file_system_id, security_group=mount_target_sg
        )
        selected = vpc.select_subnets(
            subnet_type=subnets.subnet_type, subnet_group_name=subnets.subnet_group_name
        )
        for index, subnet in enumerate(selected.subnets):
            mount_target = efs.CfnMountTarget(
                self,
                f"MountTarget{index + 1}",
                file_system_id=file_system_id,
                subnet_id=subnet.subnet_id,
                security_groups=[mount_target_sg.security_group_id],
            )
            mount_target.apply_removal_policy(RemovalPolicy.DESTROY)
        return file_system

    def _access_point(self, name: str, path: str, uid: int, permissions: str) -> efs.AccessPoint:
        # Under the new file system, as ever (stable logical ids); beside an adopted one, which
        # is a reference rather than a construct, with the same logical-id prefix.
        scope: Construct = self
        construct_id = f"FileSystem{name}"
        if isinstance(self.file_system, efs.FileSystem):
            scope, construct_id = self.file_system, name
        return efs.AccessPoint(
            scope,
            construct_id,
            file_system=self.file_system,
            path=path,
            posix_user=efs.PosixUser(uid=str(uid), gid=str(uid)),
            create_acl=efs.Acl(owner_uid=str(uid), owner_gid=str(uid), permissions=permissions),
        )

    def slurm_state_access_point(self, scope: Construct, cluster_name: str) -> efs.AccessPoint:
        """A cluster's own StateSaveLocation, so clusters side by side never share job state."""
        return efs.AccessPoint(
            scope,
            "SlurmStateAccessPoint",
            file_system=self.file_system,
            path=f"/slurm/{cluster_name}/state",
            posix_user=efs.PosixUser(uid=str(SLURM_UID), gid=str(SLURM_UID)),
            create_acl=efs.Acl(
                owner_uid=str(SLURM_UID), owner_gid=str(SLURM_UID), permissions="0700"
            ),
        )

    def grant_mount(
        self,
        grantee: iam.IGrantable,
        *access_points: efs.IAccessPoint,
        read_only: bool = False,
    ) -> None:
        """Let ``grantee`` mount (read/write unless ``read_only``, never as root) through these
        access points: one statement, the condition naming each."""
        actions = ["elasticfilesystem:ClientMount"]
        if not read_only:
            actions.append("elasticfilesystem:ClientWrite")
        arns = [ap.access_point_arn for ap in access_points]
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=actions,
            resource_arns=[self.file_system.file_system_arn],
            conditions={
                "ArnEquals": {
                    "elasticfilesystem:AccessPointArn": arns[0] if len(arns) == 1 else arns
                }
            },
        )
