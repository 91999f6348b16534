"""The job intake of one cluster: the submission queue, its dead-letter queue and the table of
decisions (see relion_spot.intake for what flows through them).

A standard queue, not FIFO: exactly-once has to be made by the consumer anyway (a drainer can
crash after sbatch and before deleting, which no queue can undo), and the drainer makes it with
the submission id against the table and Slurm. FIFO deduplication would add only a five-minute
window on sends, while its message groups would let one slow or poisonous submission hold back
the ones behind it.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..intake import config
from ..selftest.record import KEY_PREFIX

NODE_CHECKS_KEY_PREFIX = f"{KEY_PREFIX}node:"
"""The intake-table key of a node's recorded permission checks (then the instance id)."""

TABLE_LOGICAL_ID = "IntakeSubmissions"
"""Pinned: a changed logical ID would make CloudFormation replace the table (and, when the data
is not retained, delete every recorded decision)."""
RETENTION = Duration.days(14)
"""The longest SQS keeps a message: a submission waits out a long controller outage."""


class JobIntake(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        removal_policy: RemovalPolicy,
        visibility_timeout: Duration | None = None,
        max_receives: int = config.MAX_RECEIVES,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            visibility_timeout=visibility_timeout
            or Duration.seconds(config.VISIBILITY_TIMEOUT_SECONDS),
            receive_message_wait_time=Duration.seconds(config.RECEIVE_WAIT_SECONDS),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receives
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.table = dynamodb.Table(
            self,
            "Submissions",
            partition_key=dynamodb.Attribute(name=config.KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            # The nodes' report items end on their own (the submissions carry no such time).
            time_to_live_attribute=config.REPORT_EXPIRES,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal_policy,
        )
        cfn_table = self.table.node.default_child
        assert isinstance(cfn_table, dynamodb.CfnTable)
        cfn_table.override_logical_id(TABLE_LOGICAL_ID)

    def grant_drain(self, grantee: iam.IGrantable) -> None:
        """The drainer: receive and delete messages; read and conditionally write decisions
        (UpdateItem: the cancel state of a submission)."""
        self.queue.grant_consume_messages(grantee)
        self.table.grant(grantee, "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem")

    def grant_progress(self, grantee: iam.IGrantable) -> None:
        """A node's report forwarder (relion_spot.intake.report): PutItem only, on this table
        only, of items keyed ``report:<its own instance ARN>:...`` (``${ec2:SourceInstanceARN}``,
        which AWS sets from the instance role's session), naming only
        ``config.REPORT_ATTRIBUTES`` and asking nothing back. The controller's relay copies a
        report into a submission's item once Slurm says the job runs on that instance."""
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:PutItem"],
            resource_arns=[self.table.table_arn],
            # ForAllValues holds for a request without the key: Null makes each key required.
            # ReturnValues is always set on PutItem (NONE unless the request asks otherwise).
            conditions={
                "ForAllValues:StringLike": {
                    "dynamodb:LeadingKeys": [
                        f"{config.REPORT_KEY_PREFIX}${{ec2:SourceInstanceARN}}:*"
                    ]
                },
                "ForAllValues:StringEquals": {
                    "dynamodb:Attributes": list(config.REPORT_ATTRIBUTES)
                },
                "Null": {"dynamodb:LeadingKeys": "false", "dynamodb:Attributes": "false"},
                "StringEquals": {"dynamodb:ReturnValues": config.REPORT_RETURN_VALUES},
            },
        )

    def grant_node_checks(self, grantee: iam.IGrantable) -> None:
        """A node's permission check at start (relion_spot.selftest.node_check): PutItem of the
        items keyed ``selftest:permissions:node:...`` and of no other key (a submission's item
        is a UUID), on this table only."""
        iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["dynamodb:PutItem"],
            resource_arns=[self.table.table_arn],
            # ForAllValues holds for a request without the key: Null makes the key required.
            conditions={
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{NODE_CHECKS_KEY_PREFIX}*"]},
                "Null": {"dynamodb:LeadingKeys": "false"},
            },
        )

    def grant_read_decisions(self, grantee: iam.IGrantable) -> None:
        """The CPU node's credential broker (relion_spot.node.stage_credentials): read one
        submission's decision (GetItem), to know what the drainer accepted a job to stage."""
        self.table.grant(grantee, "dynamodb:GetItem")

    def drainer_environment(self) -> dict[str, str]:
        """What ``python -m relion_spot.intake.drain`` reads besides the cluster spec."""
        return {
            config.QUEUE_URL_ENV: self.queue.queue_url,
            config.TABLE_ENV: self.table.table_name,
            config.DATA_ROOT_ENV: config.NODE_DATA_DIR,
        }

    @property
    def queue_url(self) -> str:
        return self.queue.queue_url

    @property
    def table_name(self) -> str:
        return self.table.table_name
