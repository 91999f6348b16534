"""The results exchange: where a lab's inputs and a finished job's results cross between the
lab's own computer and the cluster.

The lab's laptop cannot reach the shared file system, so the exchange bucket carries files both
ways. ``relion-spot stage FOLDER`` uploads a local folder under ``in/<submission id>/`` with the
lab member's own credentials and an import job on a CPU node reads it into /data; an export job
copies a finished job's results under ``out/<submission id>/`` and ``relion-spot pull`` downloads
them. The bucket holds only copies: every object expires after EXPIRY_DAYS days and an
unfinished multipart upload after a day, so nothing accumulates a bill, and the bucket goes with
the stack.

A job never sees the node role's credentials (the node shuts the metadata service to every user
but root), so its reads and writes ride on this construct's job role instead: GetObject under
``in/`` (an import job's reads) and PutObject (which also authorizes CreateMultipartUpload,
UploadPart and CompleteMultipartUpload) and AbortMultipartUpload under ``out/`` (an export
job's writes), nothing else: no list, no delete, no read of results, no write of uploads. Only
the CPU node role may assume it (as with relion_spot.constructs.stage_reader); the node's root
broker assumes it per job with a session policy narrowed to that job's submission and one
direction, and hands that job the session. The lab reads and writes with ``grant_lab``:
PutObject and AbortMultipartUpload under ``in/``, GetObject under ``out/``, and ListBucket held
to keys under either by ``s3:prefix``; it may neither read back what was uploaded nor delete.
"""

from __future__ import annotations

from typing import cast

from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .node_assumed_role import SESSION_HOURS, NodeRoleGiven, trust_only

RESULTS_PREFIX = "out/"
"""Where export jobs write results and the lab reads them."""
UPLOADS_PREFIX = "in/"
"""Where the lab uploads a job's inputs and import jobs read them."""
EXPIRY_DAYS = 7
"""How long an object waits: a copy to be pulled (the results themselves stay on the file
system) or an upload to be imported (the lab keeps its own folder)."""
ABORT_UPLOADS_AFTER_DAYS = 1
AUTO_DELETE_PROVIDER = "Custom::S3AutoDeleteObjectsCustomResourceProvider"
"""The id CDK gives, in the stack, the provider behind a bucket's auto_delete_objects."""


class ResultsExchange(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        removal_policy: RemovalPolicy,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        self._job_role_node: iam.IRole | None = None
        destroy = removal_policy == RemovalPolicy.DESTROY
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=False,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireCopies",
                    expiration=Duration.days(EXPIRY_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(ABORT_UPLOADS_AFTER_DAYS),
                )
            ],
            removal_policy=removal_policy,
            # CloudFormation deletes no bucket that still holds objects, and a copy made in the
            # last EXPIRY_DAYS days would fail `cdk destroy`: CDK's provider empties it first.
            auto_delete_objects=destroy,
        )
        if destroy:
            self._log_auto_delete(log_retention)
        self._results_arn = self.bucket.arn_for_objects(f"{RESULTS_PREFIX}*")
        self._uploads_arn = self.bucket.arn_for_objects(f"{UPLOADS_PREFIX}*")

        # The node role that may assume this one is made after the user data that names this
        # role: allow_node replaces this placeholder trust with that role as the only principal,
        # and synth fails if it was never called (the account's root would let any principal
        # of the account whose own policy allows sts:AssumeRole in).
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.AccountRootPrincipal(),
            description=f"Import and export jobs of cluster {cluster_name} read uploads from and "
            "copy results to its exchange bucket",
            max_session_duration=Duration.hours(SESSION_HOURS),
        )
        self.job_role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteResults",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[self._results_arn],
            )
        )
        self.job_role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadUploads",
                actions=["s3:GetObject"],
                resources=[self._uploads_arn],
            )
        )
        self.node.add_validation(
            NodeRoleGiven(
                lambda: self._job_role_node is not None,
                "ResultsExchange: allow_node was never called, so the job role's trust is the "
                "whole account",
            )
        )

    def allow_node(self, node_role: iam.IRole) -> None:
        """Let ``node_role`` (the CPU nodes', whose root broker serves import and export jobs)
        assume the job role, and no one else."""
        if self._job_role_node is not None:
            raise ValueError("ResultsExchange: one node role assumes the job role")
        self._job_role_node = node_role
        trust_only(self.job_role, node_role, sid="AssumeExchangeJobRole")

    def grant_lab(self, grantee: iam.IGrantable) -> None:
        """Let ``grantee`` (a role, a group, or a managed policy's holders) upload inputs and
        list and fetch the results; relion_spot.constructs.lab_access puts the same statements
        among its member's."""
        for statement in self.lab_statements():
            grantee.grant_principal.add_to_principal_policy(statement)

    def lab_statements(self) -> list[iam.PolicyStatement]:
        """``relion-spot pull``: download a job's copies (GetObject, under ``out/`` only).
        ``relion-spot stage``: upload a folder (PutObject, multipart included, and
        AbortMultipartUpload, under ``in/`` only; the lab may not read back or delete it).
        Both: find what is there (ListBucket, keys under ``out/`` or ``in/`` only)."""
        return [
            iam.PolicyStatement(
                sid="PullResults",
                actions=["s3:GetObject"],
                resources=[self._results_arn],
            ),
            iam.PolicyStatement(
                sid="UploadInputs",
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[self._uploads_arn],
            ),
            iam.PolicyStatement(
                sid="ListExchange",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={
                    "StringLike": {"s3:prefix": [f"{RESULTS_PREFIX}*", f"{UPLOADS_PREFIX}*"]}
                },
            ),
        ]

    def _log_auto_delete(self, log_retention: logs.RetentionDays) -> None:
        """Give CDK's auto-delete function (one per stack, made with the bucket) a log group
        with the cluster's retention that goes with the stack.

        Left alone, Lambda makes /aws/lambda/<function> at the first call, keeps it forever and
        leaves it behind on destroy. The function names this group instead (its role, CDK's
        AWSLambdaBasicExecutionRole, may write to any group); that reference makes the function
        depend on the group, so the group is made before the bucket's first call and deleted
        after its last, the delete that empties the bucket. cdk-nag does not check this function
        and its role (CDK makes them as raw CfnResources): what they may do is asserted in
        tests/test_stacks.py.
        """
        handler = self.auto_delete_handler()
        log_group = logs.LogGroup(
            self, "AutoDeleteLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        handler.add_property_override("LoggingConfig.LogGroup", log_group.log_group_name)

    def auto_delete_handler(self) -> CfnResource:
        """The function CDK's auto-delete custom resource calls (a CfnResource of the stack)."""
        provider = Stack.of(self).node.find_child(AUTO_DELETE_PROVIDER)
        return cast(CfnResource, provider.node.find_child("Handler"))

    @property
    def job_role_arn(self) -> str:
        return self.job_role.role_arn

    @property
    def bucket_name(self) -> str:
        return self.bucket.bucket_name
