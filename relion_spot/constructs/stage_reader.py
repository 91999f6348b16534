"""Read access to the lab's stage buckets, for staging jobs that hold no instance credentials.

A job never sees the node role's credentials (the node shuts the metadata service to every user
but root), so S3 reads cannot ride on the node role. This construct's role holds them instead:
GetObject on the objects and ListBucket on the buckets named in ``stage_buckets`` (a missing
key then says 404 rather than 403), nothing else. Only the node roles given to ``allow_nodes``
may assume it (the trust policy names them; their own policies allow sts:AssumeRole on this role
alone): the CPU nodes', for staging jobs, and the GPU nodes', for Class3D jobs that copy their
``dataset`` from S3 to scratch. The node's root broker (relion_spot.node.stage_credentials)
assumes it per job and hands that job a session narrowed to the one object.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from .node_assumed_role import SESSION_HOURS, NodeRoleGiven, trust_only


class StageReader(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, cluster_name: str, buckets: Sequence[str]
    ) -> None:
        super().__init__(scope, construct_id)
        if not buckets:
            raise ValueError("StageReader needs at least one bucket")
        self.buckets = tuple(buckets)
        self._reader: iam.IRole | None = None
        # The node role that may assume this one is made after the user data that names this
        # role: allow_nodes replaces this placeholder trust with that role as the only principal,
        # and synth fails if it was never called (the account's root would let any principal
        # of the account whose own policy allows sts:AssumeRole in).
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.AccountRootPrincipal(),
            description=f"Staging jobs of cluster {cluster_name} read the lab's stage buckets",
            max_session_duration=Duration.hours(SESSION_HOURS),
        )
        partition = Stack.of(self).partition
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="StageReadObjects",
                actions=["s3:GetObject"],
                resources=[f"arn:{partition}:s3:::{b}/*" for b in self.buckets],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="StageListBuckets",
                actions=["s3:ListBucket"],
                resources=[f"arn:{partition}:s3:::{b}" for b in self.buckets],
            )
        )
        self.node.add_validation(
            NodeRoleGiven(
                lambda: self._reader is not None,
                "StageReader: allow_nodes was never called, so its trust is the whole account",
            )
        )

    def allow_nodes(self, *node_roles: iam.IRole) -> None:
        """Let ``node_roles`` (the nodes whose root broker serves staging and data set jobs)
        assume this role, and no one else."""
        if self._reader is not None:
            raise ValueError("StageReader: allow_nodes is called once")
        if not node_roles:
            raise ValueError("StageReader: allow_nodes needs a node role")
        self._reader = node_roles[0]
        trust_only(self.role, *node_roles, sid="AssumeStageReader")

    @property
    def role_arn(self) -> str:
        return self.role.role_arn
