from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from ..constructs.network import ClusterNetwork
from ..constructs.storage import SharedStorage
from ..settings import Settings


class StorageStack(Stack):
    """The lab's EFS. Kept on ``cdk destroy`` unless the keep_data setting says otherwise."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        network: ClusterNetwork,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = SharedStorage(
            self,
            "Storage",
            vpc=network.vpc,
            subnets=network.node_subnets,
            keep_data=settings.keep_data,
            adopt_file_system_id=settings.adopt_file_system_id,
            throughput=settings.efs_throughput,
            provisioned_mibps=settings.efs_provisioned_mibps,
        )
        CfnOutput(self, "FileSystemId", value=self.storage.file_system.file_system_id)
        CfnOutput(self, "DataAccessPointId", value=self.storage.data_access_point.access_point_id)
        kept = settings.keep_data or self.storage.adopted
        CfnOutput(self, "DataKeptOnDestroy", value=str(kept).lower())
        CfnOutput(self, "FileSystemAdopted", value=str(self.storage.adopted).lower())
