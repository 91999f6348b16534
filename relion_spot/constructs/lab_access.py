"""Who in the lab may do what with one cluster, as two managed policies and an admin role.

"Lab member" (``relion-spot submit / status / logs / cancel / plot / cost / stage / pull``):
send submissions and cancels to the intake queue, read the decisions and progress, the job costs
and what sits in the dead-letter queue, wake the controller, find the stack, upload a local
folder to the cluster's exchange bucket (under ``in/`` only, never read back or deleted) and
list and fetch the results copied there (under ``out/`` only;
relion_spot.constructs.results_exchange). A member's cancel is honoured for the member's own
submissions only: the drainer compares the cancel's SQS SenderId with the submission's
(relion_spot.intake.drain).

"Lab admin": all of that, plus the controller's logs and clearing the dead-letter queue. An
admin's cancel is honoured for anyone's submission when it is sent as the cluster's admin role:
the drainer is given the role's unique id (``AROA...``) and SQS names it in the SenderId of
every message sent with the role's credentials, which no one without the role can forge. The
Admins group may assume that role (and is a member itself). Nothing here writes a decision, a
cost or a record.

Each statement covers one resource kind and names this cluster's resources only.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ..cost.store import COSTS_BY_START
from .results_exchange import ResultsExchange


class LabAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        queue: sqs.IQueue,
        dead_letter_queue: sqs.IQueue,
        intake_table: dynamodb.ITable,
        costs_table: dynamodb.ITable,
        ecs_cluster_name: str,
        controller_service_name: str,
        controller_log_group: logs.ILogGroup,
        results_exchange: ResultsExchange,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        ecs_cluster_arn = stack.format_arn(
            service="ecs", resource="cluster", resource_name=ecs_cluster_name
        )
        member = [
            iam.PolicyStatement(
                sid="SubmitAndCancel",
                actions=["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
                resources=[queue.queue_arn],
            ),
            iam.PolicyStatement(
                sid="SeeDeadLetters",
                actions=["sqs:GetQueueAttributes", "sqs:ReceiveMessage"],
                resources=[dead_letter_queue.queue_arn],
            ),
            iam.PolicyStatement(
                sid="ReadDecisionsAndCosts",
                actions=[
                    "dynamodb:GetItem",
                    "dynamodb:Scan",
                    "dynamodb:BatchGetItem",
                    "dynamodb:Query",
                ],
                resources=[intake_table.table_arn, costs_table.table_arn],
            ),
            iam.PolicyStatement(
                sid="ReadCostsByStart",
                actions=["dynamodb:Query"],
                resources=[f"{costs_table.table_arn}/index/{COSTS_BY_START}"],
            ),
            iam.PolicyStatement(
                sid="WakeTheController",
                actions=["ecs:DescribeServices", "ecs:UpdateService"],
                resources=[
                    stack.format_arn(
                        service="ecs",
                        resource="service",
                        resource_name=f"{ecs_cluster_name}/{controller_service_name}",
                    )
                ],
                conditions={"ArnEquals": {"ecs:cluster": ecs_cluster_arn}},
            ),
            iam.PolicyStatement(
                sid="FindTheCluster",
                actions=["cloudformation:DescribeStacks"],
                resources=[
                    stack.format_arn(
                        service="cloudformation",
                        resource="stack",
                        resource_name=f"{stack.stack_name}/*",
                    )
                ],
            ),
            *results_exchange.lab_statements(),
        ]
        admin = [
            iam.PolicyStatement(
                sid="ClearDeadLetters",
                actions=["sqs:DeleteMessage"],
                resources=[dead_letter_queue.queue_arn],
            ),
            iam.PolicyStatement(
                sid="ReadControllerLogGroup",
                actions=["logs:DescribeLogStreams", "logs:FilterLogEvents"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name=controller_log_group.log_group_name,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            ),
            iam.PolicyStatement(
                sid="ReadControllerLogStreams",
                actions=["logs:GetLogEvents"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name=f"{controller_log_group.log_group_name}:log-stream:*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            ),
        ]
        self.member_policy = iam.ManagedPolicy(
            self,
            "LabMember",
            description=f"relion-spot lab member of cluster {cluster_name}: submit, status, "
            "cost, stage, pull, cancel own jobs",
            statements=member,
        )
        self.admin_policy = iam.ManagedPolicy(
            self,
            "LabAdmin",
            description=f"relion-spot lab admin of cluster {cluster_name}: a member's rights, "
            "the controller's logs, the dead-letter queue",
            statements=[*member, *admin],
        )
        self.admin_role = iam.Role(
            self,
            "AdminRole",
            assumed_by=iam.AccountRootPrincipal(),
            description=f"relion-spot lab admin of cluster {cluster_name}: its cancels count "
            "for anyone's job",
        )
        self.admin_policy.attach_to_role(self.admin_role)
        self.admins = iam.Group(self, "Admins")
        self.member_policy.attach_to_group(self.admins)
        self.admin_role.grant_assume_role(self.admins)

    @property
    def admin_role_id(self) -> str:
        """The admin role's unique id: the SenderId SQS records for a message it sends."""
        return self.admin_role.role_id
