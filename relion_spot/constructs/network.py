"""The VPC every cluster of a deployment shares, with egress chosen by what it costs at idle."""

from __future__ import annotations

from aws_cdk import Fn, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from ..settings import EgressMode

VPC_CIDR = "10.42.0.0/16"


class ClusterNetwork(Construct):
    """VPC over the chosen AZs; nothing inbound from the internet reaches any subnet.

    Egress modes, cheapest idle bill first:
    - ``public``: nodes and controller sit in public subnets with a public IPv4 address but no
      inbound rule anywhere; $0 while nothing runs (IPv4 is billed per running address).
    - ``nat-instance``: private subnets behind one t4g.nano NAT instance (~$6/month at idle).
    - ``nat-gateway``: private subnets behind one managed NAT gateway (~$33/month at idle).
    S3 and DynamoDB traffic takes free gateway endpoints in every mode, so data never pays
    egress or NAT processing.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        azs: tuple[str, ...],
        az_count: int,
        egress: EgressMode,
        namespace_name: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.egress = egress
        public = ec2.SubnetConfiguration(
            name="public",
            subnet_type=ec2.SubnetType.PUBLIC,
            cidr_mask=20 if egress == "public" else 24,
        )
        subnets = [public]
        nat_provider: ec2.NatProvider | None = None
        if egress != "public":
            subnets.append(
                ec2.SubnetConfiguration(
                    name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                )
            )
        if egress == "nat-instance":
            nat_provider = ec2.NatProvider.instance_v2(
                instance_type=ec2.InstanceType("t4g.nano"),
                machine_image=ec2.MachineImage.latest_amazon_linux2023(
                    cpu_type=ec2.AmazonLinuxCpuType.ARM_64
                ),
                default_allowed_traffic=ec2.NatTrafficDirection.OUTBOUND_ONLY,
            )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(VPC_CIDR),
            availability_zones=list(azs) or [Fn.select(i, Fn.get_azs()) for i in range(az_count)],
            subnet_configuration=subnets,
            nat_gateways=0 if egress == "public" else 1,
            nat_gateway_provider=nat_provider,
            restrict_default_security_group=True,
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
        )
        self.nat_instances: list[ec2.CfnInstance] = [
            child.node.default_child
            for subnet in self.vpc.public_subnets
            for child in subnet.node.children
            if isinstance(child, ec2.Instance)
            and isinstance(child.node.default_child, ec2.CfnInstance)
        ]
        for nat in self.nat_instances:
            nat.add_property_override(
                "BlockDeviceMappings",
                [
                    {
                        "DeviceName": "/dev/xvda",
                        "Ebs": {
                            "Encrypted": True,
                            "VolumeType": "gp3",
                            "VolumeSize": 8,
                            "DeleteOnTermination": True,
                        },
                    }
                ],
            )
        flow_log_group = logs.LogGroup(
            self, "FlowLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        self.namespace = servicediscovery.PrivateDnsNamespace(
            self,
            "Namespace",
            name=namespace_name,
            vpc=self.vpc,
            description="Slurm controller names of this deployment's clusters",
        )
        self.namespace.apply_removal_policy(RemovalPolicy.DESTROY)

    @property
    def node_subnets(self) -> ec2.SubnetSelection:
        """Where nodes and controllers run: public subnets only when egress is 'public'."""
        subnet_type = (
            ec2.SubnetType.PUBLIC if self.egress == "public" else ec2.SubnetType.PRIVATE_WITH_EGRESS
        )
        return ec2.SubnetSelection(subnet_type=subnet_type)

    @property
    def assign_public_ip(self) -> bool:
        return self.egress == "public"
