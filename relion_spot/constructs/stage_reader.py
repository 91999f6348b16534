"""Read access to the lab's stage buckets, for staging jobs that hold no instance credentials.

A job never sees the node role's credentials (the node shuts the metadata service to every user
but root), so S3 reads cannot ride on the node role. This construct's role holds them instead:
GetObject on the objects and ListBucket on the buckets named in ``stage_buckets`` (a missing
key then says 404 rather than 403), nothing else. Only the CPU node role may assume it (the
trust policy names that role; its own policy allows sts:AssumeRole on this role alone); the
node's root broker (relion_spot.node.stage_credentials) assumes it per staging job and hands
that job the session.
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
        # role: allow_node replaces this placeholder trust with that role as the only principal,
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
                "StageReader: allow_node was never called, so its trust is the whole account",
            )
        )

    def allow_node(self, node_role: iam.IRole) -> None:
        """Let ``node_role`` (the CPU nodes', whose root broker serves staging jobs) assume this
        role, and no one else."""
        if self._reader is not None:
            raise ValueError("StageReader: one node role assumes it")
        self._reader = node_role
        trust_only(self.role, node_role, sid="AssumeStageReader")

    @property
    def role_arn(self) -> str:
        return self.role.role_arn
