"""Per-job cost for one cluster: the attempt-records and job-cost tables, the pricing Lambda,
its schedules, and the grants the controller (record writer) and the CLI (report) need.

The function reserves no concurrency (a new account's quota of 10 concurrent executions leaves
none to reserve, and a stack that asks fails to create). A scheduled pricing run, a stream batch
and the daily reconciliation instead take turns on a lease item in the job cost table
(relion_spot.cost.lock), which is what lets the pricing write whole cost items in batches (fast
at 100,000 attempts) without losing the billed figure beside them or publishing a move twice.
The five-minute node count writes no cost item and needs no turn.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from .. import tags
from ..cost import config
from ..cost.instances import LAUNCH_TEMPLATE_ID_TAG, REPAIRABLE_TAG_KEYS
from ..cost.store import ATTEMPT_KEY, COSTS_BY_START, JOB_KEY
from .lambda_code import LAMBDA_RUNTIME, package_code

HANDLER = "relion_spot.cost.handler.main"


class CostTracker(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
        pricing_schedule: Duration | None = None,
        node_count_schedule: Duration | None = None,
        pricing_window: Duration | None = None,
        job_lookback: Duration | None = None,
        reconcile_days: int = 3,
        metric_namespace: str = config.DEFAULT_NAMESPACE,
        memory_size: int = 1024,
        storage_usd_per_gib: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__(scope, construct_id)
        pricing_schedule = pricing_schedule or Duration.hours(1)
        node_count_schedule = node_count_schedule or Duration.minutes(5)
        pricing_window = pricing_window or Duration.hours(24)
        job_lookback = job_lookback or Duration.days(7)
        self.cluster_name = cluster_name
        self.metric_namespace = metric_namespace
        self._launch_templates: list[dict[str, object]] = []

        self.records_table = dynamodb.Table(
            self,
            "AttemptRecords",
            partition_key=dynamodb.Attribute(name=JOB_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=ATTEMPT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            stream=dynamodb.StreamViewType.KEYS_ONLY,
            removal_policy=removal_policy,
        )
        self.costs_table = dynamodb.Table(
            self,
            "JobCosts",
            partition_key=dynamodb.Attribute(name=JOB_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=removal_policy,
        )
        self.costs_table.add_global_secondary_index(
            index_name=COSTS_BY_START,
            partition_key=dynamodb.Attribute(name="cluster", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="first_start", type=dynamodb.AttributeType.NUMBER),
            projection_type=dynamodb.ProjectionType.ALL,
        )

        log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.log_group = log_group
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Prices the jobs of cluster {cluster_name}",
        )
        log_group.grant_write(self.role)
        stack = Stack.of(self)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=LAMBDA_RUNTIME,
            code=package_code("cost"),
            handler=HANDLER,
            timeout=Duration.minutes(15),
            memory_size=memory_size,
            role=self.role,
            log_group=log_group,
            description=f"Prices cluster {cluster_name}'s jobs from spot price history",
            environment={
                config.CLUSTER: cluster_name,
                config.RECORDS_TABLE: self.records_table.table_name,
                config.COSTS_TABLE: self.costs_table.table_name,
                config.WINDOW_HOURS: str(pricing_window.to_hours()),
                config.LOOKBACK_HOURS: str(job_lookback.to_hours()),
                config.RECONCILE_DAYS: str(reconcile_days),
                config.METRIC_NAMESPACE: metric_namespace,
                config.LAUNCH_TEMPLATES: "[]",
                config.STORAGE_READ_RATE: repr(storage_usd_per_gib[0]),
                config.STORAGE_WRITE_RATE: repr(storage_usd_per_gib[1]),
            },
        )
        self._grant_function(stack)
        self.function.add_event_source(
            sources.DynamoEventSource(
                self.records_table,
                starting_position=lambda_.StartingPosition.LATEST,
                batch_size=100,
                max_batching_window=Duration.seconds(30),
                retry_attempts=3,
                bisect_batch_on_error=True,
                filters=[
                    lambda_.FilterCriteria.filter(
                        {"eventName": lambda_.FilterRule.is_equal("INSERT")}
                    )
                ],
            )
        )
        self.pricing_rule = events.Rule(
            self,
            "PricingSchedule",
            schedule=events.Schedule.rate(pricing_schedule),
            description=f"Price {cluster_name}'s ended jobs and repair launch tags",
            targets=[
                targets.LambdaFunction(
                    self.function,
                    event=events.RuleTargetInput.from_object({"action": "schedule"}),
                    retry_attempts=2,
                )
            ],
        )
        # The node count is a gauge the dashboard graphs: sampled hourly, a node that lived 40
        # minutes between two pricing runs would never show. A count is one DescribeInstances.
        self.node_count_rule = events.Rule(
            self,
            "NodeCountSchedule",
            schedule=events.Schedule.rate(node_count_schedule),
            description=f"Publish how many of {cluster_name}'s nodes run, by type and market",
            targets=[
                targets.LambdaFunction(
                    self.function,
                    event=events.RuleTargetInput.from_object({"action": "count-nodes"}),
                    retry_attempts=0,
                )
            ],
        )
        self.reconcile_rule = events.Rule(
            self,
            "ReconcileSchedule",
            schedule=events.Schedule.cron(minute="30", hour="6"),
            description=f"Store Cost Explorer's billed cost beside {cluster_name}'s estimates",
            targets=[
                targets.LambdaFunction(
                    self.function,
                    event=events.RuleTargetInput.from_object({"action": "reconcile"}),
                    retry_attempts=2,
                )
            ],
        )

    def _grant_function(self, stack: Stack) -> None:
        ec2_arn = f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}"
        self.records_table.grant(self.role, "dynamodb:Query", "dynamodb:BatchGetItem")
        self.costs_table.grant(
            self.role,
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",  # releasing the pricing lease
        )
        only_launch_tags = {"ForAllValues:StringEquals": {"aws:TagKeys": list(REPAIRABLE_TAG_KEYS)}}
        statements = [
            iam.PolicyStatement(
                sid="ReadPricesAndInventory",
                actions=[
                    "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeInstances",
                    "ec2:DescribeVolumes",
                    "ec2:DescribeTags",
                    "ec2:DescribeLaunchTemplateVersions",
                ],
                resources=["*"],
            ),
            iam.PolicyStatement(
                sid="RepairClusterTags",
                actions=["ec2:CreateTags"],
                resources=[
                    f"{ec2_arn}:{kind}/*" for kind in ("instance", "volume", "network-interface")
                ],
                conditions={
                    "StringEquals": {f"aws:ResourceTag/{tags.CLUSTER}": self.cluster_name},
                    **only_launch_tags,
                },
            ),
            iam.PolicyStatement(
                sid="ClaimUntaggedAttachments",
                actions=["ec2:CreateTags"],
                resources=[f"{ec2_arn}:{kind}/*" for kind in ("volume", "network-interface")],
                conditions={
                    "StringEquals": {f"aws:RequestTag/{tags.CLUSTER}": self.cluster_name},
                    "Null": {f"aws:ResourceTag/{tags.CLUSTER}": "true"},
                    **only_launch_tags,
                },
            ),
            iam.PolicyStatement(
                sid="ReadBilledCost",
                actions=["ce:GetCostAndUsage"],
                resources=["*"],
            ),
            iam.PolicyStatement(
                # The bytes each job's nodes metered (relion_spot.cost.storage_io);
                # GetMetricData has no resource-level permission or condition key.
                sid="ReadJobStorageIo",
                actions=["cloudwatch:GetMetricData"],
                resources=["*"],
            ),
            iam.PolicyStatement(
                sid="PublishJobCost",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": self.metric_namespace}},
            ),
        ]
        for statement in statements:
            self.role.add_to_policy(statement)

    def watch_launch_template(
        self, launch_template_id: str, *, launch_tags: Mapping[str, str]
    ) -> None:
        """Let the tag repair claim untagged launches of this template and give them
        ``launch_tags`` (e.g. stack and partition) besides the cluster and instance type."""
        unknown = sorted(set(launch_tags) - set(REPAIRABLE_TAG_KEYS))
        if unknown:
            raise ValueError(
                f"launch tags {unknown} cannot be repaired; accepted: {list(REPAIRABLE_TAG_KEYS)}"
            )
        self._launch_templates.append(
            {"launch_template_id": launch_template_id, "tags": dict(launch_tags)}
        )
        stack = Stack.of(self)
        self.function.add_environment(
            config.LAUNCH_TEMPLATES, stack.to_json_string(self._launch_templates)
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ec2:CreateTags"],
                resources=[f"arn:{stack.partition}:ec2:{stack.region}:{stack.account}:instance/*"],
                conditions={
                    "StringEquals": {
                        f"aws:ResourceTag/{LAUNCH_TEMPLATE_ID_TAG}": launch_template_id,
                        f"aws:RequestTag/{tags.CLUSTER}": self.cluster_name,
                    },
                    "Null": {f"aws:ResourceTag/{tags.CLUSTER}": "true"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": list(REPAIRABLE_TAG_KEYS)},
                },
            )
        )

    def grant_record_writer(self, grantee: iam.IGrantable) -> None:
        """What the controller's job record writer needs: one conditional put per attempt, the
        hourly index update (and a read-back on a retried write), and the instance/volume
        descriptions that map Slurm nodes to instances."""
        self.records_table.grant(
            grantee, "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="MapNodesToInstances",
                actions=["ec2:DescribeInstances", "ec2:DescribeVolumes"],
                resources=["*"],
            )
        )

    def grant_spend_reader(self, grantee: iam.IGrantable) -> None:
        """The budget cap reads the month's priced jobs: a Query on the by-start index, only."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["dynamodb:Query"],
                resources=[f"{self.costs_table.table_arn}/index/{COSTS_BY_START}"],
            )
        )

    @property
    def records_table_name(self) -> str:
        return self.records_table.table_name

    @property
    def costs_table_name(self) -> str:
        return self.costs_table.table_name

    def record_writer_environment(self) -> dict[str, str]:
        """KEY=VALUE settings the controller writes to the record writer's config file (Slurm
        starts the writer with an environment of its own, so these do not arrive otherwise)."""
        return {
            config.CLUSTER: self.cluster_name,
            config.RECORDS_TABLE: self.records_table.table_name,
            "AWS_DEFAULT_REGION": Stack.of(self).region,
        }
