"""One CloudWatch dashboard per cluster: nodes, GPUs, job progress and cost on one page.

Everything is found by a ``Cluster`` dimension, because CloudWatch has no metric per tag:
``NodesRunning`` and the job cost metrics come from the cost function, the GPU metrics from the
CloudWatch agent the node bootstrap starts, ``ResolutionAngstrom`` from the job progress
reporter. SEARCH expressions pick up instance types, GPUs and jobs as they appear, so nothing
here changes when a node group does. Cost per job is a Logs Insights table over the cost
function's ``job-cost`` lines: the metrics carry no job dimension (one metric per job would
bill per job).
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_logs as logs
from constructs import Construct

from ..cost import billing, nodes
from ..cost.handler import JOB_COST_LOG
from ..node.bootstrap import CLUSTER_DIMENSION, GPU_METRICS_NAMESPACE

RESOLUTION_METRIC = "ResolutionAngstrom"
"""Published per iteration, with Cluster and JobId dimensions, by the job progress reporter."""
JOB_COST_PATTERN = (
    JOB_COST_LOG + r" job=(?<job>\S+) user=(?<user>\S+) estimate_usd=(?<estimate_usd>\S+)"
    r" reclaimed_usd=(?<reclaimed_usd>\S+) attempts=(?<attempts>\d+) reclaims=(?<reclaims>\d+)"
)
"""Logs Insights regex for the cost function's per-job line (``JOB_COST_LOG_FORMAT``)."""
LIVE = Duration.minutes(1)
"""The CloudWatch agent's collection interval."""
COUNTED = Duration.minutes(5)
"""How often the cost function counts nodes."""
COST_RANGE = "-P14D"
"""Daily cost graphs show two weeks whatever range the dashboard is set to."""


class ClusterDashboard(Construct):
    """The cluster's dashboard; ``console_url`` opens it."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        metric_namespace: str,
        cost_log_group: logs.ILogGroup,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name = cluster_name
        self.metric_namespace = metric_namespace
        region = Stack.of(self).region
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            # Dashboards belong to the account, not a region (their ARN has none): the region
            # keeps two deployments of the same name in different regions apart.
            dashboard_name=f"{cluster_name}-{region}",
            default_interval=Duration.hours(12),
            widgets=[
                [self._intro()],
                [self._nodes(), self._gpu_utilization(), self._gpu_memory()],
                [self._resolution(), self._daily_cost()],
                [self._cost_per_job(cost_log_group), self._cost_totals()],
            ],
        )
        name = self.dashboard.dashboard_name
        self.console_url = (
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#dashboards/dashboard/{name}"
        )

    def _search(self, namespace: str, metric: str, statistic: str, period: Duration) -> str:
        """SEARCH over this cluster's series of one metric (any other dimensions)."""
        return (
            f'SEARCH(\'Namespace="{namespace}" MetricName="{metric}" '
            f"{CLUSTER_DIMENSION}=\"{self.cluster_name}\"', '{statistic}', "
            f"{int(period.to_seconds())})"
        )

    def _cost(self, metric: str, label: str) -> cw.Metric:
        return cw.Metric(
            namespace=self.metric_namespace,
            metric_name=metric,
            dimensions_map={CLUSTER_DIMENSION: self.cluster_name},
            statistic="Sum",
            period=Duration.days(1),
            label=label,
        )

    def _intro(self) -> cw.TextWidget:
        return cw.TextWidget(
            width=24,
            height=2,
            markdown=(
                f"## {self.cluster_name}\n"
                "Costs are estimates from spot price history, added as jobs are priced "
                "(`relion-spot cost` has the billed figure). Empty node and GPU graphs: no "
                "node ran."
            ),
        )

    def _nodes(self) -> cw.GraphWidget:
        schema = ",".join((self.metric_namespace, *nodes.DIMENSIONS))
        search = (
            f'SEARCH(\'{{{schema}}} MetricName="{nodes.NODES_RUNNING_METRIC}" '
            f"{CLUSTER_DIMENSION}=\"{self.cluster_name}\"', 'Maximum', "
            f"{int(COUNTED.to_seconds())})"
        )
        return cw.GraphWidget(
            title="Nodes running, by instance type and market",
            # Only non-zero counts are published (an idle cluster costs no metric): show the
            # gaps as the zero they are.
            left=[cw.MathExpression(expression=f"FILL({search}, 0)", label="", period=COUNTED)],
            left_y_axis=cw.YAxisProps(min=0, show_units=False),
            stacked=True,
            width=8,
        )

    def _gpu_utilization(self) -> cw.GraphWidget:
        return cw.GraphWidget(
            title="GPU utilization (%), per GPU",
            left=[
                cw.SearchExpression(
                    expression=self._search(
                        GPU_METRICS_NAMESPACE, "nvidia_smi_utilization_gpu", "Average", LIVE
                    ),
                    label="",
                    period=LIVE,
                )
            ],
            left_y_axis=cw.YAxisProps(min=0, max=100, show_units=False),
            width=8,
        )

    def _gpu_memory(self) -> cw.GraphWidget:
        return cw.GraphWidget(
            title="GPU memory used and total (MB), per GPU",
            left=[
                cw.SearchExpression(
                    expression=self._search(
                        GPU_METRICS_NAMESPACE, f"nvidia_smi_memory_{kind}", "Maximum", LIVE
                    ),
                    label=kind,
                    period=LIVE,
                )
                for kind in ("used", "total")
            ],
            left_y_axis=cw.YAxisProps(min=0, show_units=False),
            width=8,
        )

    def _resolution(self) -> cw.GraphWidget:
        return cw.GraphWidget(
            title="Resolution per iteration (Å, lower is better), per job",
            left=[
                cw.SearchExpression(
                    expression=self._search(
                        self.metric_namespace, RESOLUTION_METRIC, "Minimum", COUNTED
                    ),
                    label="",
                    period=COUNTED,
                )
            ],
            left_y_axis=cw.YAxisProps(min=0, show_units=False),
            width=12,
        )

    def _daily_cost(self) -> cw.GraphWidget:
        return cw.GraphWidget(
            title="Job cost per day (USD, estimate) and the part lost to spot reclaims",
            left=[
                self._cost(billing.JOB_COST_METRIC, "job cost"),
                self._cost(billing.RECLAIMED_COST_METRIC, "lost to reclaims"),
            ],
            left_y_axis=cw.YAxisProps(min=0, show_units=False),
            period=Duration.days(1),
            start=COST_RANGE,
            width=12,
        )

    def _cost_per_job(self, log_group: logs.ILogGroup) -> cw.LogQueryWidget:
        return cw.LogQueryWidget(
            title="Cost per job (USD, estimate; jobs priced in the dashboard's time range)",
            log_group_names=[log_group.log_group_name],
            query_lines=[
                f"filter @message like /{JOB_COST_LOG} job=/",
                f"parse @message /{JOB_COST_PATTERN}/",
                "stats latest(estimate_usd) as usd, latest(reclaimed_usd) as lost_to_reclaims,"
                " latest(reclaims) as reclaimed_attempts, latest(attempts) as all_attempts,"
                " latest(user) as owner, max(@timestamp) as priced by job",
                "sort priced desc",
                "limit 100",
            ],
            view=cw.LogQueryVisualizationType.TABLE,
            width=16,
        )

    def _cost_totals(self) -> cw.SingleValueWidget:
        return cw.SingleValueWidget(
            title="Over the dashboard's time range (USD, estimate)",
            metrics=[
                self._cost(billing.JOB_COST_METRIC, "job cost"),
                self._cost(billing.RECLAIMED_COST_METRIC, "lost to reclaims"),
            ],
            set_period_to_time_range=True,
            width=8,
        )
