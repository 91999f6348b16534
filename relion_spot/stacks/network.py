from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from ..constructs.log_retention import retention
from ..constructs.network import ClusterNetwork
from ..settings import Settings


class NetworkStack(Stack):
    """The deployment's VPC and private DNS namespace, shared by every cluster stack."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.network = ClusterNetwork(
            self,
            "Network",
            azs=settings.azs,
            az_count=settings.az_count,
            egress=settings.egress,
            namespace_name=f"{settings.name}.internal",
            log_retention=retention(settings.log_retention_days),
        )
        CfnOutput(self, "VpcId", value=self.network.vpc.vpc_id)
        CfnOutput(self, "EgressMode", value=settings.egress)
