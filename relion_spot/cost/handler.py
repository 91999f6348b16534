"""The cost Lambda: handler -> pricing logic -> data access.

Events it understands (anything else is logged and skipped; a batch always goes on):

- ``{"action": "schedule"}`` (hourly rule): price every job with an attempt that ended within
  the pricing window plus the job lookback, write the ones that are new or changed, and repair
  launch tags of this cluster's running instances.
- ``{"action": "count-nodes"}`` (every few minutes; the hourly run does it too): publish how
  many of this cluster's instances run, per instance type and market.
- ``{"action": "reconcile"}`` (daily rule): store Cost Explorer's billed cost per job.
- DynamoDB stream records of the attempts table (an attempt ended): price those jobs.
- ``{"action": "price-jobs", "jobs": [{"cluster": ..., "job_id": ...}]}``, or an EventBridge
  event whose ``detail`` has ``cluster`` and ``job_id``: price those jobs.

Idempotent: a job is rewritten only when the fingerprint of its priced result changes, so the
same event twice, or a rerun over the same window, writes nothing and publishes nothing. Pricing
and reconciliation take turns on a lease (relion_spot.cost.lock), so concurrent invocations never
interleave their writes. Each
written job is also logged as one ``job-cost`` line (see ``JOB_COST_LOG``), which is what the
cluster dashboard's cost-per-job table reads: the metrics carry no job dimension, as one metric
per job would bill per job.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relion_spot.cost import billing, instances, nodes
from relion_spot.cost.config import CostConfig
from relion_spot.cost.lock import PricingLock
from relion_spot.cost.prices import PriceSource, SpotPriceSource
from relion_spot.cost.pricing import Attempt, JobCost, NodeUse, StorageRates, price_job
from relion_spot.cost.storage_io import StorageIoReader
from relion_spot.cost.store import (
    JOB_KEY,
    AttemptStore,
    CostStore,
    MalformedRecord,
    attempt_from_item,
    is_bucket_key,
    job_key,
    split_job_key,
)

log = logging.getLogger(__name__)

METER_WAIT = 6 * 3600
"""How long after an attempt's end its node's meter reading is still looked for."""
JOB_COST_LOG = "job-cost"
JOB_COST_LOG_FORMAT = (
    JOB_COST_LOG + " job=%s user=%s estimate_usd=%.6f reclaimed_usd=%.6f attempts=%d reclaims=%d"
)
"""One line per written job; the dashboard's Logs Insights query parses these field names."""


@dataclass
class Clients:
    ec2: Any
    dynamodb: Any
    cloudwatch: Any
    ce: Any

    @classmethod
    def create(cls) -> Clients:
        import boto3

        session = boto3.session.Session()
        return cls(
            ec2=session.client("ec2"),
            dynamodb=session.client("dynamodb"),
            cloudwatch=session.client("cloudwatch"),
            ce=session.client("ce", region_name="us-east-1"),
        )


@dataclass
class Outcome:
    """What one invocation did; returned to the caller and logged."""

    jobs_priced: int = 0
    jobs_written: int = 0
    metrics_published: int = 0
    skipped: int = 0
    flagged_jobs: int = 0
    spot_price_requests: int = 0
    instances_tagged: list[str] = field(default_factory=list)
    billed_jobs: int = 0
    billed_updated: int = 0
    nodes_running: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CostService:
    def __init__(self, config: CostConfig, clients: Clients):
        self.config = config
        self.clients = clients
        self.attempts = AttemptStore(clients.dynamodb, config.records_table)
        self.costs = CostStore(clients.dynamodb, config.costs_table)
        self.prices: PriceSource = SpotPriceSource(clients.ec2)
        self.lock = PricingLock(clients.dynamodb, config.costs_table)
        self.storage_io = StorageIoReader(
            clients.cloudwatch, config.metric_namespace, config.cluster
        )
        self.storage_rates = StorageRates(
            config.storage_read_usd_per_gib, config.storage_write_usd_per_gib
        )

    def _parse(self, items: Iterable[dict[str, Any]], outcome: Outcome) -> list[Attempt]:
        parsed = []
        for item in items:
            try:
                attempt = attempt_from_item(item)
            except MalformedRecord as err:
                log.error("skipping malformed attempt record: %s", err)
                outcome.skipped += 1
                continue
            if attempt.cluster != self.config.cluster:
                log.error("skipping attempt %s of another cluster %r", attempt.key, attempt.cluster)
                outcome.skipped += 1
                continue
            parsed.append(attempt)
        return parsed

    def price(self, attempts: list[Attempt], outcome: Outcome, *, now: float) -> None:
        """Price and store the jobs these attempts belong to (all attempts of each job given)."""
        if not attempts:
            return
        attempts = self._attach_storage_io(self._fill_unresolved(attempts), now=now)
        listed = instances.listed_cluster_instances(self.clients.ec2, self.config.cluster)
        jobs: dict[str, list[Attempt]] = defaultdict(list)
        for attempt in attempts:
            jobs[job_key(attempt.cluster, attempt.job_id)].append(attempt)
        start = min(a.start for a in attempts)
        end = max(a.end for a in attempts)
        pairs = {
            (n.instance_type, n.availability_zone)
            for a in attempts
            for n in a.nodes
            if n.instance_type and n.availability_zone
        }
        requests_before = self.prices.requests
        histories = self.prices.histories(pairs, start, end)
        outcome.spot_price_requests += self.prices.requests - requests_before
        recorded = {n.instance_id for a in attempts for n in a.nodes if n.instance_id}
        vanished = recorded - listed
        costs: list[JobCost] = [
            price_job(
                job_attempts, histories, vanished_instances=vanished, rates=self.storage_rates
            )
            for job_attempts in jobs.values()
        ]
        outcome.jobs_priced += len(costs)
        outcome.flagged_jobs += sum(1 for c in costs if c.flags)
        del attempts, jobs  # a 100,000-attempt run needs the memory for the writes
        changes = self.costs.write_estimates(costs, priced_at=now)
        outcome.jobs_written += len(changes)
        for cost, _ in changes:
            log.info(
                JOB_COST_LOG_FORMAT,
                cost.job_id,
                cost.user or "-",
                cost.total_usd,
                cost.reclaimed_usd,
                len(cost.attempts),
                sum(1 for a in cost.attempts if a.reclaimed),
            )
        outcome.metrics_published += billing.publish_estimate_changes(
            self.clients.cloudwatch, self.config.metric_namespace, self.config.cluster, changes
        )

    def _attach_storage_io(self, attempts: list[Attempt], *, now: float) -> list[Attempt]:
        """Meter readings: those already stored with the job's cost are reused; CloudWatch is
        asked only for attempts that ended within ``METER_WAIT`` (GetMetricData bills per
        metric read, and an Epilog publishes within seconds of the end or never)."""
        stored = self.costs.storage_readings(job_key(a.cluster, a.job_id) for a in attempts)
        known = [
            dataclasses.replace(a, storage_io=stored[(a.job_id, a.key)])
            if (a.job_id, a.key) in stored
            else a
            for a in attempts
        ]
        recent = [a for a in known if a.storage_io is None and a.end >= now - METER_WAIT]
        if not recent:
            return known
        found = {(a.job_id, a.key): a for a in self.storage_io.attach(recent)}
        return [found.get((a.job_id, a.key), a) for a in known]

    def _fill_unresolved(self, attempts: list[Attempt]) -> list[Attempt]:
        """Nodes the writer could not map get a second chance against today's instances."""
        missing = sorted({n.node for a in attempts for n in a.nodes if not n.instance_type})
        if not missing:
            return attempts
        inventory = instances.cluster_instances(
            self.clients.ec2, self.config.cluster, node_names=missing
        )
        filled_attempts = []
        for attempt in attempts:
            names = [n.node for n in attempt.nodes if not n.instance_type]
            if names:
                found = instances.node_uses(
                    self.clients.ec2, names, inventory, attempt.start, attempt.end
                )
                by_name: dict[str, NodeUse] = {n.node: n for n in found}
                attempt = dataclasses.replace(
                    attempt,
                    nodes=tuple(n if n.instance_type else by_name[n.node] for n in attempt.nodes),
                )
            filled_attempts.append(attempt)
        return filled_attempts

    def price_window(self, outcome: Outcome, *, now: float) -> None:
        reach = (self.config.window_hours + self.config.lookback_hours) * 3600
        items = self.attempts.records_ending_between(
            self.config.cluster, int(now - reach), int(now)
        )
        self.price(self._parse(items, outcome), outcome, now=now)

    def price_jobs(self, keys: Iterable[tuple[str, str]], outcome: Outcome, *, now: float) -> None:
        attempts: list[Attempt] = []
        for cluster, job_id in sorted(set(keys)):
            if cluster != self.config.cluster:
                log.error("skipping job %s of another cluster %r", job_id, cluster)
                outcome.skipped += 1
                continue
            attempts.extend(self._parse(self.attempts.items_of_job(cluster, job_id), outcome))
        self.price(attempts, outcome, now=now)

    def publish_nodes(self, outcome: Outcome, *, now: float) -> None:
        running = instances.running_cluster_instances(self.clients.ec2, self.config.cluster)
        counts = nodes.count_running(running)
        nodes.publish_node_counts(
            self.clients.cloudwatch,
            self.config.metric_namespace,
            self.config.cluster,
            counts,
            now=now,
        )
        outcome.nodes_running = sum(counts.values())

    def repair_tags(self, outcome: Outcome) -> None:
        report = instances.repair_tags(
            self.clients.ec2, self.config.cluster, self.config.launch_template_tags
        )
        outcome.instances_tagged.extend(report.instances_tagged)

    def reconcile(self, outcome: Outcome, *, now: float) -> None:
        result = billing.reconcile(
            self.clients.ce,
            self.costs,
            self.config.cluster,
            today=datetime.fromtimestamp(now, UTC).date(),
            days=self.config.reconcile_days,
            now=now,
        )
        outcome.billed_jobs += result["billed_jobs"]
        outcome.billed_updated += result["billed_updated"]


def _stream_job(record: Any) -> tuple[str, str] | None:
    """The job a stream record is about; None for the records table's own hourly index items."""
    if not isinstance(record, dict) or record.get("eventSource") != "aws:dynamodb":
        raise MalformedRecord(f"not a DynamoDB stream record: {str(record)[:200]}")
    keys = (record.get("dynamodb") or {}).get("Keys") or {}
    value = (keys.get(JOB_KEY) or {}).get("S")
    if not isinstance(value, str):
        raise MalformedRecord(f"stream record without a '{JOB_KEY}' key: {str(record)[:200]}")
    if is_bucket_key(value):
        return None
    return split_job_key(value)


def _named_job(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, dict):
        raise MalformedRecord(f"job entry {entry!r} is not a map")
    cluster, job_id = entry.get("cluster"), entry.get("job_id")
    if not isinstance(cluster, str) or not cluster or not isinstance(job_id, str | int):
        raise MalformedRecord(f"job entry {entry!r} needs 'cluster' and 'job_id'")
    if not str(job_id).strip():
        raise MalformedRecord(f"job entry {entry!r} has an empty job_id")
    return cluster, str(job_id)


def handle(event: Any, service: CostService, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    outcome = Outcome()
    keys: list[tuple[str, str]] = []
    action = event.get("action") if isinstance(event, dict) else None
    if action == "schedule":
        with service.lock.held():
            service.price_window(outcome, now=now)
        service.repair_tags(outcome)
        outcome.spot_price_requests = service.prices.requests
        service.publish_nodes(outcome, now=now)
    elif action == "count-nodes":
        service.publish_nodes(outcome, now=now)
    elif action == "reconcile":
        with service.lock.held():
            service.reconcile(outcome, now=now)
    elif isinstance(event, dict) and isinstance(event.get("Records"), list):
        for record in event["Records"]:
            try:
                job = _stream_job(record)
            except MalformedRecord as err:
                log.error("skipping malformed stream record: %s", err)
                outcome.skipped += 1
                continue
            if job is not None:
                keys.append(job)
    elif action == "price-jobs" or (isinstance(event, dict) and "detail" in event):
        entries = event.get("jobs") if action == "price-jobs" else [event.get("detail")]
        for entry in entries if isinstance(entries, list) else [entries]:
            try:
                keys.append(_named_job(entry))
            except MalformedRecord as err:
                log.error("skipping malformed job event: %s", err)
                outcome.skipped += 1
    else:
        log.error("skipping unrecognised event: %s", str(event)[:500])
        outcome.skipped += 1
    if keys:
        with service.lock.held():
            service.price_jobs(keys, outcome, now=now)
    result = outcome.as_dict()
    log.info("cost run: %s", result)
    return result


def main(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda entry point (``relion_spot.cost.handler.main``)."""
    logging.getLogger().setLevel(os.environ.get("LOG_LEVEL", "INFO"))
    service = CostService(CostConfig.from_env(), Clients.create())
    return handle(event, service)
